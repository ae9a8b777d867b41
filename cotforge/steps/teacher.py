"""The teacher step: ask, parse, validate, re-ask, and one terminal outcome per clip.

Per clip: draw up to `reask.samples` samples (`teacher.n` per request, a new seed per request) until
one passes the validator; if none does and `reask.hint` is on, ask once more with the gold
*polarity* in the prompt (never the score) and validate that answer with the extra no-leak rule,
marking it `hinted`. Every request goes through the response cache first, so a re-run never pays
for a request that already succeeded, and re-judging a clip under new validation settings or a
corrected label costs nothing but the requests the new settings add.

The step knows nothing of scheduling: the executor hands it a client (`ask`), the run's response
cache (`get`/`put`, owned by bookkeeping) and an awaitable that runs media muxing somewhere (a
worker pool). A clip's media is muxed once, at its first request that misses the cache, and the
same bytes go with each of its requests (more samples, the hinted attempt): re-asking costs no
muxing, and a server with an encoder cache sees the identical video, under the same `uuid`, again.
The client holds at most `teacher.concurrency` requests in flight, so muxing of the next clips
overlaps the server's work and its batch stays full.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cotforge.config import ReaskConfig, TeacherConfig
from cotforge.dc import ParseResult, parse_teacher
from cotforge.steps.base import AsyncStep
from cotforge.teacher.client import TeacherBudgetReached, TeacherCallError, TeacherUnavailable
from cotforge.teacher.plan import PromptCounter
from cotforge.teacher.request import ClipMedia, MediaPayload, build_request, encode_media, fill, media_uuids
from cotforge.types import ClipState, TeacherResponse, reason_kind
from cotforge.validate import ValidateConfig, Verdict, pick_best, validate


class Teacher(Protocol):
    """A backend (HTTP client or in-process engine) that answers one materialized request."""

    async def ask(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherResponse: ...


class Responses(Protocol):
    """The run's response cache: looked up before any request, written when one succeeds."""

    def get(self, cache_key: str) -> TeacherResponse | None: ...

    def put(self, cache_key: str, clip_key: str, prompt_version: str, hinted: bool, response: TeacherResponse) -> None: ...


RunMedia = Callable[..., Awaitable[Any]]
"""`await run_media(fn, *args)`: runs `fn(*args)` where media work belongs (a worker process)."""


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


def rejection_reason(candidates: list[Candidate]) -> str:
    """Name the rules that failed on the closest candidate, with their reasons."""
    best = min(candidates, key=lambda c: (c.verdict.error is None, c.verdict.error or 0.0))
    failed = [res for res in best.verdict.results if not res.passed and res.reason and not res.reason.startswith("not checked")]
    names = "+".join(res.name for res in failed) or "well_formed"
    details = "; ".join(f"{res.name}: {res.reason}" for res in failed)
    return f"rejected by {names}: {details} ({len(candidates)} samples)"


class _CapReached(Exception):
    """The clip has had all the paid requests it may have; judge what came back."""


class TeacherStep(AsyncStep):
    """Bundle rows -> ClipOutcomes. Holds references only: the client, the cache and the media runner."""

    name = "teacher"

    def __init__(
        self,
        teacher: TeacherConfig,
        reask: ReaskConfig,
        validator: ValidateConfig,
        client: Teacher,
        cache: Responses,
        run_media: RunMedia,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.reask = reask
        self.validator = validator
        self.client = client
        self.cache = cache
        self.run_media = run_media
        self.counter = PromptCounter.load(teacher.model)
        self.cap = reask.request_cap(teacher.n)

    async def _fetch(
        self, row: dict[str, Any], hint: str | None, attempt: int, payloads: dict[str, MediaPayload]
    ) -> tuple[str, str, TeacherResponse]:
        """One request of a clip; `payloads` holds the clip's encoded media (filled at its first cache miss)."""
        request = build_request(row, self.teacher, self.validator.scale, hint=hint, attempt=attempt)
        cached = self.cache.get(request.cache_key)
        if cached is not None:
            self.stats.inc("cache_hits")
            return request.cache_key, request.prompt_version, cached
        self._check_budget(row, request.body)
        if any(uuid not in payloads for uuid in media_uuids(request.body)):
            media = ClipMedia(list(row["frames"]), float(row["frame_fps"]), row["audio"])
            try:
                payloads.update(
                    await self.run_media(encode_media, request.body, media, self.teacher.video_codec, self.teacher.media_dir)
                )
            except Exception as err:  # noqa: BLE001 - bad bundle media or a crashed worker fails this clip only
                raise TeacherCallError(f"media encoding failed: {type(err).__name__}: {err}") from None
            self.stats.inc("media_encoded")
        body = fill(request.body, payloads)
        response = await self.client.ask(body, request.headers)
        self.stats.inc("requests")
        self.stats.inc("prompt_tokens", response.prompt_tokens or 0)
        self.stats.inc("completion_tokens", response.completion_tokens or 0)
        self.cache.put(request.cache_key, row["key"], request.prompt_version, hint is not None, response)
        return request.cache_key, request.prompt_version, response

    def _check_budget(self, row: dict[str, Any], body: dict[str, Any]) -> None:
        """A clip too long for the server's context fails before it is paid for, naming the budget."""
        budget = self.teacher.max_model_len
        if not budget:
            return
        prompt = self.counter.clip(row, body, self.teacher.video_codec).prompt_tokens
        if prompt + self.teacher.max_tokens > budget:
            raise TeacherCallError(
                f"over the context budget: about {prompt:,} prompt + {self.teacher.max_tokens:,} completion tokens > "
                f"max_model_len {budget:,}; lower media.fps/max_frames/size or teacher.max_tokens, or serve a longer "
                "--max-model-len"
            )

    def _judge(self, cache_key: str, response: TeacherResponse, gold: float, hinted: bool) -> list[Candidate]:
        if not response.contents:
            # a 200 with no choices is a malformed answer: it counts as one sample, so re-asking ends
            parse = ParseResult(None, "malformed answer: no choices in the response", lenient=False)
            return [Candidate(cache_key, 0, hinted, parse, validate(parse, gold, self.validator, hinted=hinted), "")]
        out = []
        for index, (content, finish) in enumerate(zip(response.contents, response.finish_reasons, strict=False)):
            parse = parse_teacher(content)
            out.append(Candidate(cache_key, index, hinted, parse, validate(parse, gold, self.validator, hinted=hinted), finish))
        return out

    async def process(self, row: dict[str, Any]) -> ClipOutcome:  # type: ignore[override]
        """One clip's terminal outcome; only a fatal teacher error (TeacherUnavailable) escapes."""
        try:
            return await self._process(row)
        except (TeacherUnavailable, TeacherBudgetReached, asyncio.CancelledError):
            raise
        except Exception as err:  # noqa: BLE001 - a bug must fail one clip with its reason, not the run
            return ClipOutcome(row["key"], ClipState.FAILED, f"internal error: {type(err).__name__}: {err}", {"requests": 0})

    async def _process(self, row: dict[str, Any]) -> ClipOutcome:
        began = time.perf_counter()
        gold = float(row["label"])
        candidates: list[Candidate] = []
        prompt_tokens = completion_tokens = requests = 0
        model = version = None
        payloads: dict[str, MediaPayload] = {}

        async def ask(hint: str | None, attempt: int) -> None:
            nonlocal prompt_tokens, completion_tokens, requests, model, version
            if requests >= self.cap:
                # no path may spend more than the cap on one clip (reask.max_requests)
                raise _CapReached
            cache_key, version, response = await self._fetch(row, hint, attempt, payloads)
            requests += 0 if response.cached else 1
            model = response.model
            prompt_tokens += response.prompt_tokens or 0
            completion_tokens += response.completion_tokens or 0
            candidates.extend(self._judge(cache_key, response, gold, hinted=hint is not None))

        attempt = 0
        try:
            while len(candidates) < self.reask.samples:
                await ask(None, attempt)
                attempt += 1
                if any(c.verdict.passed for c in candidates):
                    break
            if not any(c.verdict.passed for c in candidates) and self.reask.hint:
                await ask(self.validator.scale.polarity(gold).value, attempt)
        except TeacherCallError as err:
            answer = {"requests": requests, "candidates": [c.summary() for c in candidates], "seconds": time.perf_counter() - began}
            return ClipOutcome(row["key"], ClipState.FAILED, str(err), answer)
        except _CapReached:
            self.stats.inc("capped")
            if not candidates:
                reason = f"request cap: {requests} paid requests and no answer (reask.max_requests={self.cap})"
                return ClipOutcome(row["key"], ClipState.FAILED, reason, {"requests": requests, "candidates": []})
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
            return ClipOutcome(row["key"], ClipState.REJECTED, rejection_reason(candidates), answer)
        return ClipOutcome(row["key"], ClipState.ACCEPTED, None, answer)

    def _choose(self, candidates: list[Candidate]) -> list[int]:
        if self.reask.keep == "all":
            return [i for i, c in enumerate(candidates) if c.verdict.passed]
        best = pick_best([(c.parse, c.verdict) for c in candidates])
        return [] if best is None else [best]

    def count(self, outcome: ClipOutcome) -> None:
        self.stats.inc("clips")
        self.stats.inc(outcome.state.value)
        if outcome.state is ClipState.ACCEPTED and outcome.answer.get("hinted"):
            self.stats.inc("hinted")
        if outcome.reason:
            self.stats.inc(f"reasons/{reason_kind(outcome.reason)}")
