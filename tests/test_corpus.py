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
        fields, rows = read_rows(data / "label.csv")
        key = lambda row: f"mosi/{row['video_id']}/{row['clip_id']}"  # noqa: E731
        labels = {key(r): float(r["label"]) for r in rows}
        flipped = accepted[0]
        # the nudged clip's label moves to its answer's score: a change only where the two differ
        nudged = next(k for k in accepted[1:] if answers[k]["answer"]["score"] != labels[k])
        deleted = next(k for k in accepted[1:] if k != nudged)
        old_flipped = labels[flipped]
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
    # A teacher without noise: with the run's scale in the prompt every clip is accepted; with MOSI's
    # [-3, 3] (the bug) its answers were judged on the wrong range and every clip was rejected.
    with SimProcess(SimConfig(port=0, seed=4, noise=0.0, flip_rate=0.0, log_path=log, log_bodies=True, **FAST)) as sim:
        cfg = config(manifest, run, sim.url, source={"dataset": "manifest", "root": str(manifest), "label_range": [-1, 1],
                                 "allow_outside_root": True},
                     reask={"samples": 1, "hint": False})
        run_pipeline(cfg, run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        counts = ledger.counts().by_state
        outcomes = ledger.db.execute("SELECT state, reason FROM clips").fetchall()
    # Every clip is accepted (it was rejected wholesale when the prompt said [-3, 3]), except the manifest
    # rows that name a clip already listed, which fail as duplicates.
    duplicates = [r for s, r in outcomes if s == "failed" and r.startswith("duplicate key")]
    assert counts["accepted"] == len(outcomes) - len(duplicates) >= 4, outcomes
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


def test_clips_too_long_for_the_server_fail_before_any_request(demo_factory, tmp_path: Path) -> None:
    demo = demo_factory("mosi", clips=6, min_seconds=1.0, max_seconds=2.0, seed=33)
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=6, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url, teacher={"max_model_len": 900, "max_tokens": 512})
        run_pipeline(cfg, run, quiet=True)
        assert requests(sim) == 0
    with Ledger(run / "ledger.sqlite") as ledger:
        reasons = [r for (r,) in ledger.db.execute("SELECT reason FROM clips WHERE stage = 'teacher'")]
    assert reasons and all(r.startswith("over the context budget: about ") and "max_model_len 900" in r for r in reasons)
    plan = subprocess.run([sys.executable, "-m", "cotforge.cli", "plan", "--run", str(run), "--max-model-len", "900"],
                          capture_output=True, text=True)
    assert plan.returncode == 0 and f"{len(reasons)} clips exceed max_model_len 900" in " ".join(plan.stderr.split())


def test_own_prompts_change_the_version_and_a_dry_run_shows_the_exact_requests(demo_factory, tmp_path: Path) -> None:
    from cotforge.resources import resource_dir

    demo = demo_factory("mosi", clips=6, min_seconds=1.0, max_seconds=2.0, seed=33)
    run = tmp_path / "run"
    mine = tmp_path / "prompts"
    mine.mkdir()
    template = (resource_dir("prompts") / "teacher_dc.en.j2").read_text()
    (mine / "teacher_dc.en.j2").write_text(template.replace("Judge the speaker's sentiment", "JUDGE WITH CARE the speaker's sentiment"))
    cfg = config(demo.root, run, "http://127.0.0.1:9/v1")  # nothing listens there: a dry run sends nothing
    run_bundle(cfg, run, quiet=True)
    cli = [sys.executable, "-m", "cotforge.cli", "synth", "--run", str(run), "--teacher-url", "http://127.0.0.1:9/v1"]
    packaged = subprocess.run([*cli, "--dry-run", "2"], capture_output=True, text=True)
    assert packaged.returncode == 0, packaged.stderr
    previews = [json.loads(p.read_text()) for p in sorted((run / "requests").glob("*.json"))]
    assert len(previews) == 2
    body = previews[0]["body"]
    assert body["messages"][1]["content"][0]["video_url"]["url"] == "cotforge-media:video"  # media elided
    assert "JUDGE WITH CARE" not in json.dumps(body)
    own = subprocess.run([*cli, "--dry-run", "2", "--set", f"teacher.prompt_dir={mine}", "--set",
                          "teacher.chat_template_kwargs={enable_thinking: false}"], capture_output=True, text=True)
    assert own.returncode == 0, own.stderr
    changed = [json.loads(p.read_text()) for p in sorted((run / "requests").glob("*.json"))]
    assert "JUDGE WITH CARE" in json.dumps(changed[0]["body"]) and changed[0]["body"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert changed[0]["prompt_version"] != previews[0]["prompt_version"] and changed[0]["cache_key"] != previews[0]["cache_key"]
    bad = subprocess.run([*cli, "--dry-run", "1", "--set", f"teacher.prompt_dir={tmp_path / 'nowhere'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


def test_a_thinking_teachers_reasoning_is_kept_beside_the_answer(tmp_path: Path) -> None:
    """A server with a reasoning parser returns `reasoning_content`: it reaches the cache and the shard row."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cotforge.config import ExportConfig, TeacherConfig
    from cotforge.store.cache import ResponseCache
    from cotforge.store.shards import corpus_rows
    from cotforge.teacher.client import TeacherClient
    from cotforge.types import MOSI_SCALE

    answer = {"discrimination": {"cues": {"text": "t", "audio": "a", "visual": "v"}, "summary": "s", "polarity": "positive"},
              "calibration": {"reasoning": "r", "score": 1.0}}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers["Content-Length"]))
            payload = {"id": "x", "object": "chat.completion", "created": 0, "model": "thinker",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                           "role": "assistant", "content": json.dumps(answer), "reasoning_content": "Let me look at the face first."}}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async def ask():
            async with TeacherClient(TeacherConfig(url=f"http://127.0.0.1:{server.server_port}/v1", model="thinker")) as client:
                return await client.ask({"model": "thinker", "messages": [{"role": "user", "content": "hi"}]})

        response = asyncio.run(ask())
    finally:
        server.shutdown()
    assert response.reasonings == ["Let me look at the face first."]
    cache = ResponseCache(tmp_path / "cache.sqlite")
    cache.put("k", "mosi/v/1", "dc-en-x", False, response)
    assert cache.get("k").reasonings == response.reasonings
    bundle = {name: None for name in ("key", "dataset", "split", "video_id", "clip_id", "language", "text", "label_T", "label_A",
                                      "label_V", "source_path", "start", "end", "duration", "media_hash", "audio",
                                      "audio_sample_rate", "frames", "frame_timestamps", "frame_fps")}
    bundle.update(key="mosi/v/1", label=1.2)
    entry = {"answer": {"chosen": [0], "prompt_version": "dc-en-x", "candidates": [
        {"cache_key": "k", "index": 0, "error": 0.2, "hinted": False, "rules": []}]}}
    (row,) = corpus_rows(bundle, entry, cache, ExportConfig(), MOSI_SCALE)
    assert row["teacher_reasoning"] == "Let me look at the face first." and row["target"].startswith("<think>")


def test_the_simulator_is_recognised_without_a_switch(demo_factory, tmp_path: Path) -> None:
    """`cotforge run pipelines/mosi.yaml --set teacher.url=<simulator>` works as the README says: no secret setting."""
    demo = demo_factory("mosi", clips=6, min_seconds=1.0, max_seconds=2.0, seed=33)
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=7, noise=0.2, flip_rate=0.0, max_model_len=4096, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url)
        cfg.teacher.simulated = None
        result = run_pipeline(cfg, run, quiet=True)
    assert result.synth["accepted"] >= 3 and result.synth["failed"] == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher_models"] == ["sim/qwen3-omni"]
