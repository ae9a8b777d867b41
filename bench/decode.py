"""Decode benchmark: the marginal CPU of `cotforge bundle` per clip against an in-process full decode,
and the peak memory of the bundle process tree on one long clip.

CPU is that of a whole process tree (bench/tree.py: a cgroup, or /proc polling), so the forkserver's
workers count, and start-up is taken off by differencing: each command runs on the first N clips and
on 2N (default 12 and 24), and (CPU(2N) - CPU(N)) / N is its cost per clip, from the median CPU of
each over `--repeat` rounds (the commands run in a shuffled order each round; the range in brackets
is that of the per-round differences).

  * bundle: `cotforge bundle` (the CLI with its defaults: 2 workers, 2 fps, 448 px, JPEG q90, 16 kHz);
  * full decode (the reference): one process that decodes every video frame and audio packet with
    PyAV on one thread, nothing else;
  * non-reference decode: the same with `skip_frame=NONREF` (the decoder's share of a bundle);
  * ffmpeg -f null: one `ffmpeg -threads 1 ... -ac 1 -ar 16000 -f null -` per clip (the earlier
    baseline: a process start-up per clip flatters what is compared with it).

On a shared machine CPU time itself moves with the load (a busy sibling hyperthread slows every
instruction), so the bench also prints the same ratio measured in one process, clip by clip,
alternating `decode_clip` with the full decode of the same clip: a steadier figure that leaves out
the worker pool and the bookkeeping.

The clips are 10 s, 640x360, 30 fps H.264 (x264 veryfast, with B-frames) + AAC 48 kHz stereo. The
long clip (`--long-minutes`, 0 to skip) is 160x90, 30 fps, AAC 44.1 kHz stereo; the peak of the tree
is the largest sum of proportional set sizes seen every 20 ms (shared pages counted once), with the
sum of resident sets, the sum of each process's own peak and the cgroup's peak beside it.
With `--scaling` it also prints clips/s of the worker pool with 2 workers / 1 next to the machine's
own limit (the same decode in 2 independent processes / 1).

Usage: python bench/decode.py [--clips 12] [--seconds 10] [--repeat 5] [--long-minutes 60] [--scaling] [--workdir DIR]
Needs the [dev] extra (imageio-ffmpeg for the ffmpeg binary).
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

HERE = Path(__file__).resolve()
KINDS = ("bundle", "full", "nonref", "ffmpeg")
MIB = 1024 * 1024


def clip_paths(root: Path) -> list[str]:
    with (root / "label.csv").open(encoding="utf-8", newline="") as handle:
        return [str(root / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4") for row in csv.DictReader(handle)]


def decode_one(path: str, skip_nonref: bool = False) -> None:
    """The reference: every video frame (or every reference frame) and every audio packet, one thread."""
    with av.open(path) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video.thread_type = "NONE"
        video.codec_context.thread_count = 1
        if skip_nonref:
            video.codec_context.skip_frame = "NONREF"
        for packet in container.demux(video, audio):
            for _ in packet.decode():
                pass


def child(kind: str, root: Path) -> None:
    """What a measured child process does (it imports nothing but PyAV, so its start-up is small)."""
    if kind == "ffmpeg":
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        for path in clip_paths(root):
            subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-threads", "1", "-filter_threads", "1", "-i", path,
                            "-ac", "1", "-ar", "16000", "-f", "null", "-"], check=True)
        return
    for path in clip_paths(root):
        decode_one(path, kind == "nonref")


def command(kind: str, root: Path, run: Path) -> list[str]:
    if kind == "bundle":
        return [sys.executable, "-m", "cotforge.cli", "bundle", "--root", str(root), "--run", str(run), "-q"]
    return [sys.executable, str(HERE), "--child", kind, str(root)]


def interleaved(root: Path, rounds: int) -> list[float]:
    """In this process (all its threads), clip by clip: decode_clip CPU / full-decode CPU of the same clip,
    alternating; one ratio a round."""
    from cotforge.config import MediaConfig, SourceConfig
    from cotforge.media.decode import decode_clip
    from cotforge.sources import open_source

    refs = [r for r in open_source(SourceConfig(dataset="mosi", root=root)) if r.error is None]
    cfg = MediaConfig()
    decode_clip(refs[0], cfg)  # first-use set-up is not a per-clip cost
    ratios = []
    for _ in range(rounds):
        ours = reference = 0.0
        for ref in refs:
            began = time.process_time()
            decode_clip(ref, cfg)
            middle = time.process_time()
            decode_one(ref.media_path)
            ours, reference = ours + middle - began, reference + time.process_time() - middle
        ratios.append(ours / reference)
    return ratios


def marginal(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    from clips import make_clips, subset
    from tree import child_env, measure, spread

    n = args.clips
    big = workdir / f"clips-{2 * n}"
    make_clips(big, 2 * n, seconds=args.seconds)
    roots = {n: subset(big, workdir / f"clips-{n}", n), 2 * n: big}
    env = child_env()
    cpu: dict[tuple[str, int], list[float]] = {}
    method = ""
    order = [(kind, size) for kind in KINDS for size in roots]
    for round_ in range(args.repeat):
        random.Random(round_).shuffle(order)
        for kind, size in order:
            run = workdir / "runs" / f"{kind}-{size}-{round_}"
            usage = measure(command(kind, roots[size], run), env=env)
            cpu.setdefault((kind, size), []).append(usage.cpu)
            method = usage.method
            shutil.rmtree(run, ignore_errors=True)

    def ms(kind: str) -> float:
        return (statistics.median(cpu[kind, 2 * n]) - statistics.median(cpu[kind, n])) / n * 1000

    def rounds(kind: str) -> list[float]:
        return [(a - b) / n * 1000 for a, b in zip(cpu[kind, 2 * n], cpu[kind, n], strict=True)]

    def line(kind: str) -> str:
        per_round = rounds(kind)
        return f"{ms(kind):.1f} ms  [{min(per_round):.1f}-{max(per_round):.1f}]"

    def ratio(a: str, b: str, target: str = "") -> str:
        per_round = [x / y for x, y in zip(rounds(a), rounds(b), strict=True) if y > 0]
        spread_ = f"[{min(per_round):.2f}-{max(per_round):.2f}]" if per_round else ""
        return f"{ms(a) / ms(b):.2f}x  {spread_}{target}"

    inproc = interleaved(big, args.repeat)
    return [
        ("clips", f"{n} and {2 * n} ({args.seconds:g} s, 640x360, 30 fps H.264 + AAC 48 kHz stereo)"),
        ("CPU counted", f"whole process tree ({method}); {args.repeat} rounds"),
        ("bundle marginal CPU per clip", line("bundle")),
        ("full decode (in-process, 1 thread) per clip", line("full")),
        ("non-reference decode per clip", line("nonref")),
        ("ffmpeg -f null per clip (a process each)", line("ffmpeg")),
        ("bundle / full decode (whole tree, marginal)", ratio("bundle", "full", "  (target <= 0.90)")),
        ("bundle / ffmpeg -f null (whole tree, marginal)", ratio("bundle", "ffmpeg")),
        ("non-reference decode / full decode", ratio("nonref", "full")),
        ("in one process, clip by clip: decode_clip / full decode", f"{spread(inproc, '{:.2f}')}x  (median [min-max])"),
    ]


def long_memory(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    from clips import long_clip
    from tree import child_env, measure

    root = long_clip(workdir / f"long-{args.long_minutes:g}", args.long_minutes)
    run = workdir / "runs" / "long"
    shutil.rmtree(run, ignore_errors=True)
    usage = measure(command("bundle", root, run), env=child_env())
    shutil.rmtree(run, ignore_errors=True)
    cgroup = f"; cgroup peak {usage.peak_cgroup / MIB:.0f} MiB (page cache included)" if usage.peak_cgroup else ""
    return [
        (f"bundle tree peak memory (PSS), one {args.long_minutes:g}-minute 160x90 clip",
         f"{usage.peak_pss / MIB:.0f} MiB  (target <= 512)"),
        ("  peak sum of RSS; sum of each process's own peak", f"{usage.peak_rss / MIB:.0f} MiB; {usage.peak_hwm / MIB:.0f} MiB{cgroup}"),
        ("  CPU, wall", f"{usage.cpu:.1f} s, {usage.wall:.1f} s"),
    ]


def scaling(workdir: Path, clips: int) -> list[tuple[str, str]]:
    import asyncio
    import multiprocessing

    from cotforge.config import MediaConfig, SourceConfig
    from cotforge.executors.pools import WorkerPool
    from cotforge.sources import open_source
    from cotforge.steps.decode import DecodeStep

    refs = [r for r in open_source(SourceConfig(dataset="mosi", root=workdir / f"clips-{2 * clips}")) if r.error is None]
    cfg = MediaConfig()

    def pool_rate(workers: int) -> float:
        step = DecodeStep(cfg)

        async def go() -> float:
            pool = WorkerPool(workers)
            try:
                await asyncio.gather(*(pool.run(step.process, ref) for ref in refs[:workers]))  # workers up first
                slots = asyncio.Semaphore(2 * workers)

                async def one(ref) -> object:
                    async with slots:
                        return await pool.run(step.process, ref)

                began = time.perf_counter()
                await asyncio.gather(*(one(ref) for ref in refs))
                return time.perf_counter() - began
            finally:
                pool.shutdown()

        return len(refs) / asyncio.run(go())

    def independent_rate(processes: int) -> float:
        ctx = multiprocessing.get_context("forkserver")
        start = ctx.Barrier(processes + 1)
        workers = [ctx.Process(target=_decode_share, args=(refs[i::processes], cfg, start)) for i in range(processes)]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        return len(refs) / (time.perf_counter() - began)

    one, two = pool_rate(1), pool_rate(2)
    alone, pair = independent_rate(1), independent_rate(2)
    return [
        ("clips/s 2 workers / 1 worker", f"{two / one:.2f}x"),
        ("machine limit: 2 independent processes / 1", f"{pair / alone:.2f}x  (same decode, no pool, no IPC)"),
        ("pool scaling / machine limit", f"{(two / one) / (pair / alone):.2f}"),
    ]


def _decode_share(refs: list, cfg: object, start: object) -> None:
    from cotforge.media.decode import decode_clip

    start.wait()
    for ref in refs:
        decode_clip(ref, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12, help="N: the commands run on N and 2N clips")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of every command; 0 skips the CPU part")
    parser.add_argument("--long-minutes", type=float, default=60.0, help="length of the long clip; 0 skips it")
    parser.add_argument("--scaling", action="store_true", help="also measure the worker pool's scaling")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return

    from table import print_table  # bench/table.py, beside this script

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-decode-"))
    rows = marginal(args, workdir) if args.repeat > 0 else []
    if args.long_minutes > 0:
        rows += long_memory(args, workdir)
    if args.scaling:
        rows += scaling(workdir, args.clips)
    print_table(rows, "value")


if __name__ == "__main__":
    main()
