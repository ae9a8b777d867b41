"""The bundle stage on generated datasets: every layout, every corrupt kind, resume, and fidelity."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from cotforge.config import BundleConfig, MediaConfig
from cotforge.executors.local import run_bundle
from cotforge.media.decode import decode_clip
from cotforge.sources import open_source
from cotforge.store.bundles import iter_bundles
from cotforge.store.ledger import Ledger
from cotforge.store.run import RunError

EXPECTED_REASON = {
    "truncated": "undecodable",
    "no-audio": "no audio stream",
    "no-video": "no video stream",
    "zero-bytes": "media file is empty (0 bytes)",
    "missing": "media file missing",
}


def config(root: Path, dataset: str = "mosi", **media) -> BundleConfig:
    return BundleConfig.model_validate({"source": {"dataset": dataset, "root": str(root)}, "media": media, "exec": {"workers": 2, "bundle_part_rows": 4}})


def bundled_rows(run: Path) -> list[dict]:
    with Ledger(run / "ledger.sqlite") as ledger:
        return list(iter_bundles(run / "bundles", ledger.bundle_locations()))


def ledger_rows(run: Path) -> dict[str, tuple[str, str | None]]:
    with Ledger(run / "ledger.sqlite") as ledger:
        return {k: (s, r) for k, s, r in ledger.db.execute("SELECT key, state, reason FROM clips")}


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_each_layout_bundles_every_clip(demo_factory, run_dir: Path, dataset: str) -> None:
    demo = demo_factory(dataset, clips=6)
    stats = run_bundle(config(demo.root, dataset), run_dir, quiet=True)
    assert (stats["rows"], stats["bundled"], stats["failed"]) == (6, 6, 0)
    rows = bundled_rows(run_dir)
    assert sorted(r["key"] for r in rows) == sorted(f"{dataset}/{c.video_id}/{c.clip_id}" for c in demo.clips)
    for row in rows:
        assert row["frames"] and row["audio_num_samples"] > 0
        assert row["language"] == ("zh" if dataset.startswith("sims") else "en")


def test_mosei_full_videos_are_decoded_as_time_ranges(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("mosei", clips=6, full_videos=True, min_seconds=1.5, max_seconds=3.0)
    run_bundle(config(demo.root, "mosei"), run_dir, quiet=True)
    rows = {r["key"]: r for r in bundled_rows(run_dir)}
    assert len(rows) == 6
    for clip in demo.clips:
        row = rows[f"mosei/{clip.video_id}/{clip.clip_id}"]
        assert row["start"] == max(0.0, clip.start) and row["end"] == clip.end
        assert abs(row["duration"] - clip.duration) < 1e-6
        assert abs(row["audio_num_samples"] / row["audio_sample_rate"] - clip.duration) <= 0.010
        assert row["frame_timestamps"][0] < 1 / clip.fps + 1e-6


def test_transcript_segments_mode_matches_columns(demo_factory, tmp_path: Path) -> None:
    demo = demo_factory("mosei", clips=6, full_videos=True, min_seconds=1.5, max_seconds=3.0)
    refs = list(open_source(config(demo.root, "mosei", ).source.model_copy(update={"segments": "transcripts"})))
    by_columns = list(open_source(config(demo.root, "mosei").source))
    assert [(r.start, r.end) for r in refs] == [(r.start, r.end) for r in by_columns]


def test_every_corrupt_kind_fails_with_its_reason_and_counts_add_up(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("mosi", clips=10, corrupt=5)
    stats = run_bundle(config(demo.root), run_dir, quiet=True)
    assert stats["rows"] == 10 and stats["bundled"] == 5 and stats["failed"] == 5
    rows = ledger_rows(run_dir)
    assert len(rows) == 10
    for clip in demo.clips:
        state, reason = rows[f"mosi/{clip.video_id}/{clip.clip_id}"]
        if clip.corrupt:
            assert state == "failed" and reason.split(":")[0] == EXPECTED_REASON[clip.corrupt], (clip.corrupt, reason)
        else:
            # the teacher gets train and valid; test clips are bundled for the eval set only
            assert state == ("held_out" if clip.split == "test" else "bundled") and reason is None
    truncated = next(rows[f"mosi/{c.video_id}/{c.clip_id}"][1] for c in demo.clips if c.corrupt == "truncated")
    assert "t=" in truncated


def test_second_bundle_decodes_nothing_new(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("mosi", clips=10, corrupt=5)
    run_bundle(config(demo.root), run_dir, quiet=True)
    parts = sorted(p.name for p in (run_dir / "bundles").iterdir())
    again = run_bundle(config(demo.root), run_dir, quiet=True)
    assert (again["rows"], again["skipped"], again["bundled"], again["failed"]) == (10, 10, 0, 0)
    assert again.seconds.get("decode_cpu", 0.0) == 0
    assert sorted(p.name for p in (run_dir / "bundles").iterdir()) == parts
    retried = run_bundle(config(demo.root), run_dir, retry_failed=True, quiet=True)
    assert (retried["skipped"], retried["failed"]) == (5, 5)


def test_interrupted_run_resumes_without_losing_done_work(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("mosi", clips=8)
    cfg = config(demo.root)
    cfg.source.limit = 3
    first = run_bundle(cfg, run_dir, quiet=True)
    cfg.source.limit = None
    second = run_bundle(cfg, run_dir, quiet=True)
    assert first["bundled"] == 3 and second["skipped"] == 3 and second["bundled"] == 5
    assert len(bundled_rows(run_dir)) == 8


def test_other_media_settings_are_refused_on_an_existing_run(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("mosi", clips=8)
    run_bundle(config(demo.root), run_dir, quiet=True)
    with pytest.raises(RunError, match=r"fps 2.0 -> 1.0"):
        run_bundle(config(demo.root, fps=1.0), run_dir, quiet=True)


@pytest.mark.parametrize("fps", [2.0, 5.0])
def test_decoded_frames_and_audio_match_what_was_encoded(demo_factory, fps: float) -> None:
    demo = demo_factory("mosi", clips=8, min_seconds=1.0, max_seconds=6.0)
    cfg = MediaConfig(fps=fps, max_frames=64, size=160)
    for ref in open_source(config(demo.root).source):
        clip = next(c for c in demo.clips if c.clip_id == ref.clip_id and c.video_id == ref.video_id)
        bundle = decode_clip(ref, cfg)
        frame_period = 1.0 / clip.fps
        expected = math.floor(clip.duration * fps + 1e-9)
        expected = max(2, expected - expected % 2)  # an even count, at least 2 (vLLM takes frames in pairs)
        assert len(bundle.frames) == expected, (clip.duration, clip.fps)
        for i, ts in enumerate(bundle.frame_timestamps):
            assert abs(ts - i / fps) <= frame_period + 1e-6
        image = Image.open(io.BytesIO(bundle.frames[0]))
        assert max(image.size) <= 160 and image.size == (bundle.frame_width, bundle.frame_height)
        assert abs(image.size[0] / image.size[1] - clip.width / clip.height) < 0.05
        pcm, rate = sf.read(io.BytesIO(bundle.audio_flac), dtype="int16")
        assert rate == 16000 and pcm.ndim == 1
        assert abs(len(pcm) / rate - clip.duration) <= 0.010
        assert np.abs(pcm).max() > 1000  # the voice is there, not silence


def test_long_clip_is_spread_over_max_frames(demo_factory) -> None:
    demo = demo_factory("mosi", clips=3, min_seconds=5.0, max_seconds=6.0, seed=3)
    ref = next(iter(open_source(config(demo.root).source)))
    bundle = decode_clip(ref, MediaConfig(fps=2.0, max_frames=4))
    assert len(bundle.frames) == 4
    assert bundle.frame_fps == pytest.approx(4 / bundle.duration)
    assert bundle.frame_timestamps[-1] > bundle.duration / 2


def test_bundles_load_without_cotforge(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("sims", clips=6)
    run_bundle(config(demo.root, "sims"), run_dir, quiet=True)
    code = (
        "import sys, glob, polars as pl, pyarrow.parquet as pq\n"
        "assert 'cotforge' not in sys.modules\n"
        f"df = pl.read_parquet(glob.glob('{run_dir}/bundles/*.parquet'))\n"
        "print(df.height, df['language'][0])\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["6", "zh"]


def test_cli_bundle_and_status(demo_factory, run_dir: Path) -> None:
    demo = demo_factory("mosi", clips=10, corrupt=5)
    cli = [sys.executable, "-m", "cotforge.cli"]
    done = subprocess.run([*cli, "bundle", "--root", str(demo.root), "--run", str(run_dir), "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rows read" in done.stdout and "no audio stream" in done.stdout
    status = subprocess.run([*cli, "status", str(run_dir), "--json"], capture_output=True, text=True, check=True)
    payload = json.loads(status.stdout)
    states = payload["states"]
    assert payload["total"] == 10 and states["bundled"] + states["held_out"] == 5 and states["failed"] == 5
    by_option = subprocess.run([*cli, "status", "--run", str(run_dir), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(by_option.stdout) == payload
    assert sum(r["count"] for r in payload["reasons"]) == 5
    bad = subprocess.run([*cli, "bundle", "--root", str(demo.root), "--run", str(run_dir), "--set", "media.fsp=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "media.fsp" in bad.stderr


def test_malformed_label_file_stops_before_anything_runs(tmp_path: Path, run_dir: Path) -> None:
    (tmp_path / "label.csv").write_text("video_id,clip_id,text\nv,1,x\n")
    cli = [sys.executable, "-m", "cotforge.cli"]
    done = subprocess.run([*cli, "bundle", "--root", str(tmp_path), "--run", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "label.csv, line 1: missing required column(s) label, mode" in done.stderr.replace("\n", "")
    assert not run_dir.exists()
