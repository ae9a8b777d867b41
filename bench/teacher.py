"""Teacher client benchmark against `cotforge teacher-sim` (a GPU-server model on loopback).

Prints, measured side by side in one run:
  * throughput of cotforge's client at capacity C, service latency L, as a ratio of the ideal C/L
    (the server's limit; target >= 0.95 with concurrency >= C);
  * the same ratio for a plain sequential openai client (the baseline);
  * client CPU per request, excluding media encoding (ms, this process only; the server runs in its own),
    with an H.264/AAC body and with an MJPEG/float-PCM one (the bigger payload costs more to send);
  * media encoding per clip (ms) and the size of the MP4 (KiB): MJPEG/float PCM (the default: the bundle's
    JPEGs copied) and H.264/AAC.
    The teacher step encodes a clip's media once, whatever the number of requests re-asking makes.

Usage: python bench/teacher.py [--capacity 32] [--latency-ms 200] [--requests 1600]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

import openai

from cotforge.config import MediaConfig, SourceConfig, TeacherConfig
from cotforge.media.decode import decode_clip
from cotforge.sources import open_source
from cotforge.demo.writer import make_demo_dataset
from cotforge.store.bundles import bundle_row
from cotforge.teacher.client import TeacherClient
from cotforge.teacher.request import ClipMedia, build_request, materialize
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.types import MOSI_SCALE
from table import print_table  # bench/table.py, beside this script


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bundles(workdir: Path, clips: int) -> list[dict]:
    data = workdir / "data"
    if not (data / "demo.json").exists():
        make_demo_dataset(data, "mosi", clips, seed=11, min_seconds=4, max_seconds=8)
    refs = [r for r in open_source(SourceConfig(dataset="mosi", root=data)) if r.error is None]
    return [bundle_row(decode_clip(ref, MediaConfig()), "bench") for ref in refs]


def encode_ms(rows: list[dict], cfg: TeacherConfig, codec: str) -> tuple[float, float]:
    """(CPU ms, KiB of the video payload) per clip."""
    began, size = cpu(), 0
    for row in rows:
        body = materialize(build_request(row, cfg, MOSI_SCALE).body, ClipMedia(row["frames"], row["frame_fps"], row["audio"]), codec)
        size += len(body["messages"][1]["content"][0]["video_url"]["url"]) * 3 / 4
    return (cpu() - began) / len(rows) * 1000, size / len(rows) / 1024


async def ours(cfg: TeacherConfig, body: dict, headers: dict, requests: int) -> tuple[float, float]:
    async with TeacherClient(cfg) as client:
        await client.preflight()
        await asyncio.gather(*(client.ask(body, headers) for _ in range(cfg.concurrency)))  # warm connections
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await client.ask(body, headers)

        began_wall, began_cpu = time.perf_counter(), cpu()
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        return requests / (time.perf_counter() - began_wall), (cpu() - began_cpu) / requests * 1000


def sequential(url: str, body: dict, headers: dict, requests: int) -> float:
    client = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    # what a user of the SDK writes: vLLM's own fields go through extra_body
    extra = {k: v for k, v in body.items() if k in ("mm_processor_kwargs", "media_io_kwargs")}
    typed = {k: v for k, v in body.items() if k not in extra}
    client.chat.completions.create(**typed, extra_body=extra, extra_headers=headers)
    began = time.perf_counter()
    for _ in range(requests):
        client.chat.completions.create(**typed, extra_body=extra, extra_headers=headers)
    return requests / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--concurrency", type=int, default=0, help="client concurrency (default: capacity + 25%%)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-teacher-"))
    rows = bundles(workdir, 6)

    sim_cfg = SimConfig(port=0, capacity=args.capacity, latency_ms=args.latency_ms, per_token_ms=0.0, seed=1)
    concurrency = args.concurrency or int(args.capacity * 1.25)
    with SimProcess(sim_cfg) as sim:
        cfg = TeacherConfig(url=sim.url, model=sim_cfg.model, simulated=True, concurrency=concurrency, max_retries=0)
        h264, h264_kib = encode_ms(rows, cfg, "h264")
        mjpeg, mjpeg_kib = encode_ms(rows, cfg, "mjpeg")
        request = build_request(rows[0], cfg, MOSI_SCALE)
        media = ClipMedia(rows[0]["frames"], rows[0]["frame_fps"], rows[0]["audio"])
        bodies = {codec: materialize(request.body, media, codec) for codec in ("h264", "mjpeg")}
        rate, client_ms = asyncio.run(ours(cfg, bodies["h264"], request.headers, args.requests))
        _, client_mjpeg_ms = asyncio.run(ours(cfg, bodies["mjpeg"], request.headers, args.requests))
        seq_rate = sequential(sim.url, bodies["h264"], request.headers, max(10, args.requests // 48))
    ideal = args.capacity / (args.latency_ms / 1000)
    lines = [
        ("server limit C/L", f"{ideal:.1f} req/s (C={args.capacity}, L={args.latency_ms:g} ms)"),
        (f"cotforge client (concurrency {concurrency}) / limit", f"{rate / ideal:.3f}x  (target >= 0.95)"),
        ("sequential openai client / limit", f"{seq_rate / ideal:.3f}x"),
        ("cotforge / sequential", f"{rate / seq_rate:.1f}x"),
        ("client CPU per request, no media: H.264 body, MJPEG body", f"{client_ms:.2f} ms, {client_mjpeg_ms:.2f} ms"),
        ("media encoding per clip, H.264/AAC", f"{h264:.1f} ms ({h264_kib:.0f} KiB MP4)"),
        ("media encoding per clip, MJPEG/float PCM (default)", f"{mjpeg:.1f} ms ({mjpeg_kib:.0f} KiB MP4)"),
    ]
    print_table(lines, "value")


if __name__ == "__main__":
    main()
