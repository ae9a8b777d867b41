"""Records that travel between pipeline stages.

They live in one module so that no stage has to import a later one (sources -> media -> teacher ->
dc -> validate -> store): each stage only depends on this file and on its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ClipState(StrEnum):
    """Where a clip stands in a run; every clip of the dataset ends in exactly one terminal state:
    accepted, rejected or failed, or held out (bundled for evaluation only: its split is not given
    to the teacher). A row deleted from the label file is `removed` and leaves the counts."""

    PENDING = "pending"
    BUNDLED = "bundled"
    ASKED = "asked"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    HELD_OUT = "held_out"
    REMOVED = "removed"


TERMINAL_STATES = (ClipState.ACCEPTED, ClipState.REJECTED, ClipState.FAILED, ClipState.HELD_OUT)


def reason_kind(reason: str | None) -> str:
    """Group reasons by their fixed head ("media file missing: /a/b.mp4" -> "media file missing").

    Every reason cotforge records is written as "<kind>: <details>" for this.
    """
    return (reason or "").split(":", 1)[0]


class Polarity(StrEnum):
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"


@dataclass(frozen=True, slots=True)
class Scale:
    """A corpus's label scale: its range, its polarity buckets, its language and its metric set.

    One object per run feeds the teacher prompt, the validator, the shards' gold polarity, the RL
    rewards and the metrics, so they cannot disagree. Polarity is MMSA's 3-class bucketing
    (thuiar/MMSA `utils/metricsTop.py`, the Acc-3 that papers report): MOSI/MOSEI round the label
    clipped to [-1, 1] half-to-even, so -0.5 <= y <= 0.5 is neutral; SIMS puts class k at
    edges[k] < y <= edges[k+1] with edges -0.1 and 0.1, so -0.1 is negative and 0.1 neutral.
    `neutral` gives the band's edges and `closed` whether each edge is inside the band.
    """

    low: float
    high: float
    neutral: tuple[float, float]
    closed: tuple[bool, bool]
    language: str
    metrics: str  # "mosi" (MOSI/MOSEI metric set) or "sims" (CH-SIMS metric set)

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"a label range must be (low, high) with low < high, got ({self.low:g}, {self.high:g})")
        if not self.low <= self.neutral[0] <= self.neutral[1] <= self.high:
            raise ValueError(f"the neutral band {self.neutral} must lie inside [{self.low:g}, {self.high:g}]")
        if self.metrics not in ("mosi", "sims"):
            raise ValueError(f"metrics must be 'mosi' or 'sims', not {self.metrics!r}")

    def polarity(self, y: float) -> Polarity:
        """The gold polarity of a label (or the polarity a score falls in), MMSA's Acc-3 bucket."""
        lo, hi = self.neutral
        above_lo = y >= lo if self.closed[0] else y > lo
        below_hi = y <= hi if self.closed[1] else y < hi
        if above_lo and below_hi:
            return Polarity.NEUTRAL
        return Polarity.POSITIVE if y > hi else Polarity.NEGATIVE

    def contains(self, y: float) -> bool:
        return self.low <= y <= self.high

    def as_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "neutral": list(self.neutral), "closed": list(self.closed),
                "language": self.language, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scale:
        return cls(float(data["low"]), float(data["high"]), tuple(data["neutral"]), tuple(data["closed"]),
                   data["language"], data["metrics"])


MOSI_SCALE = Scale(-3.0, 3.0, (-0.5, 0.5), (True, True), "en", "mosi")
SIMS_SCALE = Scale(-1.0, 1.0, (-0.1, 0.1), (False, True), "zh", "sims")


def scale_for_range(low: float, high: float, language: str, like: str | None = None) -> Scale:
    """The scale of a corpus outside the registry: MMSA's rule of the dataset family it resembles
    (`like`: "mosi" or "sims"; by default MOSI's for a range wider than [-1, 1]), with the neutral
    band stretched in proportion to the range."""
    family = like or ("mosi" if high - low > 2 else "sims")
    base = MOSI_SCALE if family == "mosi" else SIMS_SCALE
    factor = max(abs(low), abs(high)) / base.high
    return Scale(low, high, (base.neutral[0] * factor, base.neutral[1] * factor), base.closed, language, base.metrics)


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What cotforge knows about a dataset, in one place: its scale, where its labels and media lie."""

    name: str
    scale: Scale
    label_file: str = "label.csv"
    full_video_dir: str = "Raw/Videos/Full/Combined"
    """MOSEI as CMU ships it: full videos, clips are time ranges of them."""


DATASETS: dict[str, DatasetSpec] = {
    "mosi": DatasetSpec("mosi", MOSI_SCALE),
    "mosei": DatasetSpec("mosei", MOSI_SCALE),
    "sims": DatasetSpec("sims", SIMS_SCALE),
    "simsv2": DatasetSpec("simsv2", SIMS_SCALE, label_file="meta.csv"),
}
DATASET_NAMES = tuple(DATASETS)

@dataclass(slots=True)
class ClipRef:
    """One row of a dataset: where its media is and what its gold labels are.

    A source never raises for a bad row; it yields a ClipRef with `error` set so that the row is
    recorded as failed with its reason and the counts of a run add up to the rows read.
    """

    key: str
    dataset: str
    video_id: str
    clip_id: str
    split: str
    text: str
    label: float | None
    media_path: str
    language: str
    line: int = 0
    start: float | None = None
    end: float | None = None
    label_T: float | None = None
    label_A: float | None = None
    label_V: float | None = None
    annotation: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipRef:
        return cls(**{name: data.get(name) for name in cls.__slots__ if name in data})


@dataclass(slots=True)
class Bundle:
    """A decoded clip: what the teacher sees (FLAC audio, JPEG frames with timestamps, text)."""

    ref: ClipRef
    media_hash: str
    duration: float
    audio_flac: bytes
    audio_sample_rate: int
    audio_num_samples: int
    frames: list[bytes] = field(default_factory=list)
    frame_timestamps: list[float] = field(default_factory=list)
    frame_fps: float = 0.0
    frame_width: int = 0
    frame_height: int = 0
    video_width: int = 0
    video_height: int = 0
    video_fps: float = 0.0
    decode_seconds: float = 0.0

    @property
    def audio_duration(self) -> float:
        return self.audio_num_samples / self.audio_sample_rate if self.audio_sample_rate else 0.0


@dataclass(slots=True)
class ClipFailure:
    """A clip that could not pass a stage, with the reason that goes into the ledger."""

    ref: ClipRef
    reason: str
    stage: str
    seconds: float = 0.0


@dataclass(slots=True)
class TeacherResponse:
    """What a teacher backend answered to one request (every sample), with its usage; cached as is."""

    contents: list[str]
    finish_reasons: list[str]
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    cached: bool = False
    reasonings: list[str | None] = field(default_factory=list)
    """A thinking-mode server's `reasoning_content` per sample (empty when it sends none)."""
