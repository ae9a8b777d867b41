"""The plan step: bundle rows -> the prompt tokens each clip's request will cost (`cotforge plan`).

No network, no GPU: the counts come from the processors' rules (`teacher.plan`) and, when a local
copy is given, the teacher's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator

from cotforge.config import PipelineConfig
from cotforge.steps.base import Step
from cotforge.store.bundles import iter_bundles
from cotforge.store.cache import ResponseCache
from cotforge.store.run import RunDir
from cotforge.teacher.plan import ClipPlan, PlanResult, PromptCounter, plan_requests
from cotforge.teacher.request import build_request

COLUMNS = ["key", "split", "dataset", "language", "text", "label", "media_hash", "frame_timestamps", "frame_fps",
           "frame_width", "frame_height", "audio_num_samples", "audio_sample_rate"]


class PlanStep(Step):
    """Bundle rows -> the prompt tokens of each clip's first request, counted on the exact request body."""

    name = "plan"

    def __init__(self, cfg: PipelineConfig, counter: PromptCounter | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.source.scale()
        self.counter = counter or PromptCounter.load(cfg.teacher.model)

    def process(self, row: dict) -> ClipPlan:
        body = build_request(row, self.cfg.teacher, self.scale).body
        return self.counter.clip(row, body, self.cfg.teacher.video_codec)

    def count(self, result: ClipPlan) -> None:
        self.stats.inc("clips")
        self.stats.inc("prompt_tokens", result.prompt_tokens)


def run_plan(cfg: PipelineConfig, run, counter: PromptCounter | None = None) -> PlanResult:
    """Plan every clip the teacher would get (its splits), from the run's bundles."""
    run_dir = RunDir(run)
    cfg = cfg.for_run(run_dir.recorded_teacher())
    with run_dir.open_ledger(read_only=True) as ledger:
        locations = ledger.bundle_locations()
        refs = ledger.refs(locations)
    wanted = {k: v for k, v in locations.items() if refs.get(k, {}).get("split") in cfg.teacher.splits}
    step = PlanStep(cfg, counter)
    clips = list(step.run(_rows(run_dir, wanted, refs)))
    observed = None
    if run_dir.cache_path.is_file():
        cache = ResponseCache(run_dir.cache_path, read_only=True)
        usage = cache.usage()
        cache.close()
        if usage["responses"]:
            observed = usage["completion_tokens"] / usage["responses"]
    return plan_requests(clips, cfg.teacher, cfg.reask, observed)


def _rows(run_dir: RunDir, locations: dict[str, str], refs: dict[str, dict]) -> Iterator[dict]:
    for row in iter_bundles(run_dir.bundles, locations, columns=COLUMNS):
        ref = refs.get(row["key"]) or {}
        yield {**row, **{name: ref.get(name, row[name]) for name in ("text", "split", "label", "language")}}


def preview_requests(cfg: PipelineConfig, run, limit: int) -> list[dict]:
    """The exact first request of up to `limit` clips the teacher would get, media elided, sending nothing.

    Bodies are the canonical ones whose hash is the cache key: each media part holds a placeholder
    URL and the media hash (`uuid`) instead of megabytes of base64.
    """
    run_dir = RunDir(run)
    cfg = cfg.for_run(run_dir.recorded_teacher())
    with run_dir.open_ledger(read_only=True) as ledger:
        locations = ledger.bundle_locations()
        refs = ledger.refs(locations)
    wanted = {k: v for k, v in sorted(locations.items()) if refs.get(k, {}).get("split") in cfg.teacher.splits}
    scale = cfg.source.scale()
    previews = []
    for row in iter_bundles(run_dir.bundles, wanted):
        if len(previews) >= limit:
            break
        ref = refs.get(row["key"]) or {}
        row = {**row, **{name: ref.get(name, row.get(name)) for name in ("text", "label", "split", "language")}}
        request = build_request(row, cfg.teacher, scale)
        previews.append({"key": row["key"], "cache_key": request.cache_key, "prompt_version": request.prompt_version,
                         "headers": request.headers, "body": request.body})
    return previews
