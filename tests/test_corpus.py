"""The corpus means what the config says, for the labels on disk today (issue: the corpus is right)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from cotforge.config import PipelineConfig
from cotforge.executors.local import run_bundle, run_pipeline
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.store.ledger import Ledger

FAST = {"latency_ms": 5, "capacity": 8}


def config(root: Path, run: Path, url: str, **sections) -> PipelineConfig:
    data = {
        "name": "t", "run": str(run), "source": {"dataset": "mosi", "root": str(root)},
        "media": {"fps": 2, "max_frames": 8, "size": 128}, "exec": {"workers": 2, "bundle_part_rows": 4},
        "teacher": {"url": url, "model": "sim/qwen3-omni", "simulated": True, "concurrency": 4, "backoff_s": 0.01,
                    "media_workers": 1},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return PipelineConfig.model_validate(data)


def requests(sim: SimProcess) -> int:
    return sum(httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["requests"].values())


def read_rows(label_file: Path) -> tuple[list[str], list[dict]]:
    with label_file.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_rows(label_file: Path, fields: list[str], rows: list[dict]) -> None:
    with label_file.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def shard_rows(run: Path, folder: str = "shards") -> dict[str, dict]:
    return {r["key"]: r for p in sorted((run / folder).rglob("*.parquet"))
            for r in pq.read_table(p, columns=["key", "label", "label_polarity", "split"]).to_pylist()}


@pytest.fixture
def data(demo_factory, tmp_path: Path) -> Path:
    demo = demo_factory("mosi", clips=10, min_seconds=1.0, max_seconds=2.5, seed=31)
    root = tmp_path / "data"
    shutil.copytree(demo.root, root)
    return root


def test_labels_on_disk_win_and_deleted_rows_leave(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=3, noise=0.2, flip_rate=0.0, **FAST)) as sim:
        cfg = config(data, run, sim.url, teacher={"splits": ["train", "valid", "test"]}, reask={"samples": 1, "hint": True})
        run_pipeline(cfg, run, quiet=True)
        with Ledger(run / "ledger.sqlite") as ledger:
            answers = ledger.answers()
        accepted = sorted((k for k, a in answers.items() if a["state"] == "accepted" and not a["answer"]["hinted"]),
                          key=lambda k: -abs(answers[k]["answer"]["score"]))
        flipped, nudged, deleted = accepted[0], accepted[1], accepted[2]
        fields, rows = read_rows(data / "label.csv")
        key = lambda row: f"mosi/{row['video_id']}/{row['clip_id']}"  # noqa: E731
        old_flipped = next(float(r["label"]) for r in rows if key(r) == flipped)
        new_flipped = -2.5 if old_flipped > 0 else 2.5
        nudged_score = answers[nudged]["answer"]["score"]
        for row in rows:
            if key(row) == flipped:
                row["label"] = str(new_flipped)
            elif key(row) == nudged:
                row["label"] = str(nudged_score)  # same polarity: judged again from the cache alone
        write_rows(data / "label.csv", fields, [r for r in rows if key(r) != deleted])
        calls = requests(sim)
        again = run_pipeline(cfg, run, quiet=True)
        # the nudged clip costs nothing; the flipped one keeps its cached sample and only its hint is new
        assert requests(sim) - calls == again.synth["requests"] == 1, (again.synth, again.bundle)
        assert again.synth["clips"] == 2
    with Ledger(run / "ledger.sqlite") as ledger:
        counts = ledger.counts()
        state = dict(ledger.db.execute("SELECT key, state FROM clips"))
        refs = ledger.refs()
    assert state[deleted] == "removed" and counts.total == 9 and refs[flipped]["label"] == new_flipped
    shards = shard_rows(run)
    assert deleted not in shards
    assert shards[nudged]["label"] == pytest.approx(nudged_score)
    if flipped in shards:
        assert shards[flipped]["label"] == new_flipped and shards[flipped]["label_polarity"] == ("negative" if new_flipped < 0 else "positive")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["total"] == 9 and manifest["counts"]["states"]["removed"] == 1


def test_keys_are_stable_when_rows_above_are_edited(tmp_path: Path, demo_factory) -> None:
    demo = demo_factory("mosi", clips=6, min_seconds=1.0, max_seconds=2.0, seed=32)
    root = tmp_path / "data"
    shutil.copytree(demo.root, root)
    fields, rows = read_rows(root / "label.csv")
    rows = [*rows, dict(rows[1]), {**rows[2], "video_id": "", "clip_id": ""}]  # a duplicate and a row without ids
    write_rows(root / "label.csv", fields, rows)
    run = tmp_path / "run"
    cfg = config(root, run, "http://127.0.0.1:9/v1")
    run_bundle(cfg, run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        first = set(ledger.refs())
    assert len(first) == 8 and any(k.endswith("#dup2") for k in first)
    write_rows(root / "label.csv", fields, [{**rows[0], "clip_id": "inserted"}, *rows])  # every line number shifts
    run_bundle(cfg, run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        counts = ledger.counts()
        second = set(ledger.refs())
    assert first <= second and len(second - first) == 1 and counts.total == 9 == len(rows) + 1


def test_a_manifest_corpus_is_asked_and_judged_on_its_own_scale(tmp_path: Path, demo_factory) -> None:
    demo = demo_factory("mosi", clips=6, min_seconds=1.0, max_seconds=2.0, seed=33)
    _, rows = read_rows(demo.label_file)
    manifest = tmp_path / "clips.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "text", "split"])
        for row in rows:
            writer.writerow([str(demo.root / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4"),
                             round(float(row["label"]) / 3, 3), row["text"], "train"])
    run = tmp_path / "run"
    log = tmp_path / "sim.jsonl"
    with SimProcess(SimConfig(port=0, seed=4, noise=0.2, flip_rate=0.0, log_path=log, log_bodies=True, **FAST)) as sim:
        cfg = config(manifest, run, sim.url, source={"dataset": "manifest", "root": str(manifest), "label_range": [-1, 1]},
                     reask={"samples": 1, "hint": False})
        run_pipeline(cfg, run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        counts = ledger.counts().by_state
    assert counts["accepted"] >= 4, counts  # was rejected wholesale when the prompt said [-3, 3]
    prompt = json.dumps([json.loads(line) for line in log.read_text().splitlines()])
    assert "from -1.0 to 1.0" in prompt and "from -3.0 to 3.0" not in prompt
    scale = json.loads((run / "manifest.json").read_text())["scale"]
    assert (scale["low"], scale["high"], scale["metrics"]) == (-1.0, 1.0, "sims")


def test_eval_sets_hold_every_bundled_clip_unfiltered(demo_factory, tmp_path: Path) -> None:
    demo = demo_factory("mosi", clips=12, corrupt=1, min_seconds=1.0, max_seconds=2.0, seed=34)
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=5, hard_share=0.5, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url, reask={"samples": 1, "hint": False})
        run_pipeline(cfg, run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        rows = ledger.db.execute("SELECT key, split, state, bundle_part FROM clips").fetchall()
    test_bundled = {k for k, split, _, part in rows if split == "test" and part}
    valid_bundled = {k for k, split, _, part in rows if split == "valid" and part}
    assert test_bundled and all(state == "held_out" for k, split, state, part in rows if split == "test" and part)
    assert set(shard_rows(run, "eval/test")) == test_bundled  # nothing dropped, no teacher needed
    assert set(shard_rows(run, "eval/valid")) == valid_bundled  # valid: judged, and still unfiltered here
    assert not (run / "shards" / "test").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["test_chains"] is False and manifest["eval"]["rows"]["test"] == len(test_bundled)
    table = pq.read_table(next((run / "eval" / "test").glob("*.parquet")))
    assert {"audio", "frames", "label", "label_polarity"} <= set(table.column_names)
    assert "rationale" not in table.column_names and "target" not in table.column_names


def test_test_chains_only_on_request_and_marked(demo_factory, tmp_path: Path) -> None:
    demo = demo_factory("mosi", clips=12, corrupt=1, min_seconds=1.0, max_seconds=2.0, seed=34)
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=5, **FAST)) as sim:
        run_pipeline(config(demo.root, run, sim.url), run, quiet=True)
        held = json.loads((run / "manifest.json").read_text())
        calls = requests(sim)
        cfg = config(demo.root, run, sim.url, teacher={"splits": ["train", "valid", "test"]})
        run_pipeline(cfg, run, quiet=True)
        asked = requests(sim) - calls
    manifest = json.loads((run / "manifest.json").read_text())
    assert held["test_chains"] is False and manifest["test_chains"] is True
    assert asked == manifest["counts"]["splits"]["test"].get("accepted", 0) + manifest["counts"]["splits"]["test"].get("rejected", 0) or asked > 0
    assert (run / "shards" / "test").is_dir()


def test_a_changed_media_setting_is_refused_before_any_request(demo_factory, tmp_path: Path) -> None:
    demo = demo_factory("mosi", clips=6, min_seconds=1.0, max_seconds=2.0, seed=33)
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=6, **FAST)) as sim:
        run_bundle(config(demo.root, run, sim.url), run, quiet=True)
        other = config(demo.root, run, sim.url, media={"fps": 1})
        done = subprocess.run([sys.executable, "-m", "cotforge.cli", "synth", "--run", str(run), "--set", "media.fps=1", "-q"],
                              capture_output=True, text=True)
        assert done.returncode == 2 and "other media settings" in done.stderr
        from cotforge.store.run import RunError

        with pytest.raises(RunError, match="other media settings"):
            run_pipeline(other, run, quiet=True)
        assert requests(sim) == 0
