"""The read step: a dataset on disk -> the ClipRef stream of the splits this run reads.

Readers (`cotforge.sources`) yield every row of the file; this step applies the split filter, the
row limit and the `--shard i/N` split, and remembers every key it met (filtered or not), so that
bookkeeping can tell a row deleted from the label file from a row this run merely skips.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from cotforge.config import SourceConfig
from cotforge.sources import Source, open_source
from cotforge.steps.base import Step
from cotforge.types import ClipRef


def shard_of(key: str, world_size: int) -> int:
    """Which of `world_size` shards a clip key belongs to: a stable hash, the same on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % world_size


class ReadStep(Step):
    name = "read"

    def __init__(self, cfg: SourceConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.source: Source = open_source(cfg)
        self.seen: set[str] = set()
        self.complete = False
        """True once a whole pass read every row of the file (no limit): only then are unseen keys gone."""

    def check(self) -> None:
        """Fail before anything runs when the label file cannot be read at all (SourceError)."""
        self.source.check()

    def run(self, records: Iterable[ClipRef] | None = None) -> Iterator[ClipRef]:  # type: ignore[override]
        """Every row of the selected splits (and every bad row, which fails with its reason)."""
        self.seen = set()
        emitted = 0
        for ref in self.source:
            if self.world_size > 1 and shard_of(ref.key, self.world_size) != self.rank:
                continue
            self.seen.add(ref.key)
            if ref.error is None and ref.split not in self.cfg.splits:
                self.stats.inc("other_splits")
                continue
            if self.cfg.limit and emitted >= self.cfg.limit:
                return
            emitted += 1
            self.stats.inc("rows")
            self.stats.inc(f"splits/{ref.split or '?'}")
            if ref.error:
                self.stats.inc("bad_rows")
            yield ref
        self.complete = not self.cfg.limit
