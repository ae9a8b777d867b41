"""Decode benchmark: cotforge's bundle stage against the physical limit and a naive baseline.

Prints ratios measured side by side in one run on the same generated clips:
  * bundle CPU seconds per clip / CPU seconds of `ffmpeg -f null` decoding the same clip (the limit:
    H.264 cannot be bundled without decoding it; ffmpeg also resamples audio to 16 kHz mono);
  * the same ratio for a naive baseline (OpenCV reads every frame and keeps every k-th, plus an
    ffmpeg subprocess that extracts the audio);
  * clips/s of the bundle stage with 2 worker processes / with 1, next to the machine's own limit for
    the same decode (the clips split over 2 independent processes / 1 process, nothing shared).

Usage: python bench/decode.py [--clips 12] [--seconds 8 12] [--repeat 3] [--workdir DIR]
Needs the [dev] extra (imageio-ffmpeg for the ffmpeg binary, opencv-python-headless for the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import multiprocessing.synchronize
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

from cotforge.config import MediaConfig, SourceConfig
from cotforge.media.decode import decode_clip
from cotforge.executors.pools import WorkerPool
from cotforge.steps.decode import DecodeStep
from cotforge.sources import open_source
from cotforge.demo.writer import make_demo_dataset
from table import print_table  # bench/table.py, beside this script

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ffmpeg_null_cpu(path: str) -> float:
    """CPU seconds of a full single-threaded decode of video and audio (audio to 16 kHz mono)."""
    before = children_cpu()
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-threads", "1", "-filter_threads", "1", "-i", path,
         "-ac", "1", "-ar", "16000", "-f", "null", "-"],
        check=True,
    )
    return children_cpu() - before


def bundle_cpu(ref, cfg: MediaConfig) -> float:
    before = self_cpu()
    decode_clip(ref, cfg)
    return self_cpu() - before


def naive_cpu(path: str, cfg: MediaConfig) -> float:
    """OpenCV reads every frame (keeping every k-th, resized and JPEG-encoded) + ffmpeg extracts audio."""
    import cv2
    import soundfile as sf

    before, before_children = self_cpu(), children_cpu()
    cap = cv2.VideoCapture(path)
    native = cap.get(cv2.CAP_PROP_FPS) or 30.0
    every = max(1, round(native / cfg.fps))
    index = kept = 0
    while kept < cfg.max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        if index % every == 0:
            h, w = frame.shape[:2]
            scale = min(1.0, cfg.size / max(h, w))
            small = cv2.resize(frame, (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2))
            cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            kept += 1
        index += 1
    cap.release()
    wav = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(cfg.sample_rate), "-f", "wav", "-"],
        check=True, capture_output=True,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC")
    return (self_cpu() - before) + (children_cpu() - before_children)


def jpeg_ratio(path: str, cfg: MediaConfig, frames: int = 20) -> float:
    """CPU of Pillow's JPEG path (what cotforge uses) / OpenCV's, per frame, on frames of the same clip."""
    import av
    import cv2

    from cotforge.media.encode import frame_to_jpeg, scaled_size

    with av.open(path) as container:
        decoded = [f for _, f in zip(range(frames), container.decode(video=0), strict=False)]
    w, h = scaled_size(decoded[0].width, decoded[0].height, cfg.size)
    began = self_cpu()
    for frame in decoded:
        frame_to_jpeg(frame, w, h, cfg.jpeg_quality)
    pillow = self_cpu() - began
    began = self_cpu()
    for frame in decoded:
        cv2.imencode(".jpg", frame.reformat(width=w, height=h, format="bgr24").to_ndarray(), [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    return pillow / (self_cpu() - began)


def _decode_all(refs: list, cfg: MediaConfig, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    for ref in refs:
        decode_clip(ref, cfg)


def independent_rate(refs: list, cfg: MediaConfig, processes: int) -> float:
    """The machine's own limit: the clips split over N processes that share nothing (no pool, no IPC)."""
    ctx = multiprocessing.get_context("forkserver")
    start = ctx.Barrier(processes + 1)
    shares = [refs[i::processes] for i in range(processes)]
    workers = [ctx.Process(target=_decode_all, args=(share, cfg, start)) for share in shares]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return len(refs) / (time.perf_counter() - began)


def pool_rate(refs: list, cfg: MediaConfig, workers: int) -> float:
    """cotforge's decode step on its worker pool, as the local executor drives it (2 x workers in flight)."""
    step = DecodeStep(cfg)

    async def go() -> tuple[int, float]:
        pool = WorkerPool(workers)
        try:
            await asyncio.gather(*(pool.run(step.process, ref) for ref in refs[:workers]))  # start the workers first
            slots = asyncio.Semaphore(2 * workers)

            async def one(ref) -> object:
                async with slots:
                    return await pool.run(step.process, ref)

            began = time.perf_counter()
            results = await asyncio.gather(*(one(ref) for ref in refs))
            return len(results), time.perf_counter() - began
        finally:
            pool.shutdown()

    done, elapsed = asyncio.run(go())
    assert done == len(refs)
    return len(refs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seconds", type=float, nargs=2, default=(8.0, 12.0), metavar=("MIN", "MAX"))
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each CPU measurement")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-"))
    data = workdir / "data"
    if not (data / "demo.json").exists():
        make_demo_dataset(
            data, "mosi", args.clips, seed=7, min_seconds=args.seconds[0], max_seconds=args.seconds[1], x264_preset="veryfast"
        )
    refs = [r for r in open_source(SourceConfig(dataset="mosi", root=data)) if r.error is None]
    cfg = MediaConfig()

    limit, ours, naive = [], [], []
    for ref in refs:
        limit.append(min(ffmpeg_null_cpu(ref.media_path) for _ in range(args.repeat)))
        ours.append(min(bundle_cpu(ref, cfg) for _ in range(args.repeat)))
        naive.append(min(naive_cpu(ref.media_path, cfg) for _ in range(args.repeat)))
    jpeg = min(jpeg_ratio(refs[0].media_path, cfg) for _ in range(args.repeat))
    one = pool_rate(refs * 4, cfg, 1)
    two = pool_rate(refs * 4, cfg, 2)
    alone = independent_rate(refs * 4, cfg, 1)
    pair = independent_rate(refs * 4, cfg, 2)

    ratio_ours = sum(ours) / sum(limit)
    ratio_naive = sum(naive) / sum(limit)
    rows = [
        ("clips", f"{len(refs)} ({args.seconds[0]:g}-{args.seconds[1]:g} s, mosi demo layout)"),
        ("bundle CPU / ffmpeg -f null CPU", f"{ratio_ours:.2f}x  (target <= 1.30x)"),
        ("naive CPU / ffmpeg -f null CPU", f"{ratio_naive:.2f}x"),
        ("naive CPU / bundle CPU", f"{sum(naive) / sum(ours):.2f}x"),
        ("JPEG per frame: Pillow (used) / OpenCV", f"{jpeg:.2f}x"),
        ("clips/s 2 workers / 1 worker", f"{two / one:.2f}x  (target >= 1.70x)"),
        ("machine limit: 2 independent processes / 1", f"{pair / alone:.2f}x  (same decode, no pool, no IPC)"),
        ("pool scaling / machine limit", f"{(two / one) / (pair / alone):.2f}"),
    ]
    print_table(rows, "ratio")


if __name__ == "__main__":
    main()
