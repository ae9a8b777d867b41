"""Scale-out benchmark: the Ray executor against the local one, two half-size endpoints against one, driver memory.

Prints, measured side by side in one run on the same input (every measured command is a `cotforge run`
process of its own, so its peak RSS is its own):
  * clips/s of `--executor ray` (a private Ray instance on this machine, exec.workers +
    teacher.media_workers CPUs) / clips/s of the local executor on the same clips, with a simulator
    fast enough that this machine's CPUs bound the run: end to end (Ray's start-up and shutdown
    included) and in steady state (first to last judged clip); target >= 0.80, Ray's overhead does
    not eat a single node;
  * clips/s with two simulator endpoints of capacity C/2 each (`teacher.endpoints`) / with one
    endpoint of capacity C, the simulator bounding the run, the same requests in flight in
    total (2C); target >= 0.90;
  * the Ray driver's peak RSS at two sizes (default 500 and --clips), at the end of the streaming stage
    (decode + teacher; recorded by the executor in RUN/stats.json) and for the whole command (with
    export and report): bounded when the two sizes are close.

Inputs: a few short generated clips, and label files of any length whose rows are hard links to them
(distinct keys and texts, so every row is decoded, muxed and asked like a clip of its own). Every clip
needs exactly one request (no noise, one sample, no hint).

Usage: python bench/scale.py [--parts executors,endpoints] [--clips 2000] [--rss-clips 500] [--endpoint-clips 300]
                             [--capacity 16] [--latency-ms 3000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cotforge.config import PipelineConfig
from cotforge.demo.writer import make_demo_dataset
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.store.ledger import Ledger
from table import print_table  # bench/table.py, beside this script
from tree import child_env, measure

MEASURED = """
import json, resource, sys
from cotforge.cli import app
code = 0
try:
    app(args=sys.argv[2:], prog_name="cotforge")
except SystemExit as exit:
    code = exit.code or 0
with open(sys.argv[1], "w") as out:  # the driver's own peak RSS; CPU is measured over the whole tree outside
    json.dump({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, out)
sys.exit(code)
"""


def expand(base: Path, out: Path, rows: int) -> Path:
    """A dataset of `rows` label rows whose clips are hard links to the few clips of `base`."""
    if (out / "label.csv").exists():
        return out
    with (base / "label.csv").open(encoding="utf-8-sig", newline="") as f:
        source = list(csv.DictReader(f))
    written = []
    for i in range(rows):
        row = dict(source[i % len(source)])
        clip = base / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4"
        row["video_id"], row["clip_id"] = f"v{i // 8:05d}", str(i % 8)
        row["text"] = f"{row['text']} ({i})"  # a request of its own: the same media and text would be a cache hit
        target = out / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(clip, target)
        written.append(row)
    with (out / "label.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(source[0]))
        writer.writeheader()
        writer.writerows(written)
    return out


def config(data: Path, urls: list[str], concurrency: int) -> PipelineConfig:
    teacher = {"url": urls[0], "model": "sim/qwen3-omni", "simulated": True, "concurrency": concurrency, "media_workers": 1,
               "splits": ["train", "valid", "test"]}
    if len(urls) > 1:
        teacher["endpoints"] = urls
    return PipelineConfig.model_validate({
        "name": "bench-scale",
        "source": {"dataset": "mosi", "root": str(data)},
        "media": {"fps": 2, "max_frames": 8, "size": 224},
        "exec": {"workers": 2},
        "teacher": teacher,
        "reask": {"samples": 1, "hint": False},
    })


def measure_run(cfg: PipelineConfig, run: Path, executor: str, workdir: Path) -> dict:
    """One `cotforge run` in a process of its own: wall, clips judged, steady clips/s, the driver's peak RSS and
    the CPU of its whole tree (bench/tree.py: Ray's raylet and workers and the forkserver's pools included)."""
    pipeline = workdir / f"{run.name}.yaml"
    pipeline.write_text(yaml.safe_dump(cfg.public_dump()), encoding="utf-8")
    result = workdir / f"{run.name}.json"
    env = {**child_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    try:
        usage = measure([sys.executable, "-c", MEASURED, str(result), "run", str(pipeline), "--run", str(run),
                         "--executor", executor, "--quiet"], env=env, interval=0.2, memory=False)
    except RuntimeError as err:
        raise SystemExit(f"cotforge run --executor {executor} failed: {err}") from None
    driver = json.loads(result.read_text())
    with Ledger(run / "ledger.sqlite", read_only=True) as ledger:
        judged_at = sorted(t for (t,) in ledger.db.execute("SELECT judged_at FROM clips WHERE judged_at IS NOT NULL"))
    stats = json.loads((run / "stats.json").read_text())["attempts"]
    cluster = next((a["stages"]["cluster"] for a in stats if "cluster" in a["stages"]), None)
    return {
        "wall": usage.wall, "judged": len(judged_at), "rate": len(judged_at) / usage.wall,
        "steady": (len(judged_at) - 1) / max(judged_at[-1] - judged_at[0], 1e-9),
        "rss_mb": driver["rss_mb"], "tree_cpu_s": usage.cpu, **(cluster or {}).get("peaks", {}),
    }


def sims(capacities: list[int], latency_ms: float) -> list[SimProcess]:
    return [SimProcess(SimConfig(port=0, seed=1, capacity=c, latency_ms=latency_ms, noise=0.0, flip_rate=0.0)) for c in capacities]


def run_with(capacities: list[int], latency_ms: float, data: Path, executor: str, workdir: Path, name: str, concurrency: int) -> dict:
    servers = sims(capacities, latency_ms)
    try:
        return measure_run(config(data, [s.url for s in servers], concurrency), workdir / name, executor, workdir)
    finally:
        for server in servers:
            server.stop()


def compare_executors(args: argparse.Namespace, base: Path, workdir: Path, stamp: int) -> list[tuple[str, str]]:
    """Local vs Ray executor on one machine, CPU-bound, and the Ray driver's peak RSS at two sizes."""
    # one machine: the CPUs bound the run (the simulator answers 128 requests/s). Both executors run twice,
    # in the order local, ray, ray, local, so that a change of load on a shared machine hits both alike.
    data = expand(base, workdir / f"data-{args.clips}", args.clips)
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for i, executor in enumerate(("local", "ray", "ray", "local")):
        runs[executor].append(run_with([64], 500.0, data, executor, workdir, f"{executor}-{i}-{stamp}", 128))
    small = run_with([64], 500.0, expand(base, workdir / f"data-{args.rss_clips}", args.rss_clips), "ray", workdir,
                     f"ray-small-{stamp}", 128)
    local, on_ray = runs["local"], runs["ray"]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def ratio(key: str) -> str:
        pairs = [r[key] / l[key] for r, l in zip(on_ray, reversed(local))]  # (ray 1, local 2), (ray 2, local 1)
        return f"{mean(pairs):.3f}x  ({' / '.join(f'{p:.2f}' for p in pairs)})"

    cpu_per_clip = {name: mean([r["tree_cpu_s"] / r["judged"] for r in rs]) * 1000 for name, rs in runs.items()}
    return [
        ("one machine, clips (CPU-bound); runs in order", f"{args.clips}; local, ray, ray, local"),
        ("local executor clips/s (end to end / steady)", " ; ".join(f"{r['rate']:.1f} / {r['steady']:.1f}" for r in local)),
        ("ray executor clips/s (end to end / steady)", " ; ".join(f"{r['rate']:.1f} / {r['steady']:.1f}" for r in on_ray)),
        ("ray / local clips/s, end to end", f"{ratio('rate')}  (target >= 0.80)"),
        ("ray / local clips/s, steady state", f"{ratio('steady')}  (target >= 0.80)"),
        ("CPU ms per clip, whole process tree: local / ray", f"{cpu_per_clip['local']:.0f} / {cpu_per_clip['ray']:.0f}"),
        ("wall local / ray (s)", f"{mean([r['wall'] for r in local]):.1f} / {mean([r['wall'] for r in on_ray]):.1f}"),
        (f"ray driver peak RSS, streaming stage: {args.rss_clips} / {args.clips} clips",
         f"{small['driver_rss_mb']:.0f} MB / {max(r['driver_rss_mb'] for r in on_ray):.0f} MB"),
        ("  of which heap / object-store pages mapped, at its end",
         f"{small.get('driver_heap_mb', 0):.0f} + {small.get('driver_object_store_pages_mb', 0):.0f} MB / "
         f"{on_ray[0].get('driver_heap_mb', 0):.0f} + {on_ray[0].get('driver_object_store_pages_mb', 0):.0f} MB"),
        (f"ray driver peak RSS, whole command: {args.rss_clips} / {args.clips} clips",
         f"{small['rss_mb']:.0f} MB / {max(r['rss_mb'] for r in on_ray):.0f} MB  (export buffers up to export.shard_mb per split)"),
        (f"local command peak RSS, {args.clips} clips", f"{max(r['rss_mb'] for r in local):.0f} MB"),
    ]


def compare_endpoints(args: argparse.Namespace, base: Path, workdir: Path, stamp: int) -> list[tuple[str, str]]:
    """One endpoint of capacity C vs two of C/2, the simulator bounding the run, the same requests in flight."""
    c, latency = args.capacity, args.latency_ms
    half = max(1, c // 2)
    few = expand(base, workdir / f"data-{args.endpoint_clips}", args.endpoint_clips)
    # in the order one, two, two, one, so that a change of load on a shared machine hits both alike
    runs: dict[str, list[dict]] = {"one": [], "two": []}
    for i, name in enumerate(("one", "two", "two", "one")):
        servers, concurrency = ([2 * half], 4 * half) if name == "one" else ([half, half], 2 * half)
        runs[name].append(run_with(servers, latency, few, "local", workdir, f"{name}-{i}-{stamp}", concurrency))
    one, two = runs["one"], runs["two"]

    def ratio(key: str) -> str:
        pairs = [t[key] / o[key] for t, o in zip(two, reversed(one))]
        return f"{sum(pairs) / len(pairs):.3f}x  ({' / '.join(f'{p:.2f}' for p in pairs)})"

    return [
        (f"endpoints, clips (simulator-bound, C={2 * half}, L={latency:g} ms); runs in order", f"{args.endpoint_clips}; one, two, two, one"),
        ("one endpoint C: clips/s (end to end / steady)", " ; ".join(f"{r['rate']:.2f} / {r['steady']:.2f}" for r in one)
         + f"  (ideal C/L {2 * half / latency * 1000:.2f})"),
        ("two endpoints C/2: clips/s (end to end / steady)", " ; ".join(f"{r['rate']:.2f} / {r['steady']:.2f}" for r in two)),
        ("two half endpoints / one endpoint, end to end", f"{ratio('rate')}  (target >= 0.90)"),
        ("two half endpoints / one endpoint, steady state", ratio("steady")),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000, help="clips of the local-vs-ray runs (and the large RSS point)")
    parser.add_argument("--endpoint-clips", type=int, default=300, help="clips of the one-vs-two-endpoint runs")
    parser.add_argument("--capacity", type=int, default=16, help="C: requests the single endpoint serves at once")
    # C/L must stay well below what this machine decodes and muxes (about 14 clips/s on 2 busy cores), or
    # the CPUs, not the endpoints, bound both runs: 16 / 3 s = 5.3 clips/s
    parser.add_argument("--latency-ms", type=float, default=3000.0, help="L: service time of a request")
    parser.add_argument("--parts", default="executors,endpoints", help="which comparisons: executors, endpoints, or both")
    parser.add_argument("--rss-clips", type=int, default=500, help="clips of the small RSS point (a Ray run)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-scale-"))
    base = workdir / "base"
    if not (base / "demo.json").exists():
        make_demo_dataset(base, "mosi", 12, seed=31, min_seconds=1.0, max_seconds=2.0)
    stamp = time.time_ns()

    parts = set(args.parts.split(","))
    rows: list[tuple[str, str]] = []
    if "executors" in parts:
        rows += compare_executors(args, base, workdir, stamp)
    if "endpoints" in parts:
        rows += compare_endpoints(args, base, workdir, stamp)
    print_table(rows, "value")


if __name__ == "__main__":
    main()
