"""Local executor: the bundle stage as a stream source -> ledger -> decode pool -> bundle parts.

The source is read lazily and decoding is bounded by the pool's in-flight limit, so memory stays
flat however large the dataset is. Every row read ends in the ledger: failed with a reason (bad
row, undecodable media), bundled, or skipped because an earlier run already finished it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotforge.config import BundleConfig, PipelineConfig, TeacherConfig
from rich.progress import Progress

from cotforge.executors.progress import make_progress
from cotforge.executors.synth import ClipOutcome, MediaWorkers, SynthStats, Synthesizer, run_clips
from cotforge.media.pool import DecodePool
from cotforge.sources import Source, open_source
from cotforge.executors.export import check_config, run_export
from cotforge.store.bundles import BundleWriter, bundle_row, iter_bundles
from cotforge.store.shards import ExportResult
from cotforge.store.ledger import Ledger, reason_kind
from cotforge.store.run import RunDir
from cotforge.store.cache import ResponseCache
from cotforge.teacher.client import TeacherClient
from cotforge.teacher.offline import OfflineTeacher
from cotforge.teacher.plan import ClipPlan, estimate_text_tokens, rules_for
from cotforge.teacher.prompts import render_teacher
from cotforge.types import Bundle, ClipFailure, ClipRef, ClipState


@dataclass
class BundleStats:
    read: int = 0
    skipped: int = 0
    bundled: int = 0
    failed: int = 0
    decode_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)


def run_bundle(
    cfg: BundleConfig,
    run: Path,
    retry_failed: bool = False,
    quiet: bool = False,
    progress: Progress | None = None,
    on_bundle: Callable[[Bundle], None] | None = None,
    source: Source | None = None,
    total: int | None = None,
) -> BundleStats:
    """Decode every pending clip of the source into bundle parts.

    `on_bundle` sees each bundle as soon as it is decoded (the streaming `run` feeds the teacher
    with it); it may block, which is how the teacher stage slows decoding down (backpressure).
    A caller that has already checked and counted the source passes it, so it is not read again.
    """
    if source is None:
        source = open_source(cfg.source)
        source.check()
    run_dir = RunDir(run)
    stats = BundleStats()
    began = time.perf_counter()
    with run_dir.open_ledger() as ledger:
        run_dir.bind_bundle_config(ledger, cfg)
        writer = BundleWriter(run_dir.bundles, cfg.media.fingerprint(), cfg.exec.bundle_part_rows)
        if total is None:
            total = sum(1 for _ in source)
        own_progress = progress is None
        if progress is None:
            progress = make_progress(quiet)
        with progress if own_progress else nullcontext(), DecodePool(cfg.media, cfg.exec.workers, cfg.exec.queue_size) as pool:
            task = progress.add_task("decode", total=total, info="")

            def advance() -> None:
                progress.update(task, advance=1, info=f"ok {stats.bundled} failed {stats.failed} skipped {stats.skipped}")

            def todo() -> Iterator[ClipRef]:
                for ref in source:
                    stats.read += 1
                    admitted = _admit(ledger, ref, retry_failed, stats)
                    # short write transactions: the teacher stage writes the same ledger from another thread
                    ledger.commit()
                    if admitted:
                        yield ref
                    else:
                        advance()

            try:
                for result in pool.map(todo()):
                    if isinstance(result, ClipFailure):
                        ledger.fail(result.ref.key, result.stage, result.reason, result.seconds)
                        ledger.commit()
                        stats.failed += 1
                        stats.reasons[reason_kind(result.reason)] += 1
                        stats.decode_cpu_seconds += result.seconds
                    else:
                        stats.decode_cpu_seconds += result.decode_seconds
                        stats.bundled += 1
                        _record(ledger, writer.add(result))
                        if on_bundle is not None:
                            on_bundle(result)
                    advance()
            finally:
                _record(ledger, writer.flush())
                ledger.commit()
    stats.wall_seconds = time.perf_counter() - began
    return stats


def _admit(ledger: Ledger, ref: ClipRef, retry_failed: bool, stats: BundleStats) -> bool:
    """Record the row; True when it still has to be decoded."""
    state = ledger.admit(ref)
    if state is ClipState.FAILED and retry_failed:
        ledger.reset(ref)
        state = ClipState.PENDING
    if state is not ClipState.PENDING:
        stats.skipped += 1
        return False
    if ref.error:
        ledger.fail(ref.key, "source", ref.error)
        stats.failed += 1
        stats.reasons[reason_kind(ref.error)] += 1
        return False
    return True


def _record(ledger: Ledger, written: list[tuple[str, str, str, float]] | None) -> None:
    if written:
        ledger.mark_bundled(written)
        ledger.commit()


def run_synth(cfg: PipelineConfig, run: Path, quiet: bool = False) -> SynthStats:
    """Ask the teacher for every bundled clip of a run (and clips whose teacher call failed before)."""
    with make_progress(quiet) as progress:
        return asyncio.run(_synth_async(cfg, RunDir(run), progress))


def make_teacher(cfg: TeacherConfig) -> TeacherClient | OfflineTeacher:
    """The backend the config names; both answer `ask(body, headers)` with a TeacherResponse."""
    return OfflineTeacher(cfg) if cfg.backend == "vllm-offline" else TeacherClient(cfg)


def _waiting_rows(ledger: Ledger, run_dir: RunDir) -> tuple[Iterator[dict], int]:
    """Bundle rows of clips that still need the teacher: bundled, or failed at the teacher before."""
    todo = set(ledger.keys_in_state(ClipState.BUNDLED)) | set(ledger.keys_failed_at("teacher"))
    locations = {k: v for k, v in ledger.bundle_locations().items() if k in todo}
    return iter_bundles(run_dir.bundles, locations), len(locations)


async def _synth_async(
    cfg: PipelineConfig,
    run_dir: RunDir,
    progress: Progress,
    fresh: Iterable[dict] = (),
    fresh_total: int = 0,
    on_ready: Callable[[], None] | None = None,
) -> SynthStats:
    with run_dir.open_ledger() as ledger:
        waiting, total = _waiting_rows(ledger, run_dir)
        rows = itertools.chain(waiting, fresh)
        total += fresh_total
        cache = ResponseCache(run_dir.cache_path)
        media = MediaWorkers(cfg.teacher.media_workers)
        if total:
            media.warm()
        try:
            async with make_teacher(cfg.teacher) as client:
                await client.preflight()
                if on_ready is not None:
                    on_ready()
                synth = Synthesizer(cfg, cache, client, media)
                task = progress.add_task("teacher", total=total, info="")
                began = time.perf_counter()

                def on_outcome(outcome: ClipOutcome) -> None:
                    ledger.record_answer(outcome.key, outcome.state, outcome.reason, outcome.answer)
                    ledger.commit()
                    s = synth.stats
                    rate = (s.prompt_tokens + s.completion_tokens) / max(time.perf_counter() - began, 1e-6)
                    retries = sum(client.stats.retries.values())
                    progress.update(
                        task, advance=1,
                        info=f"asked {s.requests} accepted {s.accepted} rejected {s.rejected} failed {s.failed} "
                        f"cache {s.cache_hits} retries {retries} {rate:,.0f} tok/s",
                    )

                limit = cfg.teacher.concurrency + 2 * cfg.teacher.media_workers
                await run_clips(synth, rows, on_outcome, limit)
                synth.stats.retries = dict(client.stats.retries)
                synth.stats.max_in_flight = client.stats.max_in_flight
                return synth.stats
        finally:
            media.shutdown()
            cache.close()


_DONE = object()


@dataclass
class PipelineResult:
    bundle: BundleStats
    synth: SynthStats
    export: ExportResult
    wall_seconds: float


def run_pipeline(cfg: PipelineConfig, run: Path, force: bool = False, quiet: bool = False) -> PipelineResult:
    """All stages at once: decoding feeds the teacher through a bounded queue, then shards are exported.

    The queue holds at most `teacher.concurrency` bundles: when the teacher is the bottleneck,
    decoding waits, so memory does not grow with the dataset.
    """
    began = time.perf_counter()
    run_dir = RunDir(run)
    check_config(run_dir, cfg, force)
    source = open_source(cfg.source)
    source.check()
    with run_dir.open_ledger() as ledger:
        ledger.reset_unbundled()
        done = set(ledger.keys_in_state(*(s for s in ClipState if s is not ClipState.PENDING)))
    # one pass over the source: rows for the decode bar, rows the decoder will hand over for the teacher bar
    total = expected = 0
    for ref in source:
        total += 1
        expected += ref.error is None and ref.key not in done
    handoff: queue.Queue = queue.Queue(maxsize=max(2, cfg.teacher.concurrency))
    stop = threading.Event()
    box: dict[str, Any] = {}
    media_config = cfg.media.fingerprint()

    def on_bundle(bundle: Bundle) -> None:
        row = bundle_row(bundle, media_config)
        while not stop.is_set():
            try:
                handoff.put(row, timeout=0.2)
                return
            except queue.Full:
                continue
        raise PipelineStopped

    def decode() -> None:
        try:
            box["bundle"] = run_bundle(
                cfg.bundle_config(), run, quiet=quiet, progress=progress, on_bundle=on_bundle, source=source, total=total
            )
        except PipelineStopped:
            pass
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = err
        finally:
            handoff.put(_DONE)

    def fresh() -> Iterator[dict]:
        while (row := handoff.get()) is not _DONE:
            yield row

    with make_progress(quiet) as progress:
        # decoding starts once the teacher has answered the preflight: a wrong URL costs seconds, not a decode pass
        worker = threading.Thread(target=decode, name="cotforge-decode", daemon=True)
        try:
            synth_stats = asyncio.run(_synth_async(cfg, run_dir, progress, fresh(), expected, on_ready=worker.start))
        finally:
            stop.set()
            while worker.is_alive():
                with contextlib.suppress(queue.Empty):
                    handoff.get(timeout=0.1)
            if worker.ident is not None:
                worker.join()
    if "error" in box:
        raise box["error"]
    export = run_export(cfg, run, force=force)
    return PipelineResult(box.get("bundle", BundleStats()), synth_stats, export, time.perf_counter() - began)


class PipelineStopped(Exception):
    """Raised inside the decode thread when the teacher stage stopped the run."""


@dataclass
class PlanResult:
    clips: list[ClipPlan]
    completion_per_request: float
    completion_observed: bool
    requests_low: int
    requests_high: int

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.clips)


def run_plan(cfg: PipelineConfig, run: Path, tokenizer: Callable[[str], int] | None = None) -> PlanResult:
    """Estimate the tokens `synth` would spend on the run's bundles (no network, no GPU)."""
    import pyarrow.parquet as pq

    run_dir = RunDir(run)
    rules = rules_for(cfg.teacher.model)
    scale = cfg.source.scale()
    count = tokenizer or estimate_text_tokens
    with run_dir.open_ledger() as ledger:
        locations = ledger.bundle_locations()
    columns = ["key", "split", "dataset", "language", "text", "frame_timestamps", "frame_width", "frame_height",
               "audio_num_samples", "audio_sample_rate"]
    clips: list[ClipPlan] = []
    for part in sorted(run_dir.bundles.glob("part-*.parquet")):
        for row in pq.read_table(part, columns=columns).to_pylist():
            if locations.get(row["key"]) != part.name:
                continue
            system, instruction = render_teacher(row["text"], row["language"], scale)
            seconds = row["audio_num_samples"] / row["audio_sample_rate"] if row["audio_sample_rate"] else 0.0
            clips.append(ClipPlan(
                row["key"], row["split"], count(system) + count(instruction), rules.audio_tokens(seconds),
                rules.video_tokens(len(row["frame_timestamps"]), row["frame_width"], row["frame_height"]),
            ))
    observed = None
    if run_dir.cache_path.is_file():
        cache = ResponseCache(run_dir.cache_path)
        usage = cache.usage()
        cache.close()
        if usage["responses"]:
            observed = usage["completion_tokens"] / usage["responses"]
    per_request = observed if observed is not None else float(cfg.teacher.max_tokens * cfg.teacher.samples)
    attempts = math.ceil(cfg.reask.samples / cfg.teacher.samples) + int(cfg.reask.hint)
    return PlanResult(clips, per_request, observed is not None, len(clips), len(clips) * attempts)
