"""Pydantic models for pipeline configs (pipelines/*.yaml) and run settings.

One model per config section; unknown keys are errors so that a typo in a YAML file or a `--set`
path is refused before anything runs instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from cotforge.types import DATASETS, Scale, scale_for_range

SourceKind = Literal["mosi", "mosei", "sims", "simsv2", "manifest"]
"""The registry's datasets (types.DATASETS) plus a generic manifest; a test keeps the two in step."""


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
    full_video_dir: str | None = Field(
        default=None, description="where full videos lie when clips are time ranges (default Raw/Videos/Full/Combined)"
    )
    name: str | None = Field(default=None, description="dataset name in keys for manifests (default: file stem)")
    label_range: tuple[float, float] | None = Field(
        default=None, description="allowed gold label range; default by dataset ([-3, 3] or [-1, 1])"
    )
    language: str | None = Field(default=None, description="language of the transcripts; default by dataset")
    allow_outside_root: bool = Field(
        default=False,
        description="let label rows point at media outside the dataset root (symlinks resolved); off, such a row fails",
    )
    scale_like: Literal["mosi", "sims"] | None = Field(
        default=None,
        description="manifest corpora: whose MMSA polarity buckets and metrics to use (default: mosi for a range "
        "wider than [-1, 1], else sims)",
    )

    @model_validator(mode="after")
    def _scale_is_valid(self) -> SourceConfig:
        self.scale()  # a label range with low >= high, or a language without a range, is refused here
        return self

    def scale(self) -> Scale:
        """The run's one label scale: range, polarity buckets, language, metric set."""
        spec = DATASETS.get(self.dataset)
        if spec is not None and self.label_range is None and self.language is None:
            return spec.scale
        base = spec.scale if spec is not None else None
        low, high = self.label_range or ((base.low, base.high) if base else (-3.0, 3.0))
        language = self.language or (base.language if base else "en")
        return scale_for_range(low, high, language, self.scale_like or (base.metrics if base else None))


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
    """How the work is spread: over this machine, a Ray cluster, or the tasks of a batch scheduler (shards)."""

    workers: int = Field(
        default=2, ge=1, le=256,
        description="decoding worker processes (ray without ray_address: the CPUs of the private Ray instance)",
    )
    queue_size: int = Field(default=0, ge=0, description="bundles in flight; 0 = 2 x workers")
    bundle_part_rows: int = Field(default=256, ge=1, description="clips per bundles/part-*.parquet")
    executor: Literal["local", "ray"] = Field(
        default="local",
        description="where decoding and media muxing run: local (processes on this machine) or ray (tasks on a Ray "
        "cluster; pip install 'cotforge[ray]'); ledger, cache, teacher client and shards stay with this process",
    )
    ray_address: str | None = Field(
        default=None,
        description="the Ray cluster to join (HEAD:6379, or auto); unset: a private Ray instance on this machine, "
        "on 127.0.0.1 only",
    )
    shard: str | None = Field(
        default=None,
        description="i/N: this run takes only shard i of N (0 <= i < N, split by a hash of the clip key), as one task "
        "of a batch-scheduler array; each shard is an ordinary run folder, joined by `cotforge merge`",
    )

    @field_validator("shard")
    @classmethod
    def _shard_is_i_of_n(cls, value: str | None) -> str | None:
        if value is None:
            return None
        rank, sep, world = str(value).partition("/")
        if not (sep and rank.strip().isdigit() and world.strip().isdigit()):
            raise ValueError(f"exec.shard {value!r}: expected i/N, e.g. 0/3")
        i, n = int(rank), int(world)
        if n < 1:
            raise ValueError(f"exec.shard {value!r}: N, the number of shards, is at least 1")
        if i >= n:
            raise ValueError(f"exec.shard {value!r}: i counts from 0 to N-1 (0/{n} ... {n - 1}/{n})")
        return f"{i}/{n}"

    def shard_index(self) -> tuple[int, int]:
        """(rank, world_size) of this run's shard; (0, 1) for a whole run."""
        return shard_index(self.shard)


def shard_index(shard: str | None) -> tuple[int, int]:
    """(rank, world_size) of a checked `i/N` shard (`ExecConfig.shard`); (0, 1) for a whole run."""
    rank, world = (shard or "0/1").split("/")
    return int(rank), int(world)


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


class TeacherConfig(Section):
    """How the teacher is asked. The API key comes from COTFORGE_TEACHER_API_KEY or here, and is never written out."""

    url: str = Field(default="http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL (vLLM: http://host:8000/v1)")
    model: str = Field(default="Qwen/Qwen3-Omni-30B-A3B-Instruct", description="served model name")
    api_key: SecretStr | None = Field(default=None, description="bearer token; prefer env COTFORGE_TEACHER_API_KEY")
    backend: Literal["openai", "vllm-offline"] = Field(default="openai", description="HTTP client or in-process vLLM engine")
    endpoints: list[str] = Field(
        default_factory=list,
        description="several OpenAI-compatible base URLs serving the same model (replicas); requests go to the least busy; "
        "empty: teacher.url alone",
    )
    concurrency: int = Field(
        default=64, ge=1, le=4096,
        description="requests in flight per endpoint; about 1-2 x the server's max_num_seqs keeps its batch full",
    )
    timeout_s: float = Field(default=300.0, gt=0, description="per-request timeout, seconds")
    max_retries: int = Field(default=6, ge=0, le=50, description="retries on 429/5xx/timeouts/connection errors")
    backoff_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles each retry, with jitter, capped at 30 s")
    breaker_failures: int = Field(
        default=5, ge=1, description="server-side failures in a row (connection, 5xx, timeout) across requests that mark an endpoint down"
    )
    outage_grace_s: float = Field(
        default=300.0, ge=0, description="how long to wait for a down endpoint; past it the endpoint is taken out, or the run stops (resumable)"
    )
    stall_s: float = Field(
        default=120.0, gt=0, description="requests in flight and no answer at all for this long: probe the server (a hung engine)"
    )
    max_requests: int | None = Field(default=None, ge=1, description="run-level budget: stop (resumable) after this many requests")
    max_tokens_total: int | None = Field(
        default=None, ge=1, description="run-level budget: stop (resumable) after this many prompt + completion tokens"
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=1024, ge=16, description="completion token budget")
    seed: int | None = Field(default=1234, description="sampling seed sent with each request (None: not sent)")
    n: int = Field(default=1, ge=1, le=16, description="samples per request (OpenAI `n`); reask.samples counts samples per clip")
    structured: Literal["response_format", "structured_outputs", "none"] = Field(
        default="response_format",
        description="how the DC JSON schema is enforced: OpenAI json_schema, vLLM structured_outputs, or not at all",
    )
    media_mode: Literal["video_audio", "separate"] = Field(
        default="video_audio",
        description="one MP4 with audio + use_audio_in_video, or (older servers) video and a separate WAV part",
    )
    video_codec: Literal["h264", "mjpeg"] = Field(
        default="mjpeg",
        description="the MP4 sent to the teacher: mjpeg (the bundle's JPEGs copied, float PCM audio: a few ms a clip) or "
        "h264 (H.264/AAC: ~10x the CPU, a second lossy generation); unset, a run keeps the codec it was asked with",
    )
    mm_kwargs: Literal["request", "server"] = Field(
        default="request",
        description="send mm_processor_kwargs/media_io_kwargs per request (server needs --trust-request-mm-kwargs) "
        "or rely on the server's --mm-processor-kwargs/--media-io-kwargs",
    )
    media_dir: Path | None = Field(
        default=None,
        description="write request MP4s here and send file:// URLs instead of base64 (a folder the server also "
        "sees, inside its --allowed-local-media-path)",
    )
    splits: list[Literal["train", "valid", "test"]] = Field(
        default_factory=lambda: ["train", "valid"],
        description="splits the teacher writes chains for; test is held out for evaluation (RUN/eval/test) unless listed",
    )
    prompt_dir: Path | None = Field(
        default=None,
        description="a folder of your own prompt templates (same names as prompts/: system.en.j2, teacher_dc.en.j2, ...) "
        "used in front of the packaged ones; their content goes into prompt_version and the cache keys",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="passed to the server's chat template, e.g. {enable_thinking: false} for a thinking-mode teacher",
    )
    simulated: bool | None = Field(
        default=None,
        description="the teacher is `cotforge teacher-sim` (it sends the gold label in X-Cotforge-* headers); "
        "default: detected from the server's /v1/models (owned_by cotforge-teacher-sim)",
    )
    max_model_len: int | None = Field(
        default=None, ge=1,
        description="the server's context length; clips whose prompt + max_tokens exceed it fail before any request "
        "(default: read from the server's /v1/models at preflight; plan uses this value)",
    )
    media_workers: int = Field(default=2, ge=1, le=256, description="processes that mux request media")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "samples" in data:
            raise ValueError(
                "teacher.samples was renamed teacher.n (samples per request, OpenAI n); reask.samples counts samples per clip"
            )
        return data

    @field_validator("prompt_dir")
    @classmethod
    def _prompt_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"teacher.prompt_dir {value} is not a folder")
        return value

    def resolved_api_key(self) -> str:
        import os

        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get("COTFORGE_TEACHER_API_KEY", "EMPTY")


class ValidateSection(Section):
    """Overrides of the validator's defaults for the run's scale (validate.ValidateConfig.for_scale); None keeps the default.

    The polarity buckets and the score range are not here: they are the scale's (source section), so
    prompt, validator, shards, rewards and metrics share them.
    """

    tolerance: float | None = Field(default=None, ge=0, description="largest accepted |score - gold| (MOSI 1.0, SIMS 0.4)")
    min_chars: int | None = Field(default=None, ge=0, description="fewest characters of rationale")
    max_chars: int | None = Field(default=None, ge=1, description="most characters of rationale")
    check_language: bool | None = Field(default=None, description="require the dataset's language (Chinese for SIMS)")

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ReaskConfig(Section):
    """What happens when no sample of a clip passes validation."""

    samples: int = Field(default=3, ge=1, le=64, description="samples drawn per clip before the hint (teacher.n per request)")
    hint: bool = Field(default=True, description="one last attempt with the gold polarity (never the score) in the prompt")
    keep: Literal["best", "all"] = Field(default="best", description="keep the best passing sample, or every passing one")
    max_requests: int | None = Field(
        default=None, ge=1,
        description="hard cap on paid requests per clip, whatever happens (default: the samples' requests + the hint + 2)",
    )

    def request_cap(self, per_request: int) -> int:
        return self.max_requests or math.ceil(self.samples / per_request) + int(self.hint) + 2


class ExportConfig(Section):
    """How accepted chains are written as Parquet shards."""

    shard_mb: float = Field(default=256.0, gt=0, description="target shard size, MB")
    row_group_rows: int = Field(default=64, ge=1, description="rows per Parquet row group (streaming reads)")
    media: Literal["inline", "path"] = Field(default="inline", description="audio/frames as bytes in the shard, or a path to the source clip")
    rejected: bool = Field(default=False, description="also write rejected chains to shards-rejected/")
    eval_splits: list[Literal["train", "valid", "test"]] = Field(
        default_factory=lambda: ["valid", "test"],
        description="splits written unfiltered to RUN/eval/<split>/ (every bundled clip, gold labels, no teacher output)",
    )


class PipelineConfig(Section):
    """A whole pipeline (pipelines/*.yaml): source, media, teacher, validation, re-asking, export."""

    name: str = Field(default="cotforge", description="pipeline name, for reports")
    run: Path | None = Field(default=None, description="run directory (default: runs/<name>)")
    source: SourceConfig
    media: MediaConfig = Field(default_factory=MediaConfig)
    exec: ExecConfig = Field(default_factory=ExecConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    reask: ReaskConfig = Field(default_factory=ReaskConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def bundle_config(self) -> BundleConfig:
        return BundleConfig(source=self.source, media=self.media, exec=self.exec)

    def public_dump(self) -> dict[str, Any]:
        """The resolved config as written to RUN/config.yaml: secrets removed."""
        data = self.model_dump(mode="json", by_alias=True)
        data["teacher"].pop("api_key", None)
        return data

    def teacher_identity(self) -> dict[str, Any]:
        """The teacher settings that decide what a request costs and says: changing them means paying again."""
        teacher = self.public_dump()["teacher"]
        return {k: teacher[k] for k in TEACHER_IDENTITY}

    def for_run(self, recorded: dict[str, Any] | None) -> PipelineConfig:
        """This config for a run asked before with the `recorded` teacher settings: a setting whose default
        changed keeps, unless this config sets it, the value the run was asked with (a copy; self is unchanged).

        `teacher.video_codec` went from h264 to mjpeg: without this, every run asked before would be
        refused on resume (or, with --force, asked again) for a setting its user never chose.
        """
        codec = (recorded or {}).get("video_codec")
        if codec not in ("h264", "mjpeg") or "video_codec" in self.teacher.model_fields_set or codec == self.teacher.video_codec:
            return self
        teacher = self.teacher.model_copy()
        teacher.video_codec = codec
        return self.model_copy(update={"teacher": teacher})

    def judge_fingerprint(self) -> str:
        """Hash of everything a clip's judgement depends on besides its labels: the teacher's identity,
        re-asking, validation and the scale. A clip judged under another one is judged again, from the cache."""
        data = self.public_dump()
        relevant = {"teacher": self.teacher_identity(), "reask": data["reask"], "validate": data["validate"],
                    "scale": self.source.scale().as_dict()}
        return _digest(relevant)

    def fingerprint(self) -> str:
        """Hash of what decides the corpus's content (not how fast it is made): recorded in the manifest."""
        data = self.public_dump()
        relevant = {
            "source": data["source"], "media": data["media"], "validate": data["validate"], "reask": data["reask"],
            "teacher": {**self.teacher_identity(), "splits": data["teacher"]["splits"]},
            "export": {k: data["export"][k] for k in ("media", "rejected", "eval_splits")},
        }
        return _digest(relevant)


TEACHER_IDENTITY = (
    "model", "temperature", "top_p", "max_tokens", "seed", "n", "structured", "media_mode", "video_codec", "prompt_dir",
    "chat_template_kwargs",
)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_pipeline(path: Path, assignments: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply `--set` overrides, validate; errors name the file and the field."""
    try:
        data = load_yaml(path)
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the pipeline ({err})") from None
    root = data.get("source", {}).get("root")
    if isinstance(root, str) and not Path(root).is_absolute() and not Path(root).exists():
        candidate = (path.parent / root).resolve()
        if candidate.exists():
            data["source"]["root"] = str(candidate)
    data = apply_overrides(data, assignments or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, str(path) + (" (with --set)" if assignments else ""))) from None
