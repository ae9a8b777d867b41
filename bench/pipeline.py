"""End-to-end benchmarks against the teacher simulator at a fixed capacity.

1. `cotforge run` (decode -> teacher -> validate -> shards), one request per clip (no noise): clips/s
   / the simulator's capacity C/L (target >= 0.90: the pipeline is never the bottleneck), and the
   wall time of a warm re-run / the first run (target <= 0.05: resume rewrites nothing).

2. Re-asking (`--reask`, default on): `cotforge synth` over a bundled run against a simulator whose
   answers fail validation often (hard clips and flipped polarities: about 3 requests per clip with
   the default 3 samples + a hinted attempt), at each capacity C of `--reask-capacity` (default 8 and
   64), service time L = `--latency-ms`, for each codec of `--codec`. From the simulator's own request
   log (a proxy would take CPU beside it): requests/s over the steady part of the run (from the first
   moment the server had C requests in service to the last, dips between them included) / C/L
   (target >= 0.95), and separately the start-up (command start to first request), the ramp (first
   request to C in service), the tail (the last moment C were in service to the last answer) and
   requests/s from the first request to the last answer. From the synth command's
   whole process tree (a cgroup, or /proc polling): client CPU per request between the first request
   and the last answer, media muxing and its workers included; and the synth process's own share (its
   event loop and threads), which one core bounds. The simulator's own CPU per request
   is shown beside it: on a small machine it shares the same cores. 800 dataset rows (640 clips judged,
   about 2,100 requests) keep the run at C=64 several seconds past its first half-second, in which the
   first clips' media are still being muxed; with half as many that ramp weighed on the steady figure.

The default server of case 1 (C=16, L=2 s: 8 clips/s) is several times faster than a real
Qwen3-Omni-30B on one H100 (about 1 request/s at concurrency 10), so the bound is generous.

Usage: python bench/pipeline.py [--clips 320] [--capacity 16] [--latency-ms 2000]
                                [--reask-clips 800] [--reask-capacity 8 64] [--reask-latency-ms 200]
                                [--codec h264 mjpeg] [--no-run] [--no-reask] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import bisect
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from table import print_table  # bench/table.py, beside this script
from tree import child_env, measure, process_cpu

if __name__ == "__main__":
    # Only where the bench runs: a pool worker of case 1 (which runs `run_pipeline` in this process) starts
    # through the forkserver and first re-runs this script as `__mp_main__` (multiprocessing's main fix-up),
    # and these imports cost it 1-2 s of start-up that a worker of `cotforge run` from the CLI does not pay.
    from cotforge.config import BundleConfig, PipelineConfig
    from cotforge.demo.writer import make_demo_dataset
    from cotforge.executors.local import run_bundle, run_pipeline
    from cotforge.report import write_report
    from cotforge.sim.server import SimConfig, SimProcess
    from cotforge.store.ledger import Ledger

# Answers that fail validation often enough for about 3 requests per clip with the default re-asking.
REASK_SIM = {"noise": 0.3, "flip_rate": 0.1, "hard_share": 0.75}


def run_case(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    data = workdir / "data-run"
    if not (data / "demo.json").exists():
        make_demo_dataset(data, "mosi", args.clips, seed=21, min_seconds=2.0, max_seconds=8.0)
    run = workdir / f"run-{time.time_ns()}"
    sim_cfg = SimConfig(port=0, seed=1, capacity=args.capacity, latency_ms=args.latency_ms, noise=0.0, flip_rate=0.0)
    with SimProcess(sim_cfg) as sim:
        cfg = PipelineConfig.model_validate({
            "name": "bench",
            "source": {"dataset": "mosi", "root": str(data)},
            "exec": {"workers": 2},
            "teacher": {"url": sim.url, "model": sim_cfg.model, "simulated": True,
                        "concurrency": args.capacity * 2, "media_workers": 1},
            "reask": {"samples": 1, "hint": False},
        })
        began = time.perf_counter()
        first = run_pipeline(cfg, run, quiet=True)
        first_wall = time.perf_counter() - began
        write_report(cfg, run)  # `cotforge run` writes the report too; timed separately below
        report_wall = time.perf_counter() - began - first_wall
        began = time.perf_counter()
        warm = run_pipeline(cfg, run, quiet=True)
        write_report(cfg, run)
        warm_wall = time.perf_counter() - began
    judged = first.synth["clips"]
    capacity = args.capacity / (args.latency_ms / 1000)
    rate = judged / first_wall
    manifest = json.loads((run / "manifest.json").read_text())
    with Ledger(run / "ledger.sqlite") as ledger:
        judged_at = sorted(t for (t,) in ledger.db.execute("SELECT judged_at FROM clips WHERE judged_at IS NOT NULL"))
    steady = (len(judged_at) - 1) / (judged_at[-1] - judged_at[0])
    return [
        ("clips judged / requests sent (first run)", f"{judged} / {first.synth['requests']}"),
        ("simulator capacity C/L", f"{capacity:.1f} req/s (C={args.capacity}, L={args.latency_ms:g} ms)"),
        ("pipeline clips/s / capacity", f"{rate / capacity:.3f}x  (target >= 0.90)"),
        ("  steady state (first to last judged clip) / capacity", f"{steady / capacity:.3f}x"),
        ("  start-up + first answer + export", f"{first_wall - judged / capacity:.1f} s over the ideal {judged / capacity:.0f} s"),
        ("warm re-run wall / first run wall (both with report)", f"{warm_wall / (first_wall + report_wall):.3f}x  (target <= 0.05)"),
        ("warm re-run: teacher requests, clips decoded", f"{warm.synth['requests']}, {warm.bundle['bundled']}"),
        ("warm re-run rewrote shards", str(bool(warm.export["rewritten"]))),
        ("accepted rows in shards", str(sum(manifest["shards"]["rows"].values()))),
    ]


def _alive_cpu(pid: int) -> float:
    """CPU seconds of a process that must still be running (the simulator, between its requests)."""
    cpu = process_cpu(pid)
    if cpu is None:
        raise RuntimeError(f"process {pid} exited during the benchmark")
    return cpu


def bundled(args: argparse.Namespace, workdir: Path) -> Path:
    """A run folder with `--reask-clips` clips bundled (made once; each case works on a copy)."""
    base = workdir / f"bundled-{args.reask_clips}"
    if not (base / "ledger.sqlite").exists():
        data = workdir / f"data-reask-{args.reask_clips}"  # a dataset of another size is another folder
        if not (data / "demo.json").exists():
            make_demo_dataset(data, "mosi", args.reask_clips, seed=23, min_seconds=2.0, max_seconds=8.0)
        cfg = BundleConfig.model_validate({"source": {"dataset": "mosi", "root": str(data)}})
        run_bundle(cfg, base, quiet=True)
    return base


def reask_case(base: Path, workdir: Path, capacity: int, latency_ms: float, codec: str) -> dict[str, float]:
    run = workdir / f"synth-C{capacity}-{codec}-{time.time_ns()}"
    shutil.copytree(base, run)
    log = run.with_suffix(".jsonl")
    sim_cfg = SimConfig(port=0, seed=1, capacity=capacity, latency_ms=latency_ms, log_path=log, **REASK_SIM)
    concurrency = max(64, capacity + capacity // 4)  # the default, or enough to keep C requests in service
    with SimProcess(sim_cfg) as sim:
        sim_began = _alive_cpu(sim._process.pid)
        usage = measure(
            [sys.executable, "-m", "cotforge.cli", "synth", "--run", str(run), "--teacher-url", sim.url,
             "--model", sim_cfg.model, "--concurrency", str(concurrency), "--set", f"teacher.video_codec={codec}", "-q"],
            env=child_env(), memory=False, interval=0.05,
        )
        sim_cpu = _alive_cpu(sim._process.pid) - sim_began
    records = [json.loads(line) for line in log.read_text().splitlines()]
    answered = [r for r in records if r["status"] == 200]
    assert len(answered) == len(records), f"the simulator refused {len(records) - len(answered)} requests"
    with Ledger(run / "ledger.sqlite") as ledger:
        clips = ledger.db.execute("SELECT COUNT(*) FROM clips WHERE judged_at IS NOT NULL").fetchone()[0]
    shutil.rmtree(run, ignore_errors=True)
    latency = latency_ms / 1000
    arrivals = sorted(r["time"] for r in answered)
    done = sorted(r["time"] + r["latency_ms"] / 1000 for r in answered)
    first, last_done = arrivals[0], done[-1]
    # The server is full when C requests are in service (each for L before its answer). Steady: from the
    # first moment it is full to the last, dips between them included; before it is the start-up (the
    # command's start, then the ramp while the first clips' media are muxed), after it the tail.
    starts = sorted(t - latency for t in done)
    full = [t for i, t in enumerate(done) if bisect.bisect_left(starts, t) - i >= capacity]  # in service just before it
    full_from, full_until = (full[0], full[-1]) if full else (None, None)
    steady = None  # a client that never fills the server has no steady state: only its overall rate counts
    if full_from is not None and full_until > full_from:
        steady = sum(full_from < t <= full_until for t in done) / (full_until - full_from)
    requests = len(answered)
    return {
        "clips": clips,
        "requests": requests,
        "ideal": capacity / latency,
        "steady": steady,
        "overall": requests / (last_done - first),
        "startup": first - usage.started,
        "startup_cpu": usage.cpu_at(first),
        "ramp": None if full_from is None else full_from - first,
        "steady_seconds": 0.0 if full_from is None else full_until - full_from,
        "tail": None if full_until is None else last_done - full_until,
        "shutdown": usage.started + usage.wall - last_done,
        "cpu_per_request": (usage.cpu_at(last_done) - usage.cpu_at(first)) / requests * 1000,
        "loop_cpu_per_request": (usage.root_cpu_at(last_done) - usage.root_cpu_at(first)) / requests * 1000,
        "sim_cpu_per_request": sim_cpu / requests * 1000,
        "method": usage.method,
    }


def reask_rows(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    base = bundled(args, workdir)
    rows: list[tuple[str, str]] = [
        ("re-asking: cotforge synth", f"simulator {', '.join(f'{k}={v}' for k, v in REASK_SIM.items())}; "
                                      f"L={args.reask_latency_ms:g} ms"),
    ]
    for capacity in args.reask_capacity:
        for codec in args.codec:
            r = reask_case(base, workdir, capacity, args.reask_latency_ms, codec)
            rows += [
                (f"C={capacity}, {codec}: clips, requests (per clip)", f"{r['clips']}, {r['requests']} ({r['requests'] / r['clips']:.2f})"),
                ("  requests/s steady / C/L (simulator's log)",
                 f"{r['steady'] / r['ideal']:.3f}x of {r['ideal']:.0f} req/s over {r['steady_seconds']:.1f} s  (target >= 0.95)"
                 if r["steady"] is not None else f"none: never C in service (target >= 0.95 of {r['ideal']:.0f} req/s)"),
                ("  requests/s first request to last answer / C/L", f"{r['overall'] / r['ideal']:.3f}x"),
                ("  client CPU per request, muxing included", f"{r['cpu_per_request']:.1f} ms  (whole tree, {r['method']})"),
                ("    of which the synth process (its event loop)",
                 f"{r['loop_cpu_per_request']:.1f} ms  (one core: {1000 / max(r['loop_cpu_per_request'], 1e-9):.0f} req/s at most)"),
                ("  start-up: command start to first request", f"{r['startup']:.1f} s ({r['startup_cpu']:.1f} CPU s)"),
                ("  ramp: first request to C in service",
                 f"{r['ramp']:.2f} s" if r["ramp"] is not None else "(never C in service)"),
                ("  tail: server below C to last answer; then exit",
                 f"{r['tail']:.2f} s; {r['shutdown']:.2f} s" if r["tail"] is not None
                 else f"(never C in service); {r['shutdown']:.2f} s"),
                ("  simulator CPU per request (same cores)", f"{r['sim_cpu_per_request']:.1f} ms"),
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=2000.0)
    parser.add_argument("--reask-clips", type=int, default=800)
    parser.add_argument("--reask-capacity", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--reask-latency-ms", type=float, default=200.0)
    parser.add_argument("--codec", nargs="+", choices=["h264", "mjpeg"], default=["h264", "mjpeg"])
    parser.add_argument("--no-run", dest="run", action="store_false", help="skip case 1 (`cotforge run`)")
    parser.add_argument("--no-reask", dest="reask", action="store_false", help="skip case 2 (re-asking)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-pipeline-"))
    rows: list[tuple[str, str]] = []
    if args.run:
        rows += run_case(args, workdir)
    if args.reask:
        rows += reask_rows(args, workdir)
    print_table(rows, "value")


if __name__ == "__main__":
    main()
