"""The teacher stage: ask, parse, validate, re-ask, and record one terminal state per clip.

Per clip: draw up to `reask.samples` samples (`teacher.samples` per request, a new seed per
request) until one passes the validator; if none does and `reask.hint` is on, ask once more with
the gold *polarity* in the prompt (never the score) and validate that answer with the extra
no-leak rule, marking it `hinted`. Every request goes through the response cache first, so a
re-run never pays for a request that already succeeded.

Concurrency: clips are processed as asyncio tasks; at most `teacher.concurrency` HTTP requests are
in flight (a semaphore around the call only), and media muxing runs in worker processes while
other requests wait on the server, so the server's batch stays full.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from cotforge.config import PipelineConfig
from cotforge.dc import ParseResult, parse_teacher
from cotforge.store.ledger import reason_kind
from cotforge.store.cache import ResponseCache, TeacherResponse
from cotforge.teacher.client import TeacherCallError, TeacherClient, TeacherUnavailable
from cotforge.teacher.request import ClipMedia, build_request, materialize
from cotforge.teacher.request import ready as request_ready
from cotforge.types import ClipState
from cotforge.validate import ValidateConfig, Verdict, pick_best, validate


@dataclass
class Candidate:
    cache_key: str
    index: int
    hinted: bool
    parse: ParseResult
    verdict: Verdict
    finish_reason: str

    def summary(self) -> dict[str, Any]:
        r = self.parse.rationale
        return {
            "cache_key": self.cache_key,
            "index": self.index,
            "hinted": self.hinted,
            "passed": self.verdict.passed,
            "error": self.verdict.error,
            "parse_error": self.parse.error,
            "lenient": self.parse.lenient,
            "finish_reason": self.finish_reason,
            "polarity": r.discrimination.polarity.value if r else None,
            "score": r.calibration.score if r else None,
            "failed_rules": [res.name for res in self.verdict.results if not res.passed],
            "rules": [{"name": res.name, "passed": res.passed, "reason": res.reason} for res in self.verdict.results],
        }


@dataclass
class ClipOutcome:
    key: str
    state: ClipState
    reason: str | None
    answer: dict[str, Any]


@dataclass
class SynthStats:
    clips: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    hinted: int = 0
    cache_hits: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_in_flight: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


def validate_config_for(cfg: PipelineConfig) -> ValidateConfig:
    """The run's validator: its one scale plus the validate section's overrides."""
    return ValidateConfig.for_scale(cfg.source.scale(), **cfg.validate_.overrides())


def _rejection_reason(candidates: list[Candidate]) -> str:
    """Name the rules that failed on the closest candidate, with their reasons."""
    best = min(candidates, key=lambda c: (c.verdict.error is None, c.verdict.error or 0.0))
    failed = [res for res in best.verdict.results if not res.passed and res.reason and not res.reason.startswith("not checked")]
    names = "+".join(res.name for res in failed) or "well_formed"
    details = "; ".join(f"{res.name}: {res.reason}" for res in failed)
    return f"rejected by {names}: {details} ({len(candidates)} samples)"


class MediaWorkers:
    """Processes that mux request media. A worker that dies (a crash inside FFmpeg) breaks the pool; it is
    rebuilt, and only the clips that were on it fail, with a reason, instead of the run."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("forkserver"))

    def warm(self) -> None:
        """Start the workers now (while the preflight waits on the server), not when the first clip needs one."""
        for _ in range(self.workers):
            self._pool.submit(request_ready)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = self._new()
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Synthesizer:
    """Turns bundle rows into ClipOutcomes; owns nothing but references to the cache and client."""

    def __init__(self, cfg: PipelineConfig, cache: ResponseCache, client: TeacherClient, media: MediaWorkers) -> None:
        self.cfg = cfg
        self.cache = cache
        self.client = client
        self.media = media
        self.vcfg = validate_config_for(cfg)
        self.http = asyncio.Semaphore(cfg.teacher.concurrency)
        self.stats = SynthStats()

    async def _fetch(self, row: dict[str, Any], hint: str | None, attempt: int) -> tuple[str, str, TeacherResponse]:
        request = build_request(row, self.cfg.teacher, self.vcfg.scale, hint=hint, attempt=attempt)
        cached = self.cache.get(request.cache_key)
        if cached is not None:
            self.stats.cache_hits += 1
            return request.cache_key, request.prompt_version, cached
        media = ClipMedia(list(row["frames"]), float(row["frame_fps"]), row["audio"])
        try:
            body = await self.media.run(materialize, request.body, media, self.cfg.teacher.video_codec, self.cfg.teacher.media_dir)
        except Exception as err:  # noqa: BLE001 - bad bundle media or a crashed worker fails this clip only
            raise TeacherCallError(f"media encoding failed: {type(err).__name__}: {err}") from None
        async with self.http:
            response = await self.client.ask(body, request.headers)
        self.stats.requests += 1
        self.stats.prompt_tokens += response.prompt_tokens or 0
        self.stats.completion_tokens += response.completion_tokens or 0
        self.cache.put(request.cache_key, row["key"], request.prompt_version, hint is not None, response)
        return request.cache_key, request.prompt_version, response

    def _judge(self, cache_key: str, response: TeacherResponse, gold: float, vcfg: ValidateConfig, hinted: bool) -> list[Candidate]:
        out = []
        for index, (content, finish) in enumerate(zip(response.contents, response.finish_reasons, strict=False)):
            parse = parse_teacher(content)
            out.append(Candidate(cache_key, index, hinted, parse, validate(parse, gold, vcfg, hinted=hinted), finish))
        return out

    async def process(self, row: dict[str, Any]) -> ClipOutcome:
        """One clip's terminal outcome; only a fatal teacher error (TeacherUnavailable) escapes."""
        try:
            return await self._process(row)
        except (TeacherUnavailable, asyncio.CancelledError):
            raise
        except Exception as err:  # noqa: BLE001 - a bug must fail one clip with its reason, not the run
            return ClipOutcome(row["key"], ClipState.FAILED, f"internal error: {type(err).__name__}: {err}", {"requests": 0})

    async def _process(self, row: dict[str, Any]) -> ClipOutcome:
        began = time.perf_counter()
        gold = float(row["label"])
        vcfg = self.vcfg
        candidates: list[Candidate] = []
        prompt_tokens = completion_tokens = requests = 0
        model = version = None

        async def ask(hint: str | None, attempt: int) -> None:
            nonlocal prompt_tokens, completion_tokens, requests, model, version
            cache_key, version, response = await self._fetch(row, hint, attempt)
            requests += 0 if response.cached else 1
            model = response.model
            prompt_tokens += response.prompt_tokens or 0
            completion_tokens += response.completion_tokens or 0
            candidates.extend(self._judge(cache_key, response, gold, vcfg, hinted=hint is not None))

        attempt = 0
        try:
            while len(candidates) < self.cfg.reask.samples:
                await ask(None, attempt)
                attempt += 1
                if any(c.verdict.passed for c in candidates):
                    break
            if not any(c.verdict.passed for c in candidates) and self.cfg.reask.hint:
                await ask(vcfg.scale.polarity(gold).value, attempt)
        except TeacherCallError as err:
            answer = {"requests": requests, "candidates": [c.summary() for c in candidates], "seconds": time.perf_counter() - began}
            return ClipOutcome(row["key"], ClipState.FAILED, str(err), answer)
        chosen = self._choose(candidates)
        best = candidates[chosen[0]] if chosen else None
        answer = {
            "teacher_model": model,
            "prompt_version": version,
            "hinted": bool(best and best.hinted),
            "requests": requests,
            "chosen": chosen,
            "candidates": [c.summary() for c in candidates],
            "score": best.parse.rationale.calibration.score if best else None,
            "polarity": best.parse.rationale.discrimination.polarity.value if best else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "seconds": time.perf_counter() - began,
        }
        if best is None:
            return ClipOutcome(row["key"], ClipState.REJECTED, _rejection_reason(candidates), answer)
        return ClipOutcome(row["key"], ClipState.ACCEPTED, None, answer)

    def _choose(self, candidates: list[Candidate]) -> list[int]:
        if self.cfg.reask.keep == "all":
            return [i for i, c in enumerate(candidates) if c.verdict.passed]
        best = pick_best([(c.parse, c.verdict) for c in candidates])
        return [] if best is None else [best]

    def count(self, outcome: ClipOutcome) -> None:
        self.stats.clips += 1
        if outcome.state is ClipState.ACCEPTED:
            self.stats.accepted += 1
            self.stats.hinted += int(outcome.answer.get("hinted", False))
        elif outcome.state is ClipState.REJECTED:
            self.stats.rejected += 1
        else:
            self.stats.failed += 1
        if outcome.reason:
            kind = reason_kind(outcome.reason)
            self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1


async def run_clips(
    synth: Synthesizer, rows: Iterable[dict[str, Any]], on_outcome: Callable[[ClipOutcome], None], limit: int
) -> None:
    """Process rows with at most `limit` clips in progress; a fatal teacher error cancels the rest."""
    pending: set[asyncio.Task] = set()
    finished: list[asyncio.Task] = []
    source = iter(rows)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < limit:
                row = await asyncio.to_thread(next, source, None)
                if row is None:
                    exhausted = True
                    break
                pending.add(asyncio.create_task(synth.process(row)))
            if not pending:
                return
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finished = list(done)
            while finished:
                outcome = finished.pop().result()
                synth.count(outcome)
                on_outcome(outcome)
    finally:
        # a fatal error leaves other clips running or finished: stop them, and collect every exception
        # so none is reported as "never retrieved"; their clips stay where they were for the re-run
        leftover = [*pending, *finished]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)
