"""In-process teacher: vLLM's offline `LLM` engine (extra [teacher-vllm]), for one-node batch runs.

It takes the same materialized request dict as the HTTP client and answers with the same
TeacherResponse, so prompts, cache keys, validation and shards are identical whichever backend made
them. vLLM is imported only when this backend is chosen.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cotforge.config import TeacherConfig
from cotforge.stats import Stats
from cotforge.teacher.client import TeacherCallError, TeacherUnavailable
from cotforge.types import TeacherResponse

INSTALL_HINT = (
    "teacher.backend=vllm-offline needs vLLM and a GPU: pip install -e '.[teacher-vllm]' on a CUDA machine "
    "(or serve the model with `vllm serve` and use the default openai backend)"
)


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


class OfflineTeacher:
    """Same interface as TeacherClient (`preflight`, `ask`, `stats`), backed by `vllm.LLM.chat`.

    Requests are micro-batched: whatever arrives while the engine is busy (up to
    `teacher.concurrency`) goes into the next `LLM.chat` call as one list, so the engine's
    continuous batching sees a full batch instead of one conversation at a time.
    """

    def __init__(self, cfg: TeacherConfig, engine_kwargs: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.engine_kwargs = engine_kwargs or {}
        self._llm: Any = None
        self._queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    async def __aenter__(self) -> OfflineTeacher:
        try:
            from vllm import LLM
        except ImportError:
            raise TeacherUnavailable(INSTALL_HINT) from None
        try:
            self._llm = LLM(
                model=self.cfg.model,
                limit_mm_per_prompt={"image": 0, "video": 1, "audio": 1},
                mm_processor_cache_gb=0,
                **self.engine_kwargs,
            )
        except Exception as err:  # noqa: BLE001 - CUDA missing, out of memory, unknown model: all fatal here
            raise TeacherUnavailable(f"cannot start vLLM's offline engine for {self.cfg.model}: {err}. {INSTALL_HINT}") from None
        self._worker = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._llm = None

    async def preflight(self) -> list[str]:
        return [self.cfg.model]

    async def ask(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherResponse:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.stats.inc("requests")
        await self._queue.put((body, future))
        return await future

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self.cfg.concurrency:
                batch.append(self._queue.get_nowait())
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        from vllm import SamplingParams

        began = time.perf_counter()
        bodies = [body for body, _ in batch]
        try:
            outputs = await asyncio.to_thread(
                self._llm.chat,
                [body["messages"] for body in bodies],
                [SamplingParams(**_sampling(body)) for body in bodies],
                mm_processor_kwargs=bodies[0].get("mm_processor_kwargs"),
                use_tqdm=False,
            )
        except Exception as err:  # noqa: BLE001 - a batch the engine refuses fails its clips, not the run
            self.stats.inc(f"failures/{type(err).__name__}", len(batch))
            for _, future in batch:
                future.set_exception(TeacherCallError(f"vLLM offline engine refused the request: {err}"))
            return
        latency = time.perf_counter() - began
        for (_, future), output in zip(batch, outputs, strict=True):
            prompt = len(output.prompt_token_ids or [])
            completion = sum(len(c.token_ids) for c in output.outputs)
            self.stats.inc("succeeded")
            self.stats.inc("prompt_tokens", prompt)
            self.stats.inc("completion_tokens", completion)
            future.set_result(TeacherResponse(
                contents=[c.text for c in output.outputs],
                finish_reasons=[c.finish_reason or "" for c in output.outputs],
                model=self.cfg.model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_s=latency,
            ))
