"""What the teacher simulator answers: a DC rationale drawn around the clip's gold label, or a fault.

Every draw comes from a generator seeded by text (the simulator's seed, the request's digest and
what the draw is for), so the same request gives the same answer in any process, and a corpus
made against the simulator can be made again. The noise model is deliberately simple: a score
near gold, a polarity read off the score with the dataset's neutral band, some answers flipped,
and "hard" clips that only a hinted re-ask gets right; enough to exercise validation and re-asks.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cotforge.types import MOSI_SCALE, Polarity, Scale, scale_for_range
from cotforge.sim.config import SimConfig
from cotforge.sim.media import text_tokens
from cotforge.sim.requests import CheckedRequest, invalid

STEP = 0.1
"""Scores have one decimal, as the teacher prompt asks."""
KEY_HEADER, GOLD_HEADER, RANGE_HEADER = "x-cotforge-key", "x-cotforge-gold", "x-cotforge-range"
LANGUAGE_HEADER, HINT_HEADER = "x-cotforge-language", "x-cotforge-hint"
CLIP_HEADERS = (KEY_HEADER, GOLD_HEADER, RANGE_HEADER, LANGUAGE_HEADER, HINT_HEADER)
"""Headers cotforge sends only to simulators; they are part of a request's identity."""


class Fault(StrEnum):
    RATE_LIMIT = "429"
    SERVER_ERROR = "500"
    RESET = "reset"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"


_FAULT_RATES = (
    (Fault.RATE_LIMIT, "rate_429"),
    (Fault.SERVER_ERROR, "rate_500"),
    (Fault.RESET, "rate_reset"),
    (Fault.TIMEOUT, "rate_timeout"),
    (Fault.MALFORMED, "rate_malformed"),
    (Fault.TRUNCATED, "rate_truncated"),
)


def seeded(*parts: object) -> random.Random:
    """A generator seeded by the parts' text: string seeds go through SHA-512, so draws repeat across processes."""
    return random.Random(":".join(str(part) for part in parts))


def draw_fault(cfg: SimConfig, digest: str, attempt: int) -> Fault | None:
    """At most one fault per request, from one uniform draw against the cumulative rates.

    The attempt number is part of the seed so that a client's retry of the same body may succeed.
    """
    draw = seeded("fault", cfg.seed, digest, attempt).random()
    edge = 0.0
    for fault, rate in _FAULT_RATES:
        edge += getattr(cfg, rate)
        if draw < edge:
            return fault
    return None


@dataclass(frozen=True, slots=True)
class SimScale:
    """The clip's label scale (cotforge's own, so gold polarity is MMSA's bucket) on a 0.1 grid."""

    scale: Scale = MOSI_SCALE

    @property
    def half(self) -> float:
        return (self.scale.high - self.scale.low) / 2

    def polarity(self, score: float) -> Polarity:
        return self.scale.polarity(score)

    def on_grid(self, score: float) -> float:
        """Clipped into the range and rounded to one decimal (never -0.0)."""
        return round(min(self.scale.high, max(self.scale.low, score)), 1) + 0.0

    def with_polarity(self, polarity: Polarity, score: float) -> float:
        """The grid score nearest to `score` that has `polarity` (ties: the smaller magnitude)."""
        if self.polarity(score) is polarity:
            return score
        steps = round((self.scale.high - self.scale.low) / STEP)
        grid = (round(self.scale.low + k * STEP, 1) + 0.0 for k in range(steps + 1))
        return min((g for g in grid if self.polarity(g) is polarity), key=lambda g: (abs(g - score), abs(g)))


@dataclass(frozen=True, slots=True)
class Clip:
    """What cotforge tells a simulator about the clip in the `X-Cotforge-*` headers."""

    key: str | None
    gold: float | None
    scale: SimScale
    language: str
    hint: Polarity | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Clip:
        return cls(
            key=headers.get(KEY_HEADER),
            gold=_gold(headers.get(GOLD_HEADER)),
            scale=_scale(headers.get(RANGE_HEADER)),
            language=_language(headers.get(LANGUAGE_HEADER)),
            hint=_hint(headers.get(HINT_HEADER)),
        )


def _gold(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        gold = float(value)
    except ValueError:
        gold = math.nan
    if not math.isfinite(gold):
        raise invalid(f"X-Cotforge-Gold must be a finite number, not {value!r}")
    return gold


def _scale(value: str | None) -> SimScale:
    if value is None:
        return SimScale()
    try:
        low, high = (float(bound) for bound in value.split(","))
    except ValueError:
        low = high = math.nan
    if not low < 0 < high:
        raise invalid(f"X-Cotforge-Range must be 'low,high' with low < 0 < high, e.g. '-3,3', not {value!r}")
    return SimScale(scale_for_range(low, high, "en"))


def _language(value: str | None) -> str:
    if value not in (None, "en", "zh"):
        raise invalid(f"X-Cotforge-Language must be en or zh, not {value!r}")
    return value or "en"


def _hint(value: str | None) -> Polarity | None:
    if value is None:
        return None
    if value not in tuple(Polarity):
        raise invalid(f"X-Cotforge-Hint must be one of {', '.join(Polarity)}, not {value!r}")
    return Polarity(value)


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
            return scale.on_grid(rng.gauss(0, scale.half / 10))
        sigma = self.noise * scale.half / 3
        if clip.hint is not None:
            return scale.on_grid(scale.with_polarity(clip.hint, scale.on_grid(clip.gold + rng.gauss(0, sigma / 2))))
        score = scale.on_grid(clip.gold + rng.gauss(0, sigma))
        if self.is_hard(clip.key) or rng.random() < self.flip_rate:
            return scale.on_grid(scale.with_polarity(_wrong(scale.polarity(clip.gold), rng), -score))
        return score


def _wrong(gold: Polarity, rng: random.Random) -> Polarity:
    """The opposite sign; for a neutral clip, a lean to either side."""
    if gold is Polarity.NEUTRAL:
        return rng.choice((Polarity.POSITIVE, Polarity.NEGATIVE))
    return Polarity.NEGATIVE if gold is Polarity.POSITIVE else Polarity.POSITIVE


@dataclass(frozen=True, slots=True)
class Phrasebook:
    """Template sentences of one language; none of them holds a number, so no answer spells out the gold label."""

    text: Mapping[Polarity, tuple[str, ...]]
    audio: Mapping[Polarity, tuple[str, ...]]
    visual: Mapping[Polarity, tuple[str, ...]]
    summary: Mapping[Polarity, tuple[str, ...]]
    intensity: tuple[tuple[str, ...], ...]
    """Calibration sentences for neutral, mild, clear and strong answers; `{direction}` is filled in."""
    direction: Mapping[Polarity, str]
    quoted: str
    unquoted: str
    quote_by_words: bool
    """Whether excerpts of the transcript are counted in words (English) or characters (Chinese)."""
    quote_limit: int
    lead: tuple[str, ...]
    refusal: tuple[str, ...]

    def quote(self, transcript: str) -> str:
        """The start of the transcript, quoted, so that the text cue visibly refers to this clip."""
        if not transcript:
            return self.unquoted
        units = transcript.split() if self.quote_by_words else list(transcript)
        joiner = " " if self.quote_by_words else ""
        excerpt = joiner.join(units[: self.quote_limit]) + ("…" if len(units) > self.quote_limit else "")
        return self.quoted.format(excerpt)


P, N, U = Polarity.POSITIVE, Polarity.NEGATIVE, Polarity.NEUTRAL

ENGLISH = Phrasebook(
    text={
        P: ("The wording of {quote} is approving: the speaker judges the subject favourably.",
            "In {quote} the speaker uses praising, upbeat words without hedging or sarcasm."),
        N: ("The wording of {quote} is critical: the speaker judges the subject unfavourably.",
            "In {quote} the speaker uses complaining, disappointed words with no sign of irony."),
        U: ("The wording of {quote} is mostly factual, with few evaluative words.",
            "In {quote} the speaker describes rather than judges; praise and criticism are both absent."),
    },
    audio={
        P: ("The voice is lively, pitch rises at the ends of phrases and the pace is brisk.",
            "An energetic, warm delivery with short pauses and some emphasis on the key words."),
        N: ("The tone is flat and low, the pace slows down and there are audible sighs.",
            "Pitch and loudness drop, with hesitant pauses between phrases."),
        U: ("The voice stays even in pitch and loudness at a steady pace.",
            "A calm, monotone delivery without marked emphasis."),
    },
    visual={
        P: ("The speaker smiles, the brows are relaxed and the head nods along.",
            "An open posture, bright eyes and a visible smile while speaking."),
        N: ("The mouth corners turn down, the brows draw together and the gaze drops.",
            "A frown and a tense jaw, with the head shaking slightly."),
        U: ("A relaxed, mostly expressionless face with a steady gaze at the camera.",
            "Little facial movement and few gestures; the posture stays neutral."),
    },
    summary={
        P: ("Text, voice and face all point the same way, so the overall sentiment is positive.",
            "The favourable words are backed by an upbeat voice and a smile; the clip is positive overall."),
        N: ("The critical words are matched by a low voice and a frown, so the overall sentiment is negative.",
            "All three modalities convey dissatisfaction; the clip is negative overall."),
        U: ("No modality leans clearly either way, so the overall sentiment is neutral.",
            "The cues are weak and balanced; the clip is neutral overall."),
    },
    intensity=(
        ("Positive and negative signals are both faint and roughly cancel out, so the score stays close to zero.",
         "There is hardly any emotional colouring in the words, voice or face, so the intensity is minimal."),
        ("The {direction} lean is present but restrained: the words carry it while voice and face stay calm, "
         "so the intensity is mild.",),
        ("The {direction} sentiment is clear in the words and supported by the voice without being extreme, "
         "so the intensity is moderate.",),
        ("The {direction} sentiment is emphatic in every modality, with strong wording and marked vocal and "
         "facial expression, so the intensity is high.",),
    ),
    direction={P: "positive", N: "negative", U: "neutral"},
    quoted='the line "{}"',
    unquoted="the transcript",
    quote_by_words=True,
    quote_limit=8,
    lead=("Here is my analysis of the clip.",
          "Based on the video, the audio and the transcript, my judgement is as follows."),
    refusal=("I'm sorry, but the face is barely visible and the audio is muffled, so I cannot give a reliable "
             "sentiment judgement for this clip.",),
)

CHINESE = Phrasebook(
    text={
        P: ("{quote}中的用词带有明显的肯定和赞赏，说话人对对象评价正面。",
            "{quote}使用了积极、轻快的措辞，没有否定或反讽。"),
        N: ("{quote}中的用词带有批评和失望，说话人对对象评价负面。",
            "{quote}里出现了抱怨性的表达，语气中透着不满。"),
        U: ("{quote}以陈述事实为主，几乎没有评价性词语。",
            "{quote}只是描述情况，既无赞扬也无批评。"),
    },
    audio={
        P: ("声音轻快有力，句尾音调上扬，语速较快。", "语气温和而有活力，停顿短促。"),
        N: ("语调低沉平淡，语速放慢，能听到叹气。", "音高和音量都偏低，句子之间有犹豫的停顿。"),
        U: ("音高和音量保持平稳，语速均匀。", "语气平静单调，没有明显的重音。"),
    },
    visual={
        P: ("说话人面带微笑，眉头舒展，频频点头。", "姿态放松，眼神明亮，说话时笑容明显。"),
        N: ("嘴角下垂，眉头紧锁，目光低垂。", "皱着眉头，下颌紧绷，轻轻摇头。"),
        U: ("面部放松，基本没有表情，目光平视镜头。", "面部动作和手势都很少，姿态保持中立。"),
    },
    summary={
        P: ("文本、声音和表情方向一致，整体情感为积极。", "肯定的措辞得到轻快语气和笑容的支持，整体偏积极。"),
        N: ("批评性的措辞与低沉的声音和皱眉相互印证，整体情感为消极。", "三个模态都传达出不满，整体偏消极。"),
        U: ("各模态都没有明显的倾向，整体情感为中性。", "线索微弱且相互抵消，整体为中性。"),
    },
    intensity=(
        ("积极和消极的信号都很微弱，大致相互抵消，因此分数接近零。", "文字、声音和表情几乎没有情绪色彩，强度很低。"),
        ("{direction}倾向存在但较为克制：主要体现在措辞上，声音和表情比较平静，因此强度较弱。",),
        ("{direction}情感在措辞中很明确，并得到声音的支持，但并不极端，因此强度中等。",),
        ("{direction}情感在所有模态中都很强烈，措辞激烈，声音和表情变化明显，因此强度很高。",),
    ),
    direction={P: "积极", N: "消极", U: "中性"},
    quoted="台词“{}”",
    unquoted="台词",
    quote_by_words=False,
    quote_limit=12,
    lead=("以下是我的分析。", "根据视频、音频和台词，我的判断如下。"),
    refusal=("抱歉，这段视频的画面和声音都不够清晰，我无法给出可靠的情感判断。",),
)

PHRASEBOOKS = {"en": ENGLISH, "zh": CHINESE}


def rationale(clip: Clip, score: float, transcript: str, rng: random.Random) -> dict[str, Any]:
    """A DC rationale in the schema's property order (reasoning first, verdict last)."""
    book = PHRASEBOOKS[clip.language]
    polarity = clip.scale.polarity(score)
    return {
        "discrimination": {
            "cues": {
                "text": rng.choice(book.text[polarity]).format(quote=book.quote(transcript)),
                "audio": rng.choice(book.audio[polarity]),
                "visual": rng.choice(book.visual[polarity]),
            },
            "summary": rng.choice(book.summary[polarity]),
            "polarity": polarity.value,
        },
        "calibration": {
            "reasoning": rng.choice(book.intensity[_level(polarity, score, clip.scale)]).format(
                direction=book.direction[polarity]
            ),
            "score": score,
        },
    }


def _level(polarity: Polarity, score: float, scale: SimScale) -> int:
    """0 for neutral answers, then 1-3 for mild, clear and strong ones by their share of the range."""
    if polarity is Polarity.NEUTRAL:
        return 0
    share = abs(score) / scale.half
    return 1 if share < 0.25 else 2 if share < 0.6 else 3


@dataclass(frozen=True, slots=True)
class Choice:
    content: str
    finish_reason: str
    tokens: int


def answer(noise: NoiseModel, clip: Clip, request: CheckedRequest, budget: int, fault: Fault | None, salt: str) -> list[Choice]:
    """The `n` choices of a request; each is its own draw, so they differ as samples of a real model do."""
    choices = []
    for index in range(request.n):
        rng = seeded("answer", noise.seed, salt, index)
        choices.append(_fit(_content(noise, clip, request, fault, rng), budget, fault is Fault.TRUNCATED))
    return choices


def _content(noise: NoiseModel, clip: Clip, request: CheckedRequest, fault: Fault | None, rng: random.Random) -> str:
    book = PHRASEBOOKS[clip.language]
    if fault is Fault.MALFORMED:
        return rng.choice(book.refusal)
    body = rationale(clip, noise.score(clip, rng), request.transcript, rng)
    if request.structured:
        return json.dumps(body, ensure_ascii=False)
    # Without a grammar the model tends to talk around its JSON; lenient parsers must cope.
    return f"{rng.choice(book.lead)}\n\n```json\n{json.dumps(body, ensure_ascii=False, indent=2)}\n```"


def _fit(content: str, budget: int, truncate: bool) -> Choice:
    """Cut the content at the token budget (or halfway, for the truncation fault), as a length stop does."""
    tokens = text_tokens(content)
    limit = tokens // 2 if truncate else budget
    if tokens <= limit:
        return Choice(content, "stop", tokens)
    cut = _prefix_within(content, limit)
    return Choice(cut, "length", text_tokens(cut))


def _prefix_within(text: str, tokens: int) -> str:
    """The longest prefix of `text` that costs at most `tokens`, found by bisection (cost grows with length)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if text_tokens(text[:middle]) <= tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low]
