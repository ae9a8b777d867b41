"""Growth benchmark: the cost per clip of each bookkeeping stage stays flat as the corpus grows.

The same pipeline (`bundle`, `synth` against a zero-latency simulator, `export`, `status`, report)
runs in this process over corpora of `--sizes` clips (default 1k, 4k, 16k). The corpora are label
files over hard links to a few short clips (`bench/clips.py: clone`): every row has its own clip id
and transcript, so every request and cache key is distinct, while the decoding is cheap. Each stage
is timed where it runs (wall and this thread's CPU, per clip):

  * bundle bookkeeping: recording rows and decode results (ledger rows, bundle parts);
  * ledger updates: judged clips, retargeting, the list of clips waiting for the teacher;
  * cache lookups: the response cache, read before each request and written after it;
  * export, status (`cotforge status --json`), report: each whole command.

The target is a cost per clip at the largest size <= 1.2x that at the smallest, for every stage
(no scan of the ledger per clip, no rewrite of a whole table per clip). Decode and teacher time are
shown for context: they are per clip by nature.

Usage: python bench/growth.py [--sizes 1000 4000 16000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clips import clone, make_clips  # bench/clips.py, beside this script
from cotforge.config import PipelineConfig
from cotforge.executors.local import run_bundle, run_export, run_synth
from cotforge.report import write_report
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.steps.bookkeeping import Bookkeeping
from table import print_table  # bench/table.py, beside this script

STAGES = {
    "bundle bookkeeping": ("admit", "removed", "decoded", "hold_out", "close"),
    "ledger updates": ("retarget", "waiting", "judged", "set_meta", "get_meta"),
    "cache lookups": ("get", "put"),
}


class Clock:
    """Wall and this thread's CPU seconds, summed by stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.stage: str | None = None  # where Bookkeeping's calls are counted now

    @contextlib.contextmanager
    def timed(self, name: str, clock: Callable[[], float] = time.thread_time) -> Iterator[None]:
        wall, cpu = time.perf_counter(), clock()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += clock() - cpu

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Time every Bookkeeping method named in STAGES; calls count only while `self.stage` is set."""
        originals = {}
        for stage, names in STAGES.items():
            for name in names:
                originals[name] = getattr(Bookkeeping, name)
                setattr(Bookkeeping, name, self._wrap(stage, originals[name]))
        try:
            yield
        finally:
            for name, method in originals.items():
                setattr(Bookkeeping, name, method)

    def _wrap(self, stage: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.stage is None:
                return method(*args, **kwargs)
            with self.timed(stage if stage != "bundle bookkeeping" or self.stage == "bundle" else "ledger updates"):
                return method(*args, **kwargs)

        return timed


def corpus(workdir: Path, size: int) -> Path:
    media = make_clips(workdir / "media", 8, seconds=1.0, size=(160, 90), fps=25, audio_rate=16000, channels=1,
                       preset="ultrafast")
    root = workdir / f"corpus-{size}"
    if not (root / "label.csv").exists():
        clone(media, root, size)
    return root


def one_size(workdir: Path, size: int) -> Clock:
    root = corpus(workdir, size)
    run = workdir / f"run-{size}-{time.time_ns()}"
    clock = Clock()
    sim_cfg = SimConfig(port=0, seed=1, capacity=256, latency_ms=0.0, noise=0.0, flip_rate=0.0)
    with SimProcess(sim_cfg) as sim, clock.watching():
        cfg = PipelineConfig.model_validate({
            "name": "growth",
            "source": {"dataset": "mosi", "root": str(root)},
            "teacher": {"url": sim.url, "model": sim_cfg.model},
        })
        whole = time.process_time  # every thread of this process (not the decode workers, not the simulator)
        clock.stage = "bundle"
        with clock.timed("bundle (whole command)", whole):
            run_bundle(cfg, run, quiet=True)
        clock.stage = "synth"
        with clock.timed("synth (whole command)", whole):
            run_synth(cfg, run, quiet=True)
        clock.stage = None
        with clock.timed("export", whole):
            run_export(cfg, run)
        with clock.timed("status", whole):
            status(run)
        with clock.timed("report", whole):
            write_report(cfg, run)
    return clock


def status(run: Path) -> None:
    from cotforge.cli.stages import status as command

    with contextlib.redirect_stdout(io.StringIO()):
        command(run_arg=None, run=run, as_json=True, examples=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-growth-"))
    sizes = sorted(args.sizes)
    one_size(workdir, min(20, sizes[0]))  # imports and first-use set-up are not costs per clip
    clocks = {size: one_size(workdir, size) for size in sizes}
    small, large = sizes[0], sizes[-1]
    names = [*STAGES, "export", "status", "report", "bundle (whole command)", "synth (whole command)"]
    # the whole commands' CPU is this process's: decoding runs in worker processes, answers in the simulator
    rows = [("sizes (clips)", ", ".join(f"{s:,}" for s in sizes)),
            ("per clip, ms", f"wall / CPU at each size; then the cost per clip at {large:,} / at {small:,}")]
    for name in names:
        wall = [clocks[s].wall[name] / s * 1000 for s in sizes]
        cpu = [clocks[s].cpu[name] / s * 1000 for s in sizes]
        target = "" if "whole command" in name else "  (target <= 1.2)"
        rows.append((name, "  ".join(f"{w:.3f}/{c:.3f}" for w, c in zip(wall, cpu, strict=True))
                     + f"   wall {wall[-1] / max(wall[0], 1e-9):.2f}x, CPU {cpu[-1] / max(cpu[0], 1e-9):.2f}x{target}"))
    print_table(rows, "value")


if __name__ == "__main__":
    main()
