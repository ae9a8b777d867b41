"""bundles/part-*.parquet: decoded clips, written in parts that become visible only when complete.

A part is written to `part-NNNNN.parquet.tmp` and renamed when closed; only then are its clips
marked `bundled` in the ledger. An interrupted run therefore loses at most the part it was
writing, and those clips are simply decoded again on resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cotforge import __version__
from cotforge.types import Bundle, ClipRef

BUNDLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("video_id", pa.string()),
        ("clip_id", pa.string()),
        ("language", pa.string()),
        ("text", pa.string()),
        ("label", pa.float64()),
        ("label_T", pa.float64()),
        ("label_A", pa.float64()),
        ("label_V", pa.float64()),
        ("annotation", pa.string()),
        ("source_path", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("duration", pa.float64()),
        ("media_hash", pa.string()),
        ("audio", pa.binary()),
        ("audio_sample_rate", pa.int32()),
        ("audio_num_samples", pa.int64()),
        ("frames", pa.list_(pa.binary())),
        ("frame_timestamps", pa.list_(pa.float64())),
        ("frame_fps", pa.float64()),
        ("frame_width", pa.int32()),
        ("frame_height", pa.int32()),
        ("video_width", pa.int32()),
        ("video_height", pa.int32()),
        ("video_fps", pa.float64()),
        ("decode_seconds", pa.float64()),
        ("media_config", pa.string()),
        ("cotforge_version", pa.string()),
    ]
)

PART_GLOB = "part-*.parquet"
MEDIA_COLUMNS = ("audio", "frames")
# FLAC and JPEG bytes do not compress, repeat or sort: zstd, dictionaries and min/max statistics on
# them cost CPU and, for an hour of audio, several copies of it in memory while a part is written.
_PLAIN = [f.name for f in BUNDLE_SCHEMA if f.name not in MEDIA_COLUMNS]
WRITE_OPTIONS = {
    "compression": {f.name: "none" if f.name in MEDIA_COLUMNS else "zstd" for f in BUNDLE_SCHEMA},
    "use_dictionary": _PLAIN,
    "write_statistics": _PLAIN,
    "row_group_size": 16,  # small row groups: a reader streaming bundles holds a few clips, not a whole part
}


def bundle_row(bundle: Bundle, media_config: str) -> dict:
    ref = bundle.ref
    return {
        "key": ref.key,
        "dataset": ref.dataset,
        "split": ref.split,
        "video_id": ref.video_id,
        "clip_id": ref.clip_id,
        "language": ref.language,
        "text": ref.text,
        "label": ref.label,
        "label_T": ref.label_T,
        "label_A": ref.label_A,
        "label_V": ref.label_V,
        "annotation": ref.annotation,
        "source_path": ref.media_path,
        "start": ref.start,
        "end": ref.end,
        "duration": bundle.duration,
        "media_hash": bundle.media_hash,
        "audio": bundle.audio_flac,
        "audio_sample_rate": bundle.audio_sample_rate,
        "audio_num_samples": bundle.audio_num_samples,
        "frames": bundle.frames,
        "frame_timestamps": bundle.frame_timestamps,
        "frame_fps": bundle.frame_fps,
        "frame_width": bundle.frame_width,
        "frame_height": bundle.frame_height,
        "video_width": bundle.video_width,
        "video_height": bundle.video_height,
        "video_fps": bundle.video_fps,
        "decode_seconds": bundle.decode_seconds,
        "media_config": media_config,
        "cotforge_version": __version__,
    }


def bundle_from_row(row: dict) -> Bundle:
    ref = ClipRef(
        key=row["key"], dataset=row["dataset"], video_id=row["video_id"], clip_id=row["clip_id"],
        split=row["split"], text=row["text"], label=row["label"], media_path=row["source_path"],
        language=row["language"], start=row["start"], end=row["end"], label_T=row["label_T"],
        label_A=row["label_A"], label_V=row["label_V"], annotation=row["annotation"],
    )
    return Bundle(
        ref=ref, media_hash=row["media_hash"], duration=row["duration"], audio_flac=row["audio"],
        audio_sample_rate=row["audio_sample_rate"], audio_num_samples=row["audio_num_samples"],
        frames=list(row["frames"]), frame_timestamps=list(row["frame_timestamps"]), frame_fps=row["frame_fps"],
        frame_width=row["frame_width"], frame_height=row["frame_height"], video_width=row["video_width"],
        video_height=row["video_height"], video_fps=row["video_fps"], decode_seconds=row["decode_seconds"],
    )


class BundleWriter:
    """Buffers bundles and writes a part every `part_rows` clips; `flush()` returns what it wrote."""

    def __init__(self, folder: Path, media_config: str, part_rows: int) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.media_config = media_config
        self.part_rows = part_rows
        self._rows: list[dict] = []
        existing = [int(p.name[5:10]) for p in folder.glob(PART_GLOB) if p.name[5:10].isdigit()]
        self._next = max(existing, default=-1) + 1
        for stale in folder.glob("*.tmp"):
            stale.unlink()

    def add(self, bundle: Bundle) -> list[tuple[str, str, str, float]] | None:
        """Buffer a bundle; when a part fills, write it and return its (key, part, hash, secs) rows."""
        self._rows.append(bundle_row(bundle, self.media_config))
        return self.flush() if len(self._rows) >= self.part_rows else None

    def flush(self) -> list[tuple[str, str, str, float]]:
        if not self._rows:
            return []
        name = f"part-{self._next:05d}.parquet"
        tmp = self.folder / f"{name}.tmp"
        pq.write_table(_table(self._rows), tmp, **WRITE_OPTIONS)
        tmp.rename(self.folder / name)
        written = [(r["key"], name, r["media_hash"], r["decode_seconds"]) for r in self._rows]
        self._rows = []
        self._next += 1
        return written


def _binary(values: list[bytes], limit: int = 2**31 - 1) -> pa.ChunkedArray:
    """A binary column made of the values themselves: a single value (an hour of audio) is referenced,
    not copied; several are joined once, in chunks of at most `limit` bytes (int32 offsets).
    `from_pylist` copies into a buffer that grows by doubling: for a long clip, twice its audio again."""
    groups: list[list[bytes]] = [[]]
    size = 0
    for value in values:
        if len(value) > limit:
            raise ValueError(f"a bundle value of {len(value):,} bytes does not fit a parquet binary column")
        if groups[-1] and size + len(value) > limit:
            groups.append([])
            size = 0
        groups[-1].append(value)
        size += len(value)
    return pa.chunked_array([_binary_chunk(group) for group in groups], type=pa.binary())


def _binary_chunk(values: list[bytes]) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    data = pa.py_buffer(values[0] if len(values) == 1 else b"".join(values))
    return pa.Array.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(offsets), data])


def _table(rows: list[dict]) -> pa.Table:
    rest = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "audio"} for row in rows],
                                schema=BUNDLE_SCHEMA.remove(BUNDLE_SCHEMA.get_field_index("audio")))
    audio = _binary([row["audio"] for row in rows])
    return pa.Table.from_arrays([audio if f.name == "audio" else rest.column(f.name) for f in BUNDLE_SCHEMA], schema=BUNDLE_SCHEMA)


def iter_bundles(folder: Path, locations: dict[str, str], columns: list[str] | None = None) -> Iterator[dict]:
    """Yield bundle rows whose part is the one the ledger points to (skips stale duplicates)."""
    for part in sorted(folder.glob(PART_GLOB)):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=16, columns=columns):
            for row in batch.to_pylist():
                if locations.get(row["key"]) == part.name:
                    yield row
