"""Ledger and bundle parts: what resume and `status` rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from cotforge.config import BundleConfig, apply_overrides
from cotforge.store.bundles import BUNDLE_SCHEMA, BundleWriter, bundle_from_row, iter_bundles
from cotforge.store.ledger import Ledger
from cotforge.types import Bundle, ClipRef, ClipState

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def ref(i: int, split: str = "train") -> ClipRef:
    return ClipRef(key=f"mosi/v/{i}", dataset="mosi", video_id="v", clip_id=str(i), split=split, text="t",
                   label=0.5, media_path=f"/x/{i}.mp4", language="en", line=i + 1)


def bundle(i: int) -> Bundle:
    return Bundle(ref=ref(i), media_hash=f"h{i}", duration=1.0, audio_flac=b"fLaC", audio_sample_rate=16000,
                  audio_num_samples=16000, frames=[b"\xff\xd8"], frame_timestamps=[0.0], frame_fps=2.0,
                  frame_width=4, frame_height=2, video_width=8, video_height=4, video_fps=25.0, decode_seconds=0.1)


def test_admit_is_idempotent_and_counts_add_up(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.admit(ref(1)) is ClipState.PENDING
        assert ledger.admit(ref(1)) is ClipState.PENDING
        ledger.admit(ref(2, "test"))
        ledger.fail("mosi/v/2", "decode", "no audio stream")
        ledger.mark_bundled([("mosi/v/1", "part-00000.parquet", "h1", 0.2)])
        counts = ledger.counts()
    assert counts.total == 2
    assert counts.by_state["bundled"] == 1 and counts.by_state["failed"] == 1
    assert counts.by_split == {"train": {"bundled": 1}, "test": {"failed": 1}}
    assert counts.reasons == [("decode", "no audio stream", 1)]
    with Ledger(tmp_path / "ledger.sqlite") as again:
        assert again.admit(ref(1)) is ClipState.BUNDLED
        assert again.admit(ref(2, "test")) is ClipState.FAILED
        assert again.admit(ref(2, "test"), retry_failed=True) is ClipState.PENDING


def test_parts_appear_only_when_complete_and_resume_numbering(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path, "cfg", part_rows=2)
    assert writer.add(bundle(1)) is None
    assert list(tmp_path.iterdir()) == []
    written = writer.add(bundle(2))
    assert [w[0] for w in written] == ["mosi/v/1", "mosi/v/2"] and written[0][1] == "part-00000.parquet"
    writer.add(bundle(3))
    assert writer.flush()[0][1] == "part-00001.parquet"
    (tmp_path / "part-00002.parquet.tmp").write_bytes(b"partial")
    resumed = BundleWriter(tmp_path, "cfg", part_rows=2)
    resumed.add(bundle(4))
    assert resumed.flush()[0][1] == "part-00002.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert pq.read_schema(tmp_path / "part-00000.parquet").equals(BUNDLE_SCHEMA, check_metadata=False)


def test_iter_bundles_follows_the_ledger_pointer(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path, "cfg", part_rows=10)
    writer.add(bundle(1))
    writer.flush()
    writer.add(bundle(1))  # the same clip written again by a resumed run
    writer.add(bundle(2))
    writer.flush()
    rows = list(iter_bundles(tmp_path, {"mosi/v/1": "part-00001.parquet", "mosi/v/2": "part-00001.parquet"}))
    assert [r["key"] for r in rows] == ["mosi/v/1", "mosi/v/2"]
    restored = bundle_from_row(rows[0])
    assert restored.ref.key == "mosi/v/1" and restored.frames == [b"\xff\xd8"] and restored.audio_duration == 1.0


def test_json_schema_matches_parquet_schema() -> None:
    schema = json.loads((SCHEMAS / "clip_bundle.schema.json").read_text())
    assert list(schema["properties"]) == BUNDLE_SCHEMA.names
    assert schema["required"] == BUNDLE_SCHEMA.names


def test_overrides_are_validated(tmp_path: Path) -> None:
    base = {"source": {"dataset": "mosi", "root": str(tmp_path)}}
    cfg = BundleConfig.model_validate(apply_overrides(base, ["media.fps=1", "exec.workers=3"]))
    assert cfg.media.fps == 1.0 and cfg.exec.workers == 3
    with pytest.raises(ValidationError, match="extra"):
        BundleConfig.model_validate(apply_overrides({"source": {"dataset": "mosi", "root": str(tmp_path)}}, ["media.fsp=1"]))
    with pytest.raises(ValidationError, match="fps"):
        BundleConfig.model_validate(apply_overrides({"source": {"dataset": "mosi", "root": str(tmp_path)}}, ["media.fps=fast"]))
    with pytest.raises(ValueError, match="key.path=value"):
        apply_overrides({}, ["media.fps"])


def test_corpus_json_schema_matches_parquet_schema() -> None:
    from cotforge.store.shards import CORPUS_SCHEMA

    schema = json.loads((SCHEMAS / "corpus_row.schema.json").read_text())
    assert list(schema["properties"]) == CORPUS_SCHEMA.names
    assert schema["properties"]["rationale"]["properties"]["discrimination"]["properties"]["polarity"]
