"""A small synthetic dataset in exactly the MMSA raw layout, with real H.264/AAC MP4 clips.

The point is to run the whole pipeline (readers, PyAV decoding, prompts) without the licensed
datasets and without network access. This module lays the dataset out: the label file (name,
header, CSV quoting), one MP4 per clip under `Raw/`, or for MOSEI optionally CMU's full videos
with segment times (the first one slightly negative) and segmented transcript files. Some media
files can be corrupted on purpose, in the ways real downloads go wrong, so failure handling is
exercised too. The rows come from `labels`, the media from `media`.

`demo.json` records what was encoded, so tests can compare decoded output with it.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np

from cotforge.demo.labels import Row, annotation, group_sizes, make_rows
from cotforge.demo.media import MediaSpec, Timeline, encode, media_spec
from cotforge.sources.mmsa import TRANSCRIPT_DIR, UNIMODAL
from cotforge.sources.rows import SPLITS
from cotforge.types import DATASETS

CORRUPT_KINDS = ("truncated", "no-audio", "no-video", "zero-bytes", "missing")
HEADER = ("video_id", "clip_id", "text", "label", *UNIMODAL, "annotation", "mode")
TRUNCATE_FRACTION = 0.45


@dataclass
class DemoClip:
    """One label-file row as written, with the media parameters it was encoded with."""

    video_id: str
    clip_id: str
    split: str
    label: float
    text: str
    path: str
    duration: float
    fps: float
    width: int
    height: int
    audio_rate: int
    start: float | None = None
    end: float | None = None
    corrupt: str | None = None


@dataclass
class DemoDataset:
    """What `make_demo_dataset` wrote: where, which layout, and every row."""

    root: Path
    dataset: str
    label_file: Path
    clips: list[DemoClip]


@dataclass
class _MediaFile:
    """One file on disk and the rows it serves (one clip, or all segments of a full video)."""

    path: str
    spec: MediaSpec
    rows: list[Row]
    timeline: Timeline
    corrupt: str | None = None


def make_demo_dataset(
    out: Path,
    dataset: str,
    clips: int,
    corrupt: int = 0,
    seed: int = 0,
    full_videos: bool = False,
    min_seconds: float = 1.0,
    max_seconds: float = 15.0,
    progress: Callable[[int], None] | None = None,
    x264_preset: str = "ultrafast",
) -> DemoDataset:
    """Write `clips` rows of `dataset` in the MMSA raw layout under `out`, plus `out/demo.json`.

    The same seed gives the same rows and media parameters. `corrupt` media files are damaged on
    purpose (cycling through CORRUPT_KINDS); with `full_videos` (MOSEI only) a damaged full video
    damages all of its segments. `progress(1)` is called once per row after its media is written.
    `x264_preset` trades encode time for realism ("veryfast" and slower write B-frames).
    """
    _check_args(dataset, clips, corrupt, seed, full_videos, min_seconds, max_seconds)
    out = Path(out)
    _prepare_out(out)
    rng = np.random.default_rng(seed)
    sizes = group_sizes(dataset, clips, corrupt if full_videos else 0, full_videos, rng)
    rows = make_rows(dataset, sizes, rng)
    files = _plan_media(dataset, rows, sizes, full_videos, min_seconds, max_seconds, rng)
    for index, kind in _pick_corrupt(files, corrupt, rng).items():
        files[index].corrupt = kind
    written: list[DemoClip] = []
    for number, media in enumerate(files):
        _write_media(out, media, np.random.default_rng([seed, number]), x264_preset)
        for row in media.rows:
            written.append(_demo_clip(row, media))
            if progress is not None:
                progress(1)
    label_file = out / ("meta.csv" if dataset == "simsv2" else "label.csv")
    _write_label_file(label_file, dataset, rows, full_videos)
    if full_videos:
        _write_transcripts(out, files)
    _write_manifest(out, dataset, seed, full_videos, label_file, written)
    return DemoDataset(root=out, dataset=dataset, label_file=label_file, clips=written)


def _check_args(
    dataset: str, clips: int, corrupt: int, seed: int, full_videos: bool, min_seconds: float, max_seconds: float
) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if clips < 1:
        raise ValueError(f"--clips must be at least 1, got {clips}")
    if not 0 <= corrupt <= clips:
        raise ValueError(f"--corrupt must be between 0 and the number of clips ({clips}), got {corrupt}")
    if full_videos and dataset != "mosei":
        raise ValueError(f"--full-videos is CMU-MOSEI's layout; it does not apply to {dataset}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"clip lengths need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")


def _prepare_out(out: Path) -> None:
    """Create `out`, or clear a previous demo there; never write over anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the demo dataset")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "demo.json").is_file():
            raise ValueError(
                f"{out} is not empty and is not a demo dataset (no demo.json); choose a new or empty folder"
            )
        shutil.rmtree(out / "Raw", ignore_errors=True)
        for name in ("label.csv", "meta.csv", "demo.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _plan_media(
    dataset: str,
    rows: list[Row],
    sizes: list[int],
    full_videos: bool,
    min_seconds: float,
    max_seconds: float,
    rng: np.random.Generator,
) -> list[_MediaFile]:
    """One media file per row, or per video with segment times set on its rows."""
    if not full_videos:
        return [_clip_file(row, rng.uniform(min_seconds, max_seconds), rng) for row in rows]
    files: list[_MediaFile] = []
    offset = 0
    for number, size in enumerate(sizes):
        files.append(_full_video(rows[offset : offset + size], number == 0, min_seconds, max_seconds, rng))
        offset += size
    return files


def _clip_file(row: Row, seconds: float, rng: np.random.Generator) -> _MediaFile:
    spec = media_spec(seconds, rng)
    return _MediaFile(
        path=f"Raw/{row.video_id}/{row.clip_id}.mp4",
        spec=spec,
        rows=[row],
        timeline=[(0.0, spec.duration, row.valence)],
    )


def _full_video(
    rows: list[Row], early_start: bool, min_seconds: float, max_seconds: float, rng: np.random.Generator
) -> _MediaFile:
    """A CMU full video: segments with gaps between them, setting each row's start and end.

    As in CMU's files, the first segment of some videos (always of the first one, when
    `early_start`) starts slightly before 0; the segment's content then starts at 0.
    """
    timeline: Timeline = []
    end = 0.0
    for number, row in enumerate(rows):
        if number == 0:
            early = early_start or rng.random() < 0.5
            start = -round(rng.uniform(0.2, 0.6), 4) if early else round(rng.uniform(0.0, 1.5), 4)
        else:
            start = round(end + rng.uniform(0.2, 2.0), 4)
        end = round(max(start, 0.0) + rng.uniform(min_seconds, max_seconds), 4)
        row.start, row.end = start, end
        timeline.append((max(start, 0.0), end, row.valence))
    return _MediaFile(
        path=f"{DATASETS['mosei'].full_video_dir}/{rows[0].video_id}.mp4",
        spec=media_spec(end + rng.uniform(0.3, 1.0), rng),
        rows=rows,
        timeline=timeline,
    )


def _pick_corrupt(files: list[_MediaFile], count: int, rng: np.random.Generator) -> dict[int, str]:
    """Choose `count` files, taking splits in turn so that every split sees damaged media."""
    by_split = [
        [int(i) for i in rng.permutation([n for n, media in enumerate(files) if media.rows[0].split == split])]
        for split in SPLITS
    ]
    order = [n for turn in zip_longest(*by_split) for n in turn if n is not None]
    return {n: CORRUPT_KINDS[k % len(CORRUPT_KINDS)] for k, n in enumerate(order[:count])}


def _write_media(out: Path, media: _MediaFile, rng: np.random.Generator, x264_preset: str) -> None:
    """Encode the file, or damage it as its `corrupt` kind says."""
    path = out / media.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if media.corrupt == "missing":
        return
    if media.corrupt == "zero-bytes":
        path.write_bytes(b"")
        return
    encode(path, media.spec, media.timeline, rng, x264_preset, video=media.corrupt != "no-video", audio=media.corrupt != "no-audio")
    if media.corrupt == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * TRUNCATE_FRACTION)])


def _demo_clip(row: Row, media: _MediaFile) -> DemoClip:
    """The row as recorded in demo.json; stream fields are 0 where the stream was not written."""
    spec, kind = media.spec, media.corrupt
    has_video = kind not in ("no-video", "zero-bytes", "missing")
    has_audio = kind not in ("no-audio", "zero-bytes", "missing")
    duration = spec.duration if has_video or has_audio else 0.0
    if row.start is not None and row.end is not None and duration:
        duration = round(row.end - max(row.start, 0.0), 4)
    return DemoClip(
        video_id=row.video_id,
        clip_id=row.clip_id,
        split=row.split,
        label=row.label,
        text=row.text,
        path=media.path,
        duration=duration,
        fps=float(spec.fps) if has_video else 0.0,
        width=spec.width if has_video else 0,
        height=spec.height if has_video else 0,
        audio_rate=spec.audio_rate if has_audio else 0,
        start=row.start,
        end=row.end,
        corrupt=kind,
    )


def _number(value: float | None) -> str:
    """Labels and times as the real files print them: shortest form, no -0.0, empty when absent."""
    return "" if value is None else repr(round(value, 4) + 0.0)


def _write_label_file(path: Path, dataset: str, rows: list[Row], full_videos: bool) -> None:
    header = HEADER + (("start", "end") if full_videos else ())
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        for row in rows:
            unimodal = [_number(value) for value in row.unimodal or (None, None, None)]
            record = [row.video_id, row.clip_id, row.text, _number(row.label), *unimodal]
            record += [annotation(dataset, row.label), row.split]
            if full_videos:
                record += [_number(row.start), _number(row.end)]
            writer.writerow(record)


def _write_transcripts(out: Path, files: list[_MediaFile]) -> None:
    """CMU's segmented transcripts: `<vid>___<seg>___<start>___<end>___<text>`, one segment a line."""
    folder = out / TRANSCRIPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for media in files:
        lines = [
            f"{row.video_id}___{row.clip_id}___{_number(row.start)}___{_number(row.end)}___"
            + " ".join(row.text.split())
            for row in media.rows
        ]
        (folder / f"{media.rows[0].video_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_manifest(
    out: Path, dataset: str, seed: int, full_videos: bool, label_file: Path, clips: list[DemoClip]
) -> None:
    """demo.json, written last: its presence marks a complete demo that may be overwritten."""
    manifest = {
        "dataset": dataset,
        "seed": seed,
        "full_videos": full_videos,
        "label_file": label_file.name,
        "clips": [asdict(clip) for clip in clips],
    }
    (out / "demo.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
