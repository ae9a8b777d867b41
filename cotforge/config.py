"""Pydantic models for pipeline configs (pipelines/*.yaml) and run settings.

One model per config section; unknown keys are errors so that a typo in a YAML file or a `--set`
path is refused before anything runs instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SourceKind = Literal["mosi", "mosei", "sims", "simsv2", "manifest"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    """Which dataset to read and how."""

    dataset: SourceKind = Field(description="mosi | mosei | sims | simsv2 | manifest")
    root: Path = Field(description="dataset folder (holds label.csv and Raw/), or the manifest file")
    label_file: str | None = Field(
        default=None, description="label file inside root; default label.csv (meta.csv for simsv2)"
    )
    splits: list[Literal["train", "valid", "test"]] = Field(
        default_factory=lambda: ["train", "valid", "test"], description="splits to read"
    )
    limit: int | None = Field(default=None, ge=1, description="read at most this many rows")
    encoding: str = Field(default="utf-8-sig", description="text encoding of the label file")
    segments: Literal["auto", "off", "transcripts"] = Field(
        default="auto",
        description=(
            "MOSEI full videos: 'auto' uses start/end columns of the label file when present; "
            "'transcripts' takes start/end from CMU's Raw/Transcript/Segmented/Combined/<video>.txt"
        ),
    )
    full_video_dir: str = Field(
        default="Raw/Videos/Full/Combined", description="where full videos lie when clips are time ranges"
    )
    name: str | None = Field(default=None, description="dataset name in keys for manifests (default: file stem)")
    label_range: tuple[float, float] | None = Field(
        default=None, description="allowed gold label range; default by dataset ([-3, 3] or [-1, 1])"
    )
    language: str | None = Field(default=None, description="language of the transcripts; default by dataset")


class MediaConfig(Section):
    """How a clip is decoded into a bundle."""

    fps: float = Field(default=2.0, gt=0, le=60, description="frames sampled per second")
    max_frames: int = Field(default=32, ge=1, description="at most this many frames per clip")
    size: int = Field(default=448, ge=16, le=4096, description="long side of a sampled frame, pixels")
    sample_rate: int = Field(default=16000, ge=8000, le=48000, description="audio sample rate, Hz (mono)")
    jpeg_quality: int = Field(default=90, ge=10, le=100)
    skip_nonref: bool = Field(
        default=True,
        description="skip decoding non-reference frames (B-frames); the nearest decoded frame is taken",
    )
    require_audio: bool = Field(default=True, description="a clip without an audio stream fails")
    require_video: bool = Field(default=True, description="a clip without a video stream fails")

    def fingerprint(self) -> str:
        """Hash of the settings that change a bundle's content (for resume checks and cache keys)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


class ExecConfig(Section):
    """How the work is spread over this machine."""

    workers: int = Field(default=2, ge=1, le=256, description="decoding worker processes")
    queue_size: int = Field(default=0, ge=0, description="bundles in flight; 0 = 2 x workers")
    bundle_part_rows: int = Field(default=256, ge=1, description="clips per bundles/part-*.parquet")


class BundleConfig(Section):
    """Everything the `bundle` stage needs."""

    source: SourceConfig
    media: MediaConfig = Field(default_factory=MediaConfig)
    exec: ExecConfig = Field(default_factory=ExecConfig)

    @model_validator(mode="after")
    def _check_root(self) -> BundleConfig:
        if not self.source.root.exists():
            raise ValueError(f"source.root {self.source.root} does not exist")
        return self


def format_validation_error(err: ValidationError, origin: str) -> str:
    """A message that names the file (or option), the field and what is allowed."""
    lines = [f"invalid config in {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` assignments (value parsed as YAML) to a nested config dict.

    Paths are checked against the models when the result is validated, so a bad path or type is
    refused before anything runs.
    """
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set {assignment!r}: expected key.path=value, e.g. --set media.fps=1")
        node = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {assignment!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data
