"""One stats type for every step, the teacher client and the executors: counters, seconds, gauges and peaks.

A step owns a `Stats` and updates it as records pass; the executor merges the steps' stats, shows them,
and appends them to `RUN/stats.json` (per stage, per run attempt), which `status`, the manifest and
the report read back. Names are stable strings, grouped with a slash (`retries/429`, `reasons/no audio
stream`), so that a dashboard or a test can rely on them, as TRL's metric names are relied on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counters (summed when merged), seconds (summed), peaks (maxima) and live gauges."""

    counters: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    _now: Counter[str] = field(default_factory=Counter, repr=False, compare=False)

    def inc(self, name: str, n: int | float = 1) -> None:
        self.counters[name] += n

    def __getitem__(self, name: str) -> int | float:
        return self.counters.get(name, 0)

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(name, time.perf_counter() - began)

    def peak(self, name: str, value: float) -> None:
        if value > self.peaks.get(name, float("-inf")):
            self.peaks[name] = value

    @contextmanager
    def gauge(self, name: str) -> Iterator[None]:
        """Count something in progress (requests in flight); its peak is kept under the same name."""
        self._now[name] += 1
        self.peak(name, self._now[name])
        try:
            yield
        finally:
            self._now[name] -= 1

    def now(self, name: str) -> int:
        return self._now.get(name, 0)

    def group(self, prefix: str) -> dict[str, int | float]:
        """The counters under `prefix/`, keyed by the rest of their name: `group("retries")` -> {"429": 3}."""
        head = prefix + "/"
        return {name[len(head):]: n for name, n in self.counters.items() if name.startswith(head) and n}

    def merge(self, other: Stats) -> Stats:
        """A new Stats with both: counters and seconds summed, peaks the larger."""
        merged = Stats(Counter(self.counters), dict(self.seconds), dict(self.peaks))
        merged.counters.update(other.counters)
        for name, seconds in other.seconds.items():
            merged.add_seconds(name, seconds)
        for name, value in other.peaks.items():
            merged.peak(name, value)
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "counters": dict(sorted(self.counters.items())),
            "seconds": {k: round(v, 6) for k, v in sorted(self.seconds.items())},
            "peaks": dict(sorted(self.peaks.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        return cls(Counter(data.get("counters", {})), dict(data.get("seconds", {})), dict(data.get("peaks", {})))
