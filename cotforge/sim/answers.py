"""What the teacher simulator answers: a DC rationale drawn around the clip's gold label, or a broken one.

The noise model is deliberately simple: a score near gold, a polarity read off the score with the
scale's own buckets (cotforge's `Scale`, MMSA's Acc-3), some answers flipped, and "hard" clips that
only a hinted re-ask gets right; enough to exercise validation and re-asks. The answer is built as
cotforge's own `dc.Rationale`, so its fields and their order are the DC schema's
(`schemas/dc_rationale.schema.json`: reasoning first, verdict last), never a copy of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from cotforge.dc import Calibration, Cues, Discrimination, Rationale
from cotforge.sim.config import Fault, SimConfig
from cotforge.sim.draws import seeded
from cotforge.sim.faults import with_control_chars, with_whitespace_tail
from cotforge.sim.phrases import PHRASEBOOKS
from cotforge.sim.requests import CheckedRequest, invalid
from cotforge.teacher.headers import GOLD_HEADER, HINT_HEADER, KEY_HEADER, LANGUAGE_HEADER, RANGE_HEADER
from cotforge.teacher.plan import estimate_text_tokens
from cotforge.types import MOSI_SCALE, Polarity, Scale, scale_for_range

STEP = 0.1
"""Scores have one decimal, as the teacher prompt asks."""


@dataclass(frozen=True, slots=True)
class Clip:
    """What cotforge tells a simulator about the clip in the `X-Cotforge-*` headers (`teacher.headers`)."""

    key: str | None
    gold: float | None
    scale: Scale
    language: str
    hint: Polarity | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Clip:
        """Read from lower-cased header names, as HTTP servers hand them over."""

        def get(name: str) -> str | None:
            return headers.get(name.lower())

        return cls(
            key=get(KEY_HEADER),
            gold=_gold(get(GOLD_HEADER)),
            scale=_scale(get(RANGE_HEADER)),
            language=_language(get(LANGUAGE_HEADER)),
            hint=_hint(get(HINT_HEADER)),
        )


def _gold(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        gold = float(value)
    except ValueError:
        gold = math.nan
    if not math.isfinite(gold):
        raise invalid(f"{GOLD_HEADER} must be a finite number, not {value!r}")
    return gold


def _scale(value: str | None) -> Scale:
    if value is None:
        return MOSI_SCALE
    try:
        low, high = (float(bound) for bound in value.split(","))
    except ValueError:
        low = high = math.nan
    if not low < 0 < high:
        raise invalid(f"{RANGE_HEADER} must be 'low,high' with low < 0 < high, e.g. '-3,3', not {value!r}")
    return scale_for_range(low, high, "en")


def _language(value: str | None) -> str:
    if value not in (None, *PHRASEBOOKS):
        raise invalid(f"{LANGUAGE_HEADER} must be one of {', '.join(PHRASEBOOKS)}, not {value!r}")
    return value or "en"


def _hint(value: str | None) -> Polarity | None:
    if value is None:
        return None
    if value not in tuple(Polarity):
        raise invalid(f"{HINT_HEADER} must be one of {', '.join(Polarity)}, not {value!r}")
    return Polarity(value)


def _half(scale: Scale) -> float:
    return (scale.high - scale.low) / 2


def _on_grid(scale: Scale, score: float) -> float:
    """Clipped into the range and rounded to one decimal (never -0.0)."""
    return round(min(scale.high, max(scale.low, score)), 1) + 0.0


def _with_polarity(scale: Scale, polarity: Polarity, score: float) -> float:
    """The grid score nearest to `score` that has `polarity` (ties: the smaller magnitude)."""
    if scale.polarity(score) is polarity:
        return score
    steps = round((scale.high - scale.low) / STEP)
    grid = (round(scale.low + k * STEP, 1) + 0.0 for k in range(steps + 1))
    return min((g for g in grid if scale.polarity(g) is polarity), key=lambda g: (abs(g - score), abs(g)))


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """How far answers stray from gold: score noise, flipped polarities, clips that are always wrong."""

    seed: int
    noise: float
    flip_rate: float
    hard_share: float

    @classmethod
    def from_config(cls, cfg: SimConfig) -> NoiseModel:
        return cls(cfg.seed, cfg.noise, cfg.flip_rate, cfg.hard_share)

    def is_hard(self, key: str | None) -> bool:
        """Hard clips are picked by key, not by request, so every re-ask of the clip is hard too."""
        return key is not None and seeded("hard", self.seed, key).random() < self.hard_share

    def score(self, clip: Clip, rng: random.Random) -> float:
        scale = clip.scale
        if clip.gold is None:
            return _on_grid(scale, rng.gauss(0, _half(scale) / 10))
        sigma = self.noise * _half(scale) / 3
        if clip.hint is not None:
            near = _on_grid(scale, clip.gold + rng.gauss(0, sigma / 2))
            return _on_grid(scale, _with_polarity(scale, clip.hint, near))
        score = _on_grid(scale, clip.gold + rng.gauss(0, sigma))
        if self.is_hard(clip.key) or rng.random() < self.flip_rate:
            return _on_grid(scale, _with_polarity(scale, _wrong(scale.polarity(clip.gold), rng), -score))
        return score


def _wrong(gold: Polarity, rng: random.Random) -> Polarity:
    """The opposite sign; for a neutral clip, a lean to either side."""
    if gold is Polarity.NEUTRAL:
        return rng.choice((Polarity.POSITIVE, Polarity.NEGATIVE))
    return Polarity.NEGATIVE if gold is Polarity.POSITIVE else Polarity.POSITIVE


def rationale(clip: Clip, score: float, transcript: str, rng: random.Random) -> Rationale:
    book = PHRASEBOOKS[clip.language]
    polarity = clip.scale.polarity(score)
    cues = Cues(
        text=rng.choice(book.text[polarity]).format(quote=book.quote(transcript)),
        audio=rng.choice(book.audio[polarity]),
        visual=rng.choice(book.visual[polarity]),
    )
    reasoning = rng.choice(book.intensity[_level(polarity, score, clip.scale)]).format(direction=book.direction[polarity])
    return Rationale(
        discrimination=Discrimination(cues=cues, summary=rng.choice(book.summary[polarity]), polarity=polarity),
        calibration=Calibration(reasoning=reasoning, score=score),
    )


def _level(polarity: Polarity, score: float, scale: Scale) -> int:
    """0 for neutral answers, then 1-3 for mild, clear and strong ones by their share of the range."""
    if polarity is Polarity.NEUTRAL:
        return 0
    share = abs(score) / _half(scale)
    return 1 if share < 0.25 else 2 if share < 0.6 else 3


@dataclass(frozen=True, slots=True)
class Choice:
    content: str
    finish_reason: str
    tokens: int


def answer(noise: NoiseModel, clip: Clip, request: CheckedRequest, budget: int, fault: Fault | None, salt: str) -> list[Choice]:
    """The `n` choices of a request; each is its own draw, so they differ as samples of a real model do."""
    if fault is Fault.EMPTY:
        return []
    return [
        _choice(noise, clip, request, budget, fault, seeded("answer", noise.seed, salt, index)) for index in range(request.n)
    ]


def _choice(
    noise: NoiseModel, clip: Clip, request: CheckedRequest, budget: int, fault: Fault | None, rng: random.Random
) -> Choice:
    book = PHRASEBOOKS[clip.language]
    if fault is Fault.MALFORMED:
        return _fit(rng.choice(book.refusal), budget)
    body = rationale(clip, noise.score(clip, rng), request.transcript, rng)
    content = body.model_dump_json()
    if not request.structured:
        # Without a grammar the model tends to talk around its JSON; lenient parsers must cope.
        content = f"{rng.choice(book.lead)}\n\n```json\n{body.model_dump_json(indent=2)}\n```"
    if fault is Fault.TRUNCATED:
        return _fit(content, min(budget, estimate_text_tokens(content) // 2))
    if fault is Fault.CONTROL_CHARS:
        content = with_control_chars(content, rng)
    elif fault is Fault.WHITESPACE:
        padded = with_whitespace_tail(content, estimate_text_tokens, budget, rng)
        return Choice(_prefix_within(padded, budget), "length", budget)
    return _fit(content, budget)


def _fit(content: str, budget: int) -> Choice:
    """Cut the content at the token budget, as a length stop does."""
    tokens = estimate_text_tokens(content)
    if tokens <= budget:
        return Choice(content, "stop", tokens)
    cut = _prefix_within(content, budget)
    return Choice(cut, "length", estimate_text_tokens(cut))


def _prefix_within(text: str, tokens: int) -> str:
    """The longest prefix of `text` that costs at most `tokens`, found by bisection (cost grows with length)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_text_tokens(text[:middle]) <= tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low]
