"""Bundle parts hold media bytes as written, without compressing what does not compress."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cotforge.store.bundles import MEDIA_COLUMNS, BundleWriter, _binary, iter_bundles
from cotforge.types import Bundle, ClipRef


def bundle(number: int, audio_bytes: int) -> Bundle:
    ref = ClipRef(key=f"mosi/v{number}/1", dataset="mosi", video_id=f"v{number}", clip_id="1", split="train",
                  text=f"clip {number}", label=0.5, media_path=f"/data/v{number}.mp4", language="en")
    return Bundle(ref=ref, media_hash=f"h{number}", duration=1.0, audio_flac=os.urandom(audio_bytes), audio_sample_rate=16000,
                  audio_num_samples=16000, frames=[os.urandom(300), os.urandom(200)], frame_timestamps=[0.0, 0.5],
                  frame_fps=2.0, frame_width=64, frame_height=36, video_width=640, video_height=360, video_fps=30.0)


def test_parts_read_back_byte_for_byte_with_media_uncompressed(tmp_path: Path) -> None:
    bundles = [bundle(n, size) for n, size in enumerate([0, 10, 5000, 1])]
    writer = BundleWriter(tmp_path, "cfg", part_rows=3)
    written = [w for b in bundles for w in writer.add(b) or []] + writer.flush()
    rows = {r["key"]: r for r in iter_bundles(tmp_path, {key: part for key, part, _, _ in written})}
    for b in bundles:
        row = rows[b.ref.key]
        assert (row["audio"], row["frames"], row["text"]) == (b.audio_flac, b.frames, b.ref.text)
    meta = pq.ParquetFile(next(tmp_path.glob("part-*.parquet"))).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i).compression for i in range(meta.num_columns)}
    assert {codecs[c] for c in MEDIA_COLUMNS} == {"UNCOMPRESSED"} and codecs["text"] == "ZSTD"


def test_binary_columns_split_at_the_offset_limit_and_keep_order() -> None:
    values = [os.urandom(n) for n in (0, 5, 100, 3, 0, 50, 60)]
    column = _binary(values, limit=100)
    assert column.to_pylist() == values and [len(c) for c in column.chunks] == [2, 1, 3, 1]
    assert _binary(values).num_chunks == 1
    with pytest.raises(ValueError, match="does not fit"):
        _binary(values, limit=60)
