"""What the simulator reports: counters and gauges (`/sim/stats`, vLLM-named `/metrics`) and the request log."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

GAUGES = ("running", "waiting", "in_flight")


class Stats:
    """Gauges with their peaks, and counters."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        """Chat requests by outcome: the HTTP status, or `dropped` when the connection was closed unanswered."""
        self.faults: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @contextmanager
    def gauge(self, name: str) -> Iterator[None]:
        self.now[name] += 1
        self.peak[name] = max(self.peak[name], self.now[name])
        try:
            yield
        finally:
            self.now[name] -= 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "faults": dict(self.faults),
            **{name: self.now[name] for name in GAUGES},
            **{f"max_{name}": self.peak[name] for name in GAUGES},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def prometheus(self, model: str) -> str:
        """The Prometheus text of vLLM's own names, so dashboards and the README's advice work unchanged."""
        label = f'{{model_name="{model}"}}'
        rows = (
            ("vllm:num_requests_running", "gauge", "Requests in service (the model's running batch).", self.now["running"]),
            ("vllm:num_requests_waiting", "gauge", "Requests waiting for a free slot.", self.now["waiting"]),
            ("vllm:prompt_tokens_total", "counter", "Prompt tokens of answered requests.", self.prompt_tokens),
            ("vllm:generation_tokens_total", "counter", "Completion tokens of answered requests.", self.completion_tokens),
        )
        lines = []
        for name, kind, text, value in rows:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{label} {float(value)}"]
        return "\n".join(lines) + "\n"


class RequestLog:
    """The JSONL request log: one line per chat request, flushed at once so that tests can read it live."""

    def __init__(self, path: Path | None, bodies: bool) -> None:
        self.bodies = bodies
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
