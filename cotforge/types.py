"""Records that travel between pipeline stages.

They live in one module so that no stage has to import a later one (sources -> media -> teacher ->
dc -> validate -> store): each stage only depends on this file and on its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DATASETS = ("mosi", "mosei", "sims", "simsv2")


class ClipState(StrEnum):
    """Where a clip stands in a run; every clip ends in accepted, rejected or failed."""

    PENDING = "pending"
    BUNDLED = "bundled"
    ASKED = "asked"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL_STATES = (ClipState.ACCEPTED, ClipState.REJECTED, ClipState.FAILED)


@dataclass(frozen=True, slots=True)
class LabelScale:
    """The label range of a dataset and how its clips are spoken."""

    low: float
    high: float
    language: str


SCALES: dict[str, LabelScale] = {
    "mosi": LabelScale(-3.0, 3.0, "en"),
    "mosei": LabelScale(-3.0, 3.0, "en"),
    "sims": LabelScale(-1.0, 1.0, "zh"),
    "simsv2": LabelScale(-1.0, 1.0, "zh"),
}


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
