"""What goes wrong: one fault drawn per request, the broken answers real servers give, and the outage.

Per-request faults (`Fault`) are shares of requests drawn from one uniform number, so their rates
add up; the attempt number is part of the draw, so a client's retry of the same body may succeed.
The two content faults named after xgrammar are what a real vLLM with grammar-constrained JSON was
seen to produce (research notes, `vllm-omni-cpu.md`): raw control characters inside strings, which
JSON allows only escaped, and whitespace (which the JSON grammar allows anywhere between tokens)
repeated until `max_tokens`.

The outage is one event per server life, started by the N-th chat request; what the client sees in
each mode is what a real server in that state shows (see `OutageMode` and the server).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from cotforge.sim.config import Fault, OutageMode, SimConfig
from cotforge.sim.draws import seeded

CONTROL_CHARS = "\x07\x0b\x0c\x1c\t"
"""Seen raw inside strings of xgrammar-constrained answers from a real vLLM."""
WHITESPACE_RUNS = ("\n", " ", "\t", "\r\n")
CHARS_PER_WHITESPACE_TOKEN = 4
"""Whitespace runs cost about a token per 4 characters (`teacher.plan.estimate_text_tokens`' rule)."""


def draw_fault(cfg: SimConfig, digest: str, attempt: int) -> Fault | None:
    """At most one fault per request, from one uniform draw against the cumulative rates."""
    draw = seeded("fault", cfg.seed, digest, attempt).random()
    edge = 0.0
    for fault in Fault:
        edge += cfg.fault_rate(fault)
        if draw < edge:
            return fault
    return None


def _safe_string_positions(text: str) -> list[int]:
    """Indexes inside JSON string literals where a character can be inserted without splitting an escape."""
    positions: list[int] = []
    inside = escaped = False
    for index, char in enumerate(text):
        if not inside:
            inside = char == '"'
        elif escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            positions.append(index)
        elif char == '"':
            inside = False
            positions.append(index)
        else:
            positions.append(index)
    return positions


def with_control_chars(content: str, rng: random.Random) -> str:
    """The JSON with a few raw control characters inside its strings: still read by `json.loads(strict=False)`."""
    positions = _safe_string_positions(content)
    chosen = sorted(rng.sample(positions, min(len(positions), rng.randint(1, 4))), reverse=True)
    for index in chosen:
        content = content[:index] + rng.choice(CONTROL_CHARS) + content[index:]
    return content


def with_whitespace_tail(content: str, count_tokens: Callable[[str], int], budget: int, rng: random.Random) -> str:
    """The JSON cut after a structural character (where the grammar allows whitespace) and padded with
    whitespace to at least `budget` tokens: the model looped on whitespace until `max_tokens`."""
    strings = set(_safe_string_positions(content))
    cuts = [index + 1 for index, char in enumerate(content) if char in "{:," and index not in strings]
    head = content[: rng.choice(cuts)] if cuts else content
    missing = max(0, budget - count_tokens(head))
    return head + rng.choice(WHITESPACE_RUNS) * (missing * CHARS_PER_WHITESPACE_TOKEN)


class Outage:
    """The server's one outage: down from chat request `at` (1 = the first) for `seconds`, or for good."""

    def __init__(self, cfg: SimConfig) -> None:
        self.at = cfg.outage_at
        self.seconds = cfg.outage_s
        self.mode = cfg.outage_mode
        self.begun = asyncio.Event()
        self.ended = asyncio.Event()

    def due(self, request_number: int) -> bool:
        """Whether this request starts the outage (it is the first at or past `at`)."""
        return self.at is not None and request_number >= self.at and not self.begun.is_set()

    def pending(self) -> bool:
        """Configured and not begun: requests in flight must watch for it."""
        return self.at is not None and not self.begun.is_set()

    def active(self, *modes: OutageMode) -> bool:
        return self.begun.is_set() and not self.ended.is_set() and (not modes or self.mode in modes)

    def state(self) -> str | None:
        """None when no outage is configured, else pending, active or over."""
        if self.at is None:
            return None
        return "over" if self.ended.is_set() else "active" if self.begun.is_set() else "pending"

    def describe(self) -> str:
        length = "for good" if self.seconds is None else f"for {self.seconds:g} s"
        return f"outage ({self.mode}) from chat request {self.at} {length}"
