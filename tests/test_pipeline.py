"""`run`, `synth`, `export` against the teacher simulator on 127.0.0.1: the main job end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cotforge.config import PipelineConfig
from cotforge.executors.local import run_bundle, run_export, run_pipeline, run_synth
from cotforge.report import write_report
from cotforge.store.ledger import Ledger
from cotforge.steps.plan import run_plan
from cotforge.store.run import RunError
from cotforge.teacher.client import TeacherUnavailable
from cotforge.sim.server import SimConfig, SimProcess

FAST = {"latency_ms": 5, "capacity": 8}


def pipeline(root: Path, run: Path, url: str, **sections) -> PipelineConfig:
    data = {
        "name": "t",
        "run": str(run),
        "source": {"dataset": "mosi", "root": str(root)},
        "media": {"fps": 2, "max_frames": 8, "size": 128},
        "exec": {"workers": 2, "bundle_part_rows": 4},
        # every split to the teacher, so each clip is judged; the held-out default has tests of its own
        "teacher": {"url": url, "model": "sim/qwen3-omni", "simulated": True, "concurrency": 4, "backoff_s": 0.01,
                    "timeout_s": 20, "media_workers": 1, "splits": ["train", "valid", "test"]},
        "reask": {"samples": 2},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return PipelineConfig.model_validate(data)


def sim_requests(sim: SimProcess) -> int:
    return sum(httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["requests"].values())


def ledger_counts(run: Path) -> dict[str, int]:
    with Ledger(run / "ledger.sqlite") as ledger:
        return ledger.counts().by_state


@pytest.fixture(scope="module")
def demo(demo_factory):
    return demo_factory("mosi", clips=10, corrupt=2, min_seconds=1.0, max_seconds=3.0, seed=5)


def test_run_end_to_end_and_warm_rerun_makes_no_call(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=1, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url)
        result = run_pipeline(cfg, run, quiet=True)
        counts = ledger_counts(run)
        assert counts["accepted"] + counts["rejected"] + counts["failed"] == 10
        assert counts["failed"] == 2 and counts["pending"] == counts["bundled"] == 0
        assert result.synth["accepted"] == counts["accepted"] > 0
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["counts"]["states"] == counts
        assert sum(manifest["shards"]["rows"].values()) == counts["accepted"]
        assert manifest["teacher_models"] == ["sim/qwen3-omni"] and manifest["config_hash"] == cfg.fingerprint()
        shard_files = sorted((run / "shards").rglob("*.parquet"))
        stamps = [(p, p.stat().st_mtime_ns) for p in shard_files] + [(run / "manifest.json", (run / "manifest.json").stat().st_mtime_ns)]
        calls = sim_requests(sim)

        again = run_pipeline(cfg, run, quiet=True)
        assert sim_requests(sim) == calls, "a warm re-run must not call the teacher"
        assert again.synth["requests"] == 0 and again.bundle["bundled"] == 0 and not again.export["rewritten"]
        assert [(p, p.stat().st_mtime_ns) for p, _ in stamps] == stamps
    summary = write_report(cfg, run)
    assert {p.name for p in (run / "report").iterdir()} >= {"summary.md", "scores.png", "confusion.png", "reasons.png",
                                                             "acceptance_by_gold.png", "throughput.png"}
    assert "Has0_acc_2" in summary.read_text() and "simulated" in summary.read_text()


def test_shards_load_without_cotforge(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=2, **FAST)) as sim:
        run_pipeline(pipeline(demo.root, run, sim.url), run, quiet=True)
    accepted = ledger_counts(run)["accepted"]
    code = f"""
import sys, glob
import datasets, polars as pl, pyarrow.parquet as pq
shards = {str(run / 'shards')!r}
ds = datasets.load_dataset("parquet", data_dir=shards)
n_ds = sum(len(ds[s]) for s in ds)
n_pl = pl.read_parquet(glob.glob(shards + "/*/*.parquet")).height
table = pq.ParquetDataset(shards).read(columns=["key", "target", "rationale", "frames"])
row = table.slice(0, 1).to_pylist()[0]
assert row["target"].startswith("<think>") and row["rationale"]["calibration"]["score"] is not None and row["frames"]
assert not any(m == "cotforge" or m.startswith("cotforge.") for m in sys.modules)
print(n_ds, n_pl, table.num_rows)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_DATASETS_OFFLINE"] = "1"
    env["HF_HOME"] = str(tmp_path / "hf")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(accepted)] * 3


def test_reask_then_hint_when_the_teacher_is_wrong(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=3, hard_share=1.0, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url, reask={"samples": 2, "hint": True})
        run_pipeline(cfg, run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        answers = ledger.answers()
    assert answers
    for entry in answers.values():
        candidates = entry["answer"]["candidates"]
        assert [c["hinted"] for c in candidates] == [False, False, True]
        assert not candidates[0]["passed"] and "polarity_agrees" in candidates[0]["failed_rules"]
        if entry["state"] == "accepted":
            assert entry["answer"]["hinted"] is True
    assert any(e["state"] == "accepted" for e in answers.values())


def test_without_hint_wrong_answers_are_rejected_with_reasons(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=3, hard_share=1.0, **FAST)) as sim:
        run_pipeline(pipeline(demo.root, run, sim.url, reask={"samples": 1, "hint": False}), run, quiet=True)
    with Ledger(run / "ledger.sqlite") as ledger:
        rows = ledger.db.execute("SELECT state, reason FROM clips WHERE stage = 'teacher'").fetchall()
    assert rows and all(state == "rejected" and reason.startswith("rejected by polarity_agrees") for state, reason in rows)


def test_faults_are_retried_and_broken_answers_are_judged_not_crashed(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    faults = {"rate_429": 0.15, "rate_500": 0.15, "rate_reset": 0.1, "rate_timeout": 0.05, "timeout_hold_s": 3,
              "rate_malformed": 0.1, "rate_truncated": 0.1}
    with SimProcess(SimConfig(port=0, seed=4, **FAST, **faults)) as sim:
        cfg = pipeline(demo.root, run, sim.url, teacher={"timeout_s": 1.0, "max_retries": 8})
        result = run_pipeline(cfg, run, quiet=True)
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
    counts = ledger_counts(run)
    assert counts["accepted"] + counts["rejected"] + counts["failed"] == 10
    assert counts["pending"] == counts["bundled"] == 0
    kinds = set(result.synth.group("retries"))
    assert {"429", "500", "connection", "timeout"} & kinds and sum(result.synth.group("retries").values()) > 0
    assert stats["faults"]


def test_cache_hit_makes_zero_http_calls_and_concurrency_is_bounded(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=6, latency_ms=60, capacity=16)) as sim:
        cfg = pipeline(demo.root, run, sim.url, teacher={"concurrency": 3})
        run_bundle(cfg.bundle_config(), run, quiet=True)
        first = run_synth(cfg, run, quiet=True)
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
        assert stats["max_in_flight"] <= 3 and first.peaks["in_flight"] <= 3
        calls = sim_requests(sim)
        with Ledger(run / "ledger.sqlite") as ledger:  # forget the outcomes, keep the cache
            ledger.db.execute("UPDATE clips SET state = 'bundled', answer = NULL WHERE stage = 'teacher'")
            ledger.commit()
        second = run_synth(cfg, run, quiet=True)
        assert sim_requests(sim) == calls
        assert second["requests"] == 0 and second["cache_hits"] >= second["clips"] > 0
        assert (second["accepted"], second["rejected"]) == (first["accepted"], first["rejected"])


def test_api_key_never_appears_in_outputs(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-cotforge-test-SECRET-9f3a"
    monkeypatch.setenv("COTFORGE_TEACHER_API_KEY", secret)
    run = tmp_path / "run"
    log = tmp_path / "sim.jsonl"
    with SimProcess(SimConfig(port=0, seed=7, log_path=log, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url)
        run_pipeline(cfg, run, quiet=True)
        write_report(cfg, run)
        server_output = sim.output()
    assert secret not in server_output
    for path in [log, *run.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in json.dumps(cfg.public_dump())


def test_unreachable_server_fails_fast_naming_the_url(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    url = "http://127.0.0.1:9/v1"
    began = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="127.0.0.1:9"):
        run_pipeline(pipeline(demo.root, run, url), run, quiet=True)
    assert time.monotonic() - began < 10
    assert sum(ledger_counts(run).values()) == 0  # refused before any decoding


def test_model_not_served_lists_the_served_ones(demo, tmp_path: Path) -> None:
    with SimProcess(SimConfig(port=0, **FAST)) as sim:
        cfg = pipeline(demo.root, tmp_path / "run", sim.url, teacher={"model": "Qwen/Qwen3-Omni-30B-A3B-Instruct"})
        with pytest.raises(TeacherUnavailable, match="it serves: sim/qwen3-omni"):
            run_pipeline(cfg, tmp_path / "run", quiet=True)


def test_refused_mm_kwargs_stop_with_the_server_flag_to_set(demo, tmp_path: Path) -> None:
    with SimProcess(SimConfig(port=0, trust_request_mm_kwargs=False, **FAST)) as sim:
        cfg = pipeline(demo.root, tmp_path / "run", sim.url)
        with pytest.raises(TeacherUnavailable, match="--trust-request-mm-kwargs"):
            run_pipeline(cfg, tmp_path / "run", quiet=True)
        server_cfg = pipeline(demo.root, tmp_path / "run2", sim.url, teacher={"mm_kwargs": "server"})
        run_pipeline(server_cfg, tmp_path / "run2", quiet=True)
    assert ledger_counts(tmp_path / "run2")["accepted"] > 0


def test_a_changed_validator_is_rejudged_from_the_cache_for_free(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    one_sample = {"samples": 1, "hint": False}
    with SimProcess(SimConfig(port=0, seed=8, noise=0.6, **FAST)) as sim:
        loose = pipeline(demo.root, run, sim.url, reask=one_sample, validate={"tolerance": 2.5})
        run_pipeline(loose, run, quiet=True)
        before = ledger_counts(run)
        calls = sim_requests(sim)
        strict = pipeline(demo.root, run, sim.url, reask=one_sample, validate={"tolerance": 0.2})
        with pytest.raises(RunError, match="judged with other"):
            run_export(strict, run)  # export alone never re-judges: it says what to run
        again = run_pipeline(strict, run, quiet=True)
        after = ledger_counts(run)
        assert sim_requests(sim) == calls and again.synth["requests"] == 0, "re-judging must not call the teacher"
        assert again.synth["clips"] == before["accepted"] + before["rejected"] and again.synth["cache_hits"] == again.synth["clips"]
        assert after["accepted"] < before["accepted"] and after["accepted"] + after["rejected"] == before["accepted"] + before["rejected"]
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["config_hash"] == strict.fingerprint() and sum(manifest["shards"]["rows"].values()) == after["accepted"]
        # more samples per clip: only the clips that now need a second sample are asked, once each
        more = pipeline(demo.root, run, sim.url, reask={"samples": 2, "hint": False}, validate={"tolerance": 0.2})
        third = run_pipeline(more, run, quiet=True)
        assert third.synth["requests"] == after["rejected"] == sim_requests(sim) - calls


def test_other_teacher_settings_are_refused_unless_forced(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=8, **FAST)) as sim:
        run_pipeline(pipeline(demo.root, run, sim.url), run, quiet=True)
        other = pipeline(demo.root, run, sim.url, teacher={"temperature": 0.2})
        calls = sim_requests(sim)
        with pytest.raises(RunError, match=r"other teacher settings \(temperature 0.7 -> 0.2\)"):
            run_pipeline(other, run, quiet=True)
        assert sim_requests(sim) == calls
        forced = run_pipeline(other, run, force=True, quiet=True)
        assert forced.synth["requests"] > 0
    assert json.loads((run / "manifest.json").read_text())["config_hash"] == other.fingerprint()


def test_a_run_asked_with_h264_keeps_it_when_the_codec_is_left_unset(demo, tmp_path: Path) -> None:
    """video_codec's default moved from h264 to mjpeg: a run asked before goes on with what it was asked with,
    from its cache, unless a config sets the codec (then it is a change of teacher settings like any other)."""
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=8, **FAST)) as sim:
        first = run_pipeline(pipeline(demo.root, run, sim.url, teacher={"video_codec": "h264"}), run, quiet=True)
        assert first.synth["requests"] > 0
        calls = sim_requests(sim)
        unset = pipeline(demo.root, run, sim.url)
        assert unset.teacher.video_codec == "mjpeg"
        again = run_pipeline(unset, run, quiet=True)
        assert again.synth["requests"] == 0 and sim_requests(sim) == calls and unset.teacher.video_codec == "mjpeg"
        assert unset.for_run({"video_codec": "h264"}).teacher.video_codec == "h264"
        # plan counts what the run sends: H.264's AAC is padded to whole frames, float PCM is not
        mjpeg = pipeline(demo.root, run, sim.url, teacher={"video_codec": "mjpeg"})
        tokens = {name: [c.prompt_tokens for c in run_plan(c, run).clips] for name, c in (("unset", unset), ("mjpeg", mjpeg))}
        assert tokens["unset"] != tokens["mjpeg"], tokens
        with pytest.raises(RunError, match=r"other teacher settings \(video_codec 'h264' -> 'mjpeg'\)"):
            run_pipeline(pipeline(demo.root, run, sim.url, teacher={"video_codec": "mjpeg"}), run, quiet=True)
    assert json.loads((run / "manifest.json").read_text())["config_hash"] == unset.for_run({"video_codec": "h264"}).fingerprint()


def test_keep_all_writes_every_passing_sample(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, noise=0.0, flip_rate=0.0, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url, teacher={"n": 2}, reask={"samples": 2, "keep": "all"})
        run_pipeline(cfg, run, quiet=True)
    manifest = json.loads((run / "manifest.json").read_text())
    assert sum(manifest["shards"]["rows"].values()) == 2 * ledger_counts(run)["accepted"]


def test_media_by_file_url_for_a_server_on_a_shared_filesystem(demo, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    with SimProcess(SimConfig(port=0, seed=10, allowed_local_media_path=shared, log_path=tmp_path / "log.jsonl", **FAST)) as sim:
        cfg = pipeline(demo.root, tmp_path / "run", sim.url, teacher={"media_dir": str(shared / "media")})
        run_pipeline(cfg, tmp_path / "run", quiet=True)
    assert ledger_counts(tmp_path / "run")["accepted"] > 0
    assert len(list((shared / "media").glob("*-mjpeg-pcm_f32le.mp4"))) == 8  # named by the recipe: an old FLAC MJPEG is never reused
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(entry["status"] == 200 for entry in logged)
    with SimProcess(SimConfig(port=0, **FAST)) as sim:  # a server that may not read local files
        cfg = pipeline(demo.root, tmp_path / "run2", sim.url, teacher={"media_dir": str(shared / "media")})
        with pytest.raises(TeacherUnavailable, match="--allowed-local-media-path"):
            run_pipeline(cfg, tmp_path / "run2", quiet=True)


def test_plan_estimates_what_the_server_counts(demo, tmp_path: Path) -> None:
    from cotforge.steps.plan import run_plan

    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=11, noise=0.0, flip_rate=0.0, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url, reask={"samples": 1, "hint": False})
        run_bundle(cfg.bundle_config(), run, quiet=True)
        plan = run_plan(cfg, run)
        stats = run_synth(cfg, run, quiet=True)
    assert len(plan.clips) == 8 and plan.requests_low == 8
    assert all(c.video_tokens > 0 and c.audio_tokens > 0 and c.text_tokens > 100 for c in plan.clips)
    assert plan.prompt_tokens == pytest.approx(stats["prompt_tokens"], rel=0.15)
    assert not plan.completion_observed and plan.completion_per_request == cfg.teacher.max_tokens
    assert run_plan(cfg, run).completion_observed  # after synth, the cache's average is used


@pytest.mark.slow
def test_an_interrupted_run_resumes_without_repeating_a_teacher_call(demo, tmp_path: Path) -> None:
    """Deterministic: a teacher without noise answers each clip in one request and hangs from its 5th request
    on, so four clips are judged and the run cannot finish before Ctrl-C. (With noise, re-asks could spend
    the four answers on one clip, and the wait below for two judged clips ran out.)"""
    import signal

    import yaml

    run = tmp_path / "run"
    log = tmp_path / "sim.jsonl"
    with SimProcess(SimConfig(port=0, seed=12, noise=0.0, flip_rate=0.0, outage_at=5, outage_mode="hang", log_path=log,
                              **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url, teacher={"concurrency": 2, "stall_s": 600})
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(cfg.public_dump()))
        command = [sys.executable, "-m", "cotforge.cli", "run", str(path), "--run", str(run), "-q"]
        # SIG_DFL in the child: under a background job (CI started with `&`) SIGINT arrives ignored, and an
        # ignored SIGINT is inherited across exec, so Ctrl-C would never reach the run.
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait on a condition: two clips judged, the rest held by the hang
            time.sleep(0.2)
            if (run / "ledger.sqlite").exists() and sum(ledger_counts(run)[s] for s in ("accepted", "rejected")) >= 2:
                break
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130 and "re-run the same command to resume" in err, err[-3000:]
    with Ledger(run / "ledger.sqlite") as ledger:
        judged = set(ledger.answers())
    assert 2 <= len(judged) < 8
    log.write_text("")
    with SimProcess(SimConfig(port=0, seed=12, log_path=log, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url, teacher={"concurrency": 2})
        path.write_text(yaml.safe_dump(cfg.public_dump()))
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr[-2000:]
    counts = ledger_counts(run)
    assert counts["accepted"] + counts["rejected"] + counts["failed"] == 10
    # requests cut off by the interrupt are sent again; a clip whose answers were all received is not
    asked_again = {json.loads(line)["key"] for line in log.read_text().splitlines()}
    assert asked_again and not asked_again & judged


def test_a_clip_whose_media_cannot_be_encoded_fails_alone(demo, tmp_path: Path) -> None:
    import asyncio

    from cotforge.executors.pools import WorkerPool
    from cotforge.steps.teacher import TeacherStep
    from cotforge.store.bundles import iter_bundles
    from cotforge.store.cache import ResponseCache
    from cotforge.teacher.client import TeacherClient
    from cotforge.validate import ValidateConfig

    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=13, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url)
        run_bundle(cfg.bundle_config(), run, quiet=True)
        with Ledger(run / "ledger.sqlite") as ledger:
            rows = list(iter_bundles(run / "bundles", ledger.bundle_locations()))[:2]
        rows[0] = {**rows[0], "frames": [b"not a jpeg"]}

        async def go() -> list:
            media = WorkerPool(1)
            try:
                async with TeacherClient(cfg.teacher) as client:
                    step = TeacherStep(cfg.teacher, cfg.reask, ValidateConfig.for_dataset("mosi"), client,
                                       ResponseCache(tmp_path / "cache.sqlite"), media.run)
                    return [await step.process(row) for row in rows]
            finally:
                media.shutdown()

        broken, fine = asyncio.run(go())
    assert broken.state == "failed" and broken.reason.startswith("media encoding failed: ")
    assert fine.state in ("accepted", "rejected")


def test_media_workers_are_rebuilt_after_a_crash() -> None:
    import asyncio

    from cotforge.executors.pools import WorkerCrashed, WorkerPool

    async def go() -> int:
        media = WorkerPool(1)
        try:
            with pytest.raises(WorkerCrashed):
                await media.run(os._exit, 3)  # a worker dying the way a crash inside FFmpeg would
            return await media.run(abs, -7)
        finally:
            media.shutdown()

    assert asyncio.run(go()) == 7


@pytest.mark.slow
def test_cotforge_demo_command(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "cotforge.cli", "demo", "--out", str(out), "--clips", "8", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a simulator, not a model" in done.stdout
    run = out / "run"
    assert {p.name for p in (run / "report").glob("*.png")} == {"scores.png", "confusion.png", "reasons.png",
                                                                 "acceptance_by_gold.png", "throughput.png"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["total"] == 8 and manifest["teacher_models"] == ["sim/qwen3-omni"]
    assert sum(manifest["shards"]["rows"].values()) == manifest["counts"]["states"]["accepted"] > 0
    assert all((run / f["path"]).is_file() for f in manifest["shards"]["files"])


def test_every_command_records_its_stats_and_status_reads_them(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # the simulator draws its faults from the request bytes: 0.5 so that some 500s come whatever the media bytes (none of 8 clips: 0.4 %)
    with SimProcess(SimConfig(port=0, seed=14, rate_500=0.5, **FAST)) as sim:
        cfg = pipeline(demo.root, run, sim.url, teacher={"max_retries": 8})
        run_bundle(cfg.bundle_config(), run, quiet=True)
        synth = run_synth(cfg, run, quiet=True)
        run_export(cfg, run)
    attempts = json.loads((run / "stats.json").read_text())["attempts"]
    assert [a["command"] for a in attempts] == ["bundle", "synth", "export"]
    assert set(attempts[0]["stages"]) == {"read", "decode", "bookkeeping"}
    assert attempts[0]["stages"]["decode"]["counters"]["bundled"] == 8
    assert set(attempts[1]["stages"]) == {"bookkeeping", "teacher", "client"}
    teacher, client = attempts[1]["stages"]["teacher"]["counters"], attempts[1]["stages"]["client"]["counters"]
    assert teacher["requests"] == synth["requests"] > 0 and client["retries/500"] > 0
    status = subprocess.run([sys.executable, "-m", "cotforge.cli", "status", "--run", str(run), "--json"],
                            capture_output=True, text=True, check=True)
    payload = json.loads(status.stdout)
    assert payload["teacher"]["requests"] == teacher["requests"] and payload["teacher"]["retries"]["500"] == client["retries/500"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher_stats"]["retries"]["500"] == client["retries/500"]
