"""Trust under faults: outages stop the run instead of failing clips, bounded paid work, no orphans, safe paths."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from cotforge.config import PipelineConfig
from cotforge.executors.local import run_export, run_pipeline
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.store.ledger import Ledger
from cotforge.teacher.client import TeacherBudgetReached, TeacherUnavailable

FAST = {"latency_ms": 5, "capacity": 8}


def config(root: Path, run: Path, url: str | list[str], **sections) -> PipelineConfig:
    teacher = {"model": "sim/qwen3-omni", "concurrency": 4, "backoff_s": 0.01, "media_workers": 1,
               "splits": ["train", "valid", "test"], "outage_grace_s": 3.0, "breaker_failures": 3}
    teacher.update({"endpoints": url} if isinstance(url, list) else {"url": url})
    data = {"name": "t", "run": str(run), "source": {"dataset": "mosi", "root": str(root)},
            "media": {"fps": 2, "max_frames": 8, "size": 128}, "exec": {"workers": 2, "bundle_part_rows": 4},
            "teacher": teacher, "reask": {"samples": 2}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return PipelineConfig.model_validate(data)


def counts(run: Path) -> dict[str, int]:
    with Ledger(run / "ledger.sqlite") as ledger:
        return ledger.counts().by_state


def teacher_reasons(run: Path) -> list[str]:
    with Ledger(run / "ledger.sqlite") as ledger:
        return [r for (r,) in ledger.db.execute("SELECT reason FROM clips WHERE stage = 'teacher' AND state = 'failed'")]


def shard_rows(run: Path) -> dict[str, str]:
    return {r["id"]: r["target"] for p in sorted((run / "shards").rglob("*.parquet"))
            for r in pq.read_table(p, columns=["id", "target"]).to_pylist()}


def requests(sim: SimProcess) -> int:
    return sum(httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["requests"].values())


@pytest.fixture(scope="module")
def demo(demo_factory):
    return demo_factory("mosi", clips=10, corrupt=1, min_seconds=1.0, max_seconds=2.5, seed=41)


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> dict[str, str]:
    """The shards of an uninterrupted run: what every faulted-then-resumed run must end with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as sim:
        run_pipeline(config(demo.root, run, sim.url), run, quiet=True)
    return shard_rows(run)


@pytest.mark.parametrize("mode", ["refuse", "engine-dead", "hang"])
def test_an_outage_stops_the_run_without_failing_clips_and_resume_finishes(mode: str, demo, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, outage_at=5, outage_mode=mode, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url, teacher={"stall_s": 1.0, "timeout_s": 60.0})
        began = time.monotonic()
        with pytest.raises(TeacherUnavailable, match="has not answered for .* stopping. No clip was failed for it"):
            run_pipeline(cfg, run, quiet=True)
        stopped_after = time.monotonic() - began
    assert stopped_after < 40, "the run stops within the grace period, not after retrying every clip"
    assert not teacher_reasons(run), "an outage is not a clip's failure"
    before = counts(run)
    assert before["failed"] == 1 and before["bundled"] > 0  # the corrupt clip only; the rest wait
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as sim:  # the teacher is back, maybe on another port
        run_pipeline(cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"url": sim.url})}), run, quiet=True)
    assert counts(run)["bundled"] == 0 and counts(run)["failed"] == 1
    assert shard_rows(run) == reference


def test_a_short_outage_is_ridden_out(demo, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, outage_at=4, outage_s=1.5, outage_mode="refuse", **FAST)) as sim:
        result = run_pipeline(config(demo.root, run, sim.url, teacher={"outage_grace_s": 30.0}), run, quiet=True)
    assert result.synth["failed"] == 0 and not teacher_reasons(run)
    assert shard_rows(run) == reference


def test_one_endpoint_down_at_start_and_one_killed_mid_run(demo, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    dead = "http://127.0.0.1:9/v1"
    log = tmp_path / "dying.jsonl"
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as good, \
         SimProcess(SimConfig(port=0, seed=9, outage_at=3, outage_mode="refuse", log_path=log, **FAST)) as dying:
        cfg = config(demo.root, run, [dead, dying.url, good.url])
        run_pipeline(cfg, run, quiet=True)
        served_by_good = requests(good)
    assert not teacher_reasons(run) and shard_rows(run) == reference
    assert served_by_good > 0 and len(log.read_text().splitlines()) >= 2
    attempts = json.loads((run / "stats.json").read_text())["attempts"]
    events = attempts[0]["stages"]["client"]["counters"].get("events", 0)
    assert events >= 2  # taken out at preflight, and down mid-run: said, not silent


def test_a_repeated_teacher_url_spreads_the_run_over_the_replicas(demo, reference, tmp_path: Path) -> None:
    """`--teacher-url A --teacher-url B` is `teacher.endpoints: [A, B]`; one `--teacher-url` is that server alone."""
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as one, SimProcess(SimConfig(port=0, seed=9, **FAST)) as two:
        cfg = config(demo.root, run, ["http://127.0.0.1:9/v1"])  # a YAML naming a dead replica: the flags replace it
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(cfg.public_dump()))
        done = _cli("run", str(path), "--run", str(run), "-q", "--teacher-url", one.url, "--teacher-url", two.url)
        assert done.returncode == 0, done.stderr[-2000:]
        assert requests(one) > 0 and requests(two) > 0
    assert shard_rows(run) == reference
    saved = yaml.safe_load((run / "config.yaml").read_text())["teacher"]
    assert saved["endpoints"] == [one.url, two.url]


def test_a_server_that_answers_empty_choices_costs_at_most_the_cap(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, rate_empty=1.0, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url, reask={"samples": 3, "hint": True})
        result = run_pipeline(cfg, run, quiet=True)
        sent = requests(sim)
    cap = cfg.reask.request_cap(cfg.teacher.n)
    judged = result.synth["clips"]
    assert judged == 9 and sent <= judged * cap and sent == result.synth["requests"]
    with Ledger(run / "ledger.sqlite") as ledger:
        reasons = [r for (r,) in ledger.db.execute("SELECT reason FROM clips WHERE stage = 'teacher'")]
    assert all("no choices" in r or "malformed" in r or "well_formed" in r for r in reasons), reasons[:3]


def test_a_run_budget_stops_the_run_resumably(demo, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url, teacher={"max_requests": 5})
        with pytest.raises(TeacherBudgetReached, match="max_requests=5"):
            run_pipeline(cfg, run, quiet=True)
        assert requests(sim) == 5
        assert not teacher_reasons(run)
        # the budget is the run's, across attempts: a resume with the same budget asks nothing
        with pytest.raises(TeacherBudgetReached):
            run_pipeline(cfg, run, quiet=True)
        assert requests(sim) == 5
        run_pipeline(config(demo.root, run, sim.url), run, quiet=True)
    assert shard_rows(run) == reference


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_leaves_no_process_behind(sig: signal.Signals, demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, outage_at=6, outage_mode="hang", **FAST)) as sim:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(config(demo.root, run, sim.url, teacher={"stall_s": 600}).public_dump()))
        command = [sys.executable, "-m", "cotforge.cli", "run", str(path), "--run", str(run), "-q"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 90
        # From request 6 the server hangs and holds the run (with whatever is in flight then): the kill comes mid-run.
        while time.monotonic() < deadline and httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["outage"] != "active":
            time.sleep(0.1)
        workers = _descendants(proc.pid)
        assert len(workers) >= 2  # the forkserver and its pools are up
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)  # a reader of the pipes is not held by orphans
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and b"re-run the same command to resume" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, [p.cmdline() for p in alive]


def test_one_crashed_media_worker_fails_only_its_own_job() -> None:
    from cotforge.executors.pools import WorkerCrashed, WorkerPool

    async def go() -> list:
        pool = WorkerPool(2)
        try:
            jobs = [pool.run(time.sleep, 0.3) for _ in range(5)] + [pool.run(os._exit, 3)] + [pool.run(abs, -i) for i in range(5)]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            pool.shutdown()

    results = asyncio.run(go())
    crashed = [r for r in results if isinstance(r, WorkerCrashed)]
    assert len(crashed) == 1 and isinstance(results[5], WorkerCrashed)
    assert results[:5] == [None] * 5 and results[6:] == [0, -1 * -1, 2, 3, 4]


def test_an_export_never_publishes_what_a_crashed_one_left(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as sim:
        cfg = config(demo.root, run, sim.url)
        run_pipeline(cfg, run, quiet=True)
    stale = run / "shards.staging" / "train"
    stale.mkdir(parents=True)
    (stale / "part-00007.parquet").write_bytes((next((run / "shards" / "train").glob("*.parquet"))).read_bytes())
    (run / "manifest.json").unlink()  # so the export really rewrites
    run_export(cfg, run)
    manifest = json.loads((run / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["shards"]["files"]} | {f["path"] for f in manifest["eval"]["files"]}
    on_disk = {str(p.relative_to(run)) for folder in ("shards", "eval") for p in (run / folder).rglob("*.parquet")}
    assert on_disk == listed and not (run / "shards.staging").exists()


def test_paths_stay_inside_the_dataset(tmp_path: Path) -> None:
    from cotforge.config import SourceConfig
    from cotforge.steps.read import ReadStep

    root = tmp_path / "data"
    (root / "Raw" / "v").mkdir(parents=True)
    (root / "Raw" / "v" / "1.mp4").write_bytes(b"\0")
    outside = tmp_path / "outside" / "escape"
    outside.mkdir(parents=True)
    (outside / "2.mp4").write_bytes(b"\0")
    (root / "Raw" / "link").symlink_to(outside)
    header = "video_id,clip_id,text,label,mode\n"
    (root / "label.csv").write_text(header + "v,1,ok,1,train\n../../outside/escape,2,up,1,train\nlink,2,via a link,1,train\n")
    refs = list(ReadStep(SourceConfig(dataset="mosi", root=root)).run())
    assert refs[0].error is None
    assert all(r.error and r.error.startswith("path outside the dataset root") for r in refs[1:]), [r.error for r in refs]
    allowed = list(ReadStep(SourceConfig(dataset="mosi", root=root, allow_outside_root=True)).run())
    assert all(r.error is None for r in allowed)
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path,label\n/etc/passwd,1\n../../../../etc/passwd,1\n/dev/zero,1\n")
    bad = list(ReadStep(SourceConfig(dataset="manifest", root=manifest)).run())
    assert [r.error.split(":")[0] for r in bad] == ["path outside the dataset root"] * 3
    zero = list(ReadStep(SourceConfig(dataset="manifest", root=manifest, allow_outside_root=True)).run())[2]
    assert zero.error == "not a regular file: /dev/zero"


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cotforge.cli", *args], capture_output=True, text=True, **kwargs)


def test_read_only_commands_work_on_a_read_only_run_and_writers_say_why_in_one_line(demo, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _cli("bundle", "--root", str(demo.root), "--run", str(run), "-q")
    assert done.returncode == 0, done.stderr
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this machine does not allow a private read-only mount (unshare -m)")
    python = sys.executable
    script = (
        f"mount --bind {run} {run} && mount -o remount,ro,bind {run} && "
        f"{python} -m cotforge.cli status --run {run} --json > {tmp_path}/status.json && "
        f"{python} -m cotforge.cli plan --run {run} > {tmp_path}/plan.txt && "
        f"{python} -m cotforge.cli bundle --root {demo.root} --run {run} -q --retry-failed 2> {tmp_path}/bundle.err; "
        f"echo $? > {tmp_path}/bundle.rc"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "status.json").read_text())["total"] == 10
    assert "prompt tok / clip" in (tmp_path / "plan.txt").read_text()
    error = (tmp_path / "bundle.err").read_text()
    assert (tmp_path / "bundle.rc").read_text().strip() == "2" and "Traceback" not in error
    assert error.startswith("error: cannot write ") and "ledger.sqlite" in error and "read-only file system" in error, error


def test_a_full_disk_stops_with_one_line_and_the_resume_is_whole(demo, tmp_path: Path) -> None:
    import resource

    run = tmp_path / "run"

    def small_disk() -> None:  # writes beyond 64 KiB fail as on a full disk (EFBIG instead of ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    full = _cli("bundle", "--root", str(demo.root), "--run", str(run), "-q", "--set", "exec.bundle_part_rows=2",
                preexec_fn=small_disk)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert full.stderr.startswith("error: cannot write ") and "re-run the same command" in full.stderr
    assert len(full.stderr.strip().splitlines()) <= 3
    again = _cli("bundle", "--root", str(demo.root), "--run", str(run), "-q", "--set", "exec.bundle_part_rows=2")
    assert again.returncode == 0, again.stderr
    status = json.loads(_cli("status", "--run", str(run), "--json").stdout)
    assert status["total"] == 10 and status["states"]["failed"] == 1 and status["states"]["pending"] == 0


@pytest.mark.slow
def test_chaos_ten_kills_at_random_moments_then_the_same_shards(demo, reference, tmp_path: Path) -> None:
    """10 runs SIGKILLed at random moments, resumed each time: the final shards equal an uninterrupted
    run's, and no request is answered twice unless it was in flight at a kill.

    The moments are drawn in the run's own progress, not in wall time (a loaded machine starts a
    process in 1 s or in 6): most kills come right after the teacher's next answer, with a little
    jitter, the others early in a run (starting, reading, decoding)."""
    import random

    rng = random.Random(1234)
    run = tmp_path / "run"
    log = tmp_path / "sim.jsonl"
    kills = 0

    def answered() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    with SimProcess(SimConfig(port=0, seed=9, latency_ms=300, capacity=4, log_path=log)) as sim:
        cfg = config(demo.root, run, sim.url, teacher={"concurrency": 2})
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(cfg.public_dump()))
        command = [sys.executable, "-m", "cotforge.cli", "run", str(path), "--run", str(run), "-q"]
        for _ in range(10):
            before = answered()
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if rng.random() < 0.3:  # early: starting, reading the source, decoding
                time.sleep(rng.uniform(0.3, 2.0))
            else:  # after the teacher's next answer
                deadline = time.monotonic() + 60
                while proc.poll() is None and answered() == before and time.monotonic() < deadline:
                    time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.25))
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait()
        final = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
    print(f"kills: {kills}, requests answered: {answered()}")
    assert kills >= 5, "most runs must be killed mid-way for this test to mean anything"
    assert shard_rows(run) == reference
    records = [json.loads(line) for line in log.read_text().splitlines()]
    repeats = sum(1 for r in records if r["status"] == 200 and r["attempt"] > 0)
    assert repeats <= kills * cfg.teacher.concurrency, (repeats, kills)
    assert counts(run)["pending"] == counts(run)["bundled"] == 0
