"""Local executor: the bundle stage as a stream source -> ledger -> decode pool -> bundle parts.

The source is read lazily and decoding is bounded by the pool's in-flight limit, so memory stays
flat however large the dataset is. Every row read ends in the ledger: failed with a reason (bad
row, undecodable media), bundled, or skipped because an earlier run already finished it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cotforge.config import BundleConfig
from cotforge.executors.progress import make_progress
from cotforge.media.pool import DecodePool
from cotforge.sources import open_source
from cotforge.store.bundles import BundleWriter
from cotforge.store.ledger import Ledger
from cotforge.store.run import RunDir
from cotforge.types import ClipFailure, ClipRef, ClipState


@dataclass
class BundleStats:
    read: int = 0
    skipped: int = 0
    bundled: int = 0
    failed: int = 0
    decode_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)


def reason_kind(reason: str) -> str:
    """Group reasons by their fixed head ("media file missing: /a/b.mp4" -> "media file missing")."""
    return reason.split(":", 1)[0]


def run_bundle(cfg: BundleConfig, run: Path, retry_failed: bool = False, quiet: bool = False) -> BundleStats:
    source = open_source(cfg.source)
    source.check()
    run_dir = RunDir(run)
    stats = BundleStats()
    began = time.perf_counter()
    with run_dir.open_ledger() as ledger:
        run_dir.bind_bundle_config(ledger, cfg)
        writer = BundleWriter(run_dir.bundles, cfg.media.fingerprint(), cfg.exec.bundle_part_rows)
        total = sum(1 for _ in source)
        with make_progress(quiet) as progress, DecodePool(cfg.media, cfg.exec.workers, cfg.exec.queue_size) as pool:
            task = progress.add_task("bundle", total=total, info="")

            def advance() -> None:
                progress.update(task, advance=1, info=f"ok {stats.bundled} failed {stats.failed} skipped {stats.skipped}")

            def todo() -> Iterator[ClipRef]:
                for ref in source:
                    stats.read += 1
                    if _admit(ledger, ref, retry_failed, stats):
                        yield ref
                    else:
                        advance()

            try:
                for result in pool.map(todo()):
                    if isinstance(result, ClipFailure):
                        ledger.fail(result.ref.key, result.stage, result.reason, result.seconds)
                        stats.failed += 1
                        stats.reasons[reason_kind(result.reason)] += 1
                        stats.decode_cpu_seconds += result.seconds
                    else:
                        stats.decode_cpu_seconds += result.decode_seconds
                        stats.bundled += 1
                        _record(ledger, writer.add(result))
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
