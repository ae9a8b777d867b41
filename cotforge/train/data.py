"""Shards and eval sets -> chat samples for the student, with media decoded per batch.

A corpus is opened as a memory-mapped `datasets.Dataset` of the encoded rows (FLAC bytes, JPEG
frames), so it never sits decoded in memory; `decode_media` turns one row's bytes into the arrays
the processor takes, and is called by the collator (SFT) or a dataset transform (GRPO, eval) for
the rows of one batch only. Reviewed shards are applied here: an edited target replaces the
teacher's, a rejected row is dropped (both configurable).
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cotforge.media.encode import flac_to_pcm
from cotforge.train.prompts import render_user, system_prompt
from cotforge.types import DATASETS, Scale

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
PATCH_FACTOR = 28
"""Qwen2.5-Omni's vision patch (14) times its spatial merge (2): frame sides must be multiples of it."""
TEXT_COLUMNS = ("key", "text", "language", "label", "target")
MEDIA_COLUMNS = ("audio", "audio_sample_rate", "frames", "frame_timestamps", "frame_fps", "duration")


class CorpusError(Exception):
    """The shards or eval set cannot be used as asked (missing split, path-only media, no rows...)."""


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """How a clip's media is given to the student: frame count and pixel caps, and the audio rate.

    Frames are resized once here, onto the patch grid, so that every processor (cotforge's numpy
    one, or transformers' torchvision one) sees the same pixels and no one resizes twice.
    """

    max_frames: int = 16
    min_pixels: int = 56 * 56
    max_pixels: int = 128 * 28 * 28
    sample_rate: int = 16000

    def as_dict(self) -> dict[str, int]:
        return {"max_frames": self.max_frames, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "sample_rate": self.sample_rate}


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """What a human review does to a row: `edits` trains on a reviewer's edited target (else on the
    teacher's, kept in review.teacher_target), and `drop_rejected` drops rejected rows (else they are
    trained on as exported)."""

    edits: bool = True
    drop_rejected: bool = True


@dataclass
class ReviewStats:
    unreviewed: int = 0
    accepted: int = 0
    edited: int = 0
    edit_without_text: int = 0
    rejected_dropped: int = 0
    rejected_kept: int = 0

    def summary(self) -> str:
        return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in vars(self).items() if value)


@dataclass
class Corpus:
    """One split of a corpus, ready for a trainer: the rows, the run's scale, and what was done to them."""

    dataset: Any  # datasets.Dataset of encoded rows
    scale: Scale
    split: str
    source: Path
    review: ReviewStats = field(default_factory=ReviewStats)

    def __len__(self) -> int:
        return len(self.dataset)

    def max_audio_seconds(self) -> float:
        durations = [d for d in self.dataset["duration"] if d is not None]
        return max(durations, default=0.0)


# --- locating data ----------------------------------------------------------------------------------


def shard_split_dir(shards: Path, split: str) -> Path:
    """`RUN/shards/<split>`, accepting RUN or RUN/shards (a reviewed copy may live anywhere)."""
    shards = Path(shards)
    if (shards / "shards").is_dir() and (shards / "manifest.json").is_file():
        shards = shards / "shards"
    folder = shards / split
    if not sorted(folder.glob("part-*.parquet")):
        present = [s for s in SPLITS if sorted((shards / s).glob("part-*.parquet"))]
        raise CorpusError(
            f"no shards for split {split!r} in {shards} (expected {folder}/part-*.parquet); "
            f"splits present: {', '.join(present) or 'none'}. Run `cotforge export --run RUN` first, or pick another --set split=..."
        )
    return folder


def run_scale(near: Path, dataset: str | None = None) -> Scale:
    """The run's Scale from the nearest manifest.json (at or above `near`), else the dataset registry's."""
    for folder in [Path(near), *Path(near).parents][:4]:
        manifest = folder / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if "scale" in data:
                return Scale.from_dict(data["scale"])
            dataset = dataset or data.get("dataset")
            break
    if dataset in DATASETS:
        log.warning("no manifest with a scale near %s: using the registry's scale of %s", near, dataset)
        return DATASETS[dataset].scale
    raise CorpusError(f"cannot tell the label scale of {near}: no manifest.json with a 'scale' and no known dataset name")


def _load_parquet(files: list[Path], columns: list[str]) -> Any:
    """A memory-mapped datasets.Dataset of only `columns` (datasets caches it as Arrow once)."""
    from datasets import Dataset

    present = set(pq.read_schema(files[0]).names)
    return Dataset.from_parquet([str(f) for f in files], columns=[c for c in columns if c in present])


def open_shards(shards: Path, split: str = "train", review: ReviewPolicy = ReviewPolicy(), text_only: bool = False,
                limit: int | None = None) -> Corpus:
    """The accepted chains of one split, with reviews applied; media stay encoded."""
    folder = shard_split_dir(shards, split)
    files = sorted(folder.glob("part-*.parquet"))
    names = pq.read_schema(files[0]).names
    light = pq.read_table(files, columns=[c for c in ("key", "dataset", "target", "review") if c in names])
    if light.num_rows == 0:
        raise CorpusError(f"{folder} holds no rows")
    if not text_only and _path_media(files[0]):
        raise CorpusError(
            f"{folder} was exported with export.media=path (no audio or frames inside the shards); re-export with "
            "media: inline for an omni student, or train text-only with --text-only"
        )
    keep, targets, stats = _apply_reviews(light, review)
    if not keep:
        raise CorpusError(f"every row of {folder} was dropped by its review ({stats.summary()})")
    columns = list(TEXT_COLUMNS) + ([] if text_only else list(MEDIA_COLUMNS))
    dataset = _load_parquet(files, columns + ["review"])
    if "review" in dataset.column_names:
        dataset = dataset.remove_columns("review")
    if len(keep) < light.num_rows or targets != light.column("target").to_pylist():
        dataset = dataset.select(keep).remove_columns("target").add_column("target", [targets[i] for i in keep])
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    dataset_name = light.column("dataset")[0].as_py() if "dataset" in light.column_names else None
    corpus = Corpus(dataset, run_scale(folder, dataset_name), split, folder, stats)
    if stats.unreviewed < light.num_rows:
        log.info("reviews in %s: %s", folder, stats.summary())
    return corpus


def _path_media(part: Path) -> bool:
    """Whether shards were exported with `export.media: path` (a run exports one way; one row group tells)."""
    parquet = pq.ParquetFile(part)
    if "audio" not in parquet.schema_arrow.names or parquet.metadata.num_row_groups == 0:
        return True
    audio = parquet.read_row_group(0, columns=["audio"]).column("audio")
    return audio.null_count == len(audio)


def _apply_reviews(table: pa.Table, policy: ReviewPolicy) -> tuple[list[int], list[str], ReviewStats]:
    """Row indices to keep, every row's target after edits, and the counts."""
    targets = table.column("target").to_pylist()
    reviews = table.column("review").to_pylist() if "review" in table.column_names else [None] * table.num_rows
    stats = ReviewStats()
    keep: list[int] = []
    for index, review in enumerate(reviews):
        verdict = (review or {}).get("verdict")
        if verdict == "reject":
            if policy.drop_rejected:
                stats.rejected_dropped += 1
                continue
            stats.rejected_kept += 1
        elif verdict == "edit":
            # `cotforge review apply` writes the edited target into the reviewed copy's `target` and keeps
            # the teacher's in review.teacher_target
            if review.get("edited") and policy.edits:
                stats.edited += 1
            elif review.get("edited"):
                targets[index] = review.get("teacher_target") or targets[index]
                stats.edit_without_text += 1
            else:
                stats.edit_without_text += 1
        elif verdict == "accept":
            stats.accepted += 1
        else:
            stats.unreviewed += 1
        keep.append(index)
    return keep, targets, stats


def open_eval_split(run: Path, split: str, limit: int | None = None) -> Corpus:
    """Every bundled clip of a split, unfiltered: RUN/eval/<split>, else the run's bundles of it.

    Never the shards: they hold only the clips whose teacher chain agreed with the gold label, and
    metrics on them would flatter every model.
    """
    run = Path(run)
    if run.name == "shards" or (run.name in SPLITS and run.parent.name == "shards"):
        raise CorpusError(
            f"{run} holds label-filtered accepted chains (only clips the teacher got right), which would bias every "
            "metric; evaluate with --run RUN on the unfiltered split (RUN/eval/<split>, or the run's bundles)"
        )
    folder = run / "eval" / split
    files = sorted(folder.glob("part-*.parquet"))
    columns = ["key", "text", "language", "label", "dataset", "media_hash", *MEDIA_COLUMNS]
    if files:
        dataset = _load_parquet(files, columns)
        source = folder
    else:
        dataset, source = _bundles_of_split(run, split, columns)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    first = dataset[0]["dataset"] if len(dataset) and "dataset" in dataset.column_names else None
    return Corpus(dataset, run_scale(run, first), split, source)


def _bundles_of_split(run: Path, split: str, columns: list[str]) -> tuple[Any, Path]:
    from datasets import Dataset

    from cotforge.store.bundles import BUNDLE_SCHEMA, iter_bundles
    from cotforge.store.ledger import Ledger

    if not (run / "ledger.sqlite").is_file():
        raise CorpusError(f"{run} is not a run directory (no eval/{split}/ and no ledger.sqlite)")
    with Ledger(run / "ledger.sqlite") as ledger:
        locations = ledger.bundle_locations()
    wanted = list(dict.fromkeys([*columns, "split"]))
    rows = [row for row in iter_bundles(run / "bundles", locations, columns=wanted) if row["split"] == split]
    rows = [row for row in rows if row.get("label") is not None]
    if not rows:
        raise CorpusError(f"{run} has no bundled clips of split {split!r} (and no eval/{split}/)")
    log.info("%s/eval/%s not found: evaluating the %d bundled %s clips of the run", run, split, len(rows), split)
    schema = pa.schema([BUNDLE_SCHEMA.field(c) for c in rows[0] if c in BUNDLE_SCHEMA.names])
    return Dataset(pa.Table.from_pylist(rows, schema=schema)), run / "bundles"


# --- media ----------------------------------------------------------------------------------------


def grid_size(width: int, height: int, spec: MediaSpec) -> tuple[int, int]:
    """Qwen2-VL's smart_resize: sides rounded to the patch grid, pixel count within [min, max]."""
    f = PATCH_FACTOR
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > spec.max_pixels:
        beta = math.sqrt(height * width / spec.max_pixels)
        h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif h * w < spec.min_pixels:
        beta = math.sqrt(spec.min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return w, h


def decode_audio(flac: bytes, sample_rate: int) -> np.ndarray:
    """FLAC bytes -> float32 mono in [-1, 1] at the bundle's rate (bundles are already 16 kHz mono)."""
    pcm, rate = flac_to_pcm(flac)
    if rate != sample_rate:
        raise CorpusError(f"audio is {rate} Hz but the student's feature extractor takes {sample_rate} Hz; re-bundle at {sample_rate}")
    return (pcm.reshape(-1) / 32768.0).astype(np.float32)


def decode_frames(jpegs: list[bytes], timestamps: list[float] | None, fps: float | None, spec: MediaSpec) -> tuple[np.ndarray, float]:
    """JPEG frames -> a (T, H, W, 3) uint8 array on the patch grid, and its frame rate.

    At most `max_frames` are kept, evenly strided; the rate is divided by the stride so the
    model's time positions (temporal patch / fps) still match the clip.
    """
    stride = max(1, math.ceil(len(jpegs) / spec.max_frames))
    chosen = jpegs[::stride]
    if not fps and timestamps and len(timestamps) > 1:
        fps = (len(timestamps) - 1) / max(1e-6, timestamps[-1] - timestamps[0])
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in chosen]
    size = grid_size(*images[0].size, spec)
    frames = np.stack([np.asarray(image.resize(size, Image.Resampling.BICUBIC)) for image in images])
    return frames, float(fps or 2.0) / stride


@dataclass(slots=True)
class Media:
    audio: np.ndarray | None
    frames: np.ndarray | None
    fps: float


def decode_media(row: dict[str, Any], spec: MediaSpec) -> Media:
    audio = decode_audio(row["audio"], spec.sample_rate) if row.get("audio") else None
    frames, fps = (None, 0.0)
    if row.get("frames"):
        frames, fps = decode_frames(row["frames"], row.get("frame_timestamps"), row.get("frame_fps"), spec)
    return Media(audio, frames, fps)


# --- chat samples ---------------------------------------------------------------------------------


def user_content(row: dict[str, Any], media: Media | None) -> list[dict[str, Any]] | str:
    """Audio, then frames (with their rate), then the transcript; a plain string when text-only."""
    text = render_user(row["text"] or "", row.get("language") or "en")
    if media is None:
        return text
    content: list[dict[str, Any]] = []
    if media.audio is not None:
        content.append({"type": "audio", "audio": media.audio})
    if media.frames is not None:
        content.append({"type": "video", "video": media.frames, "fps": media.fps})
    content.append({"type": "text", "text": text})
    return content


def prompt_messages(row: dict[str, Any], scale: Scale, media: Media | None) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_prompt(scale)}, {"role": "user", "content": user_content(row, media)}]


def text_sft_dataset(corpus: Corpus) -> Any:
    """Conversational prompt/completion rows for any causal LM: TRL then masks the prompt out of the loss."""
    from datasets import Dataset

    rows = corpus.dataset.select_columns(["text", "language", "target"]).to_list()
    return Dataset.from_list([
        {"prompt": prompt_messages(row, corpus.scale, None), "completion": [{"role": "assistant", "content": row["target"]}]}
        for row in rows
    ])


def audio_chunk_seconds(max_seconds: float) -> int:
    """The Whisper window that holds the longest clip whole (whole seconds, at least 1)."""
    return max(1, math.ceil(max_seconds - 1e-6))
