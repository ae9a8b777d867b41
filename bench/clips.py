"""Datasets in the MMSA raw layout with clips of one fixed shape (the benchmarks' inputs).

`make_clips` encodes N clips of a given size, rate and length (the demo's face and voice, x264 with
B-frames like real uploads); `subset` and `clone` lay out further label files over the same media
files through hard links, so a 12-clip set is exactly the first half of a 24-clip one and a 16k-row
corpus costs the encoding of a few clips.
"""

from __future__ import annotations

import csv
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from cotforge.demo.media import MediaSpec, encode

HEADER = ("video_id", "clip_id", "text", "label", "annotation", "mode")


def _label(value: float) -> str:
    return "Neutral" if abs(value) < 0.5 else ("Positive" if value > 0 else "Negative")


def _write_labels(root: Path, rows: list[tuple[str, str, str, float]]) -> None:
    with (root / "label.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for number, (video_id, clip_id, text, label) in enumerate(rows):
            split = ("train", "train", "train", "valid")[number % 4]
            writer.writerow([video_id, clip_id, text, repr(round(label, 4)), _label(label), split])


def make_clips(
    root: Path, clips: int, seconds: float = 10.0, size: tuple[int, int] = (640, 360), fps: int = 30,
    audio_rate: int = 48000, channels: int = 2, preset: str = "veryfast", seed: int = 7,
) -> list[Path]:
    """Encode `clips` clips under `root` (kept when `root` already holds the same request)."""
    spec = MediaSpec(seconds=seconds, fps=Fraction(fps), width=size[0], height=size[1], audio_rate=audio_rate, channels=channels)
    wanted = {"clips": clips, "seconds": seconds, "size": list(size), "fps": fps, "audio_rate": audio_rate,
              "channels": channels, "preset": preset, "seed": seed}
    marker = root / "clips.json"
    paths = [root / "Raw" / f"v{i:05d}" / "1.mp4" for i in range(clips)]
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return paths
    rng = np.random.default_rng(seed)
    rows = []
    for number, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        label = float(rng.uniform(-3, 3))
        encode(path, spec, [(0.0, spec.duration, label / 3)], np.random.default_rng([seed, number]), preset, True, True)
        rows.append((path.parent.name, "1", f"clip number {number} says something {_label(label).lower()}", label))
    _write_labels(root, rows)
    marker.write_text(json.dumps(wanted))
    return paths


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(source, target)


def subset(source: Path, root: Path, clips: int) -> Path:
    """The first `clips` rows of `source`'s label file, their media hard-linked under `root`."""
    with (source / "label.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:clips]
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        rel = Path("Raw") / row["video_id"] / f"{row['clip_id']}.mp4"
        _link(source / rel, root / rel)
    _write_labels(root, [(r["video_id"], r["clip_id"], r["text"], float(r["label"])) for r in rows])
    return root


def clone(media: list[Path], root: Path, rows: int, seed: int = 3) -> Path:
    """`rows` label rows over hard links to the few `media` files, each with its own clip id and transcript.

    The media hash repeats (same bytes), but the transcripts differ, so every teacher request and
    cache key is distinct, as in a real corpus.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for number in range(rows):
        video_id = f"c{number // 16:05d}"
        clip_id = str(number % 16)
        _link(media[number % len(media)], root / "Raw" / video_id / f"{clip_id}.mp4")
        label = float(rng.uniform(-3, 3))
        out.append((video_id, clip_id, f"row {number}: it was {_label(label).lower()} I think", label))
    _write_labels(root, out)
    return root


def long_clip(root: Path, minutes: float, size: tuple[int, int] = (160, 90), fps: int = 30, audio_rate: int = 44100) -> Path:
    """One `minutes`-long clip (x264 ultrafast + AAC stereo, a moving square over a tone and noise) as a
    one-row dataset under `root`; generated chunk by chunk, so an hour costs no more memory than a second."""
    import av

    wanted = {"minutes": minutes, "size": list(size), "fps": fps, "audio_rate": audio_rate}
    marker = root / "clips.json"
    path = root / "Raw" / "long" / "1.mp4"
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    width, height = size
    frames = int(minutes * 60 * fps)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "30"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=audio_rate, layout="stereo", options={"aac_coder": "fast"})
        audio.codec_context.time_base = Fraction(1, audio_rate)
        image = np.full((height, width, 3), 90, np.uint8)
        per_frame = audio_rate / fps
        written = 0
        for number in range(frames):
            canvas = image.copy()
            x = (number * 2) % (width - 16)
            canvas[10:26, x : x + 16] = 255
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = number
            out.mux(video.encode(frame))
            while written < (number + 1) * per_frame:
                t = (written + np.arange(1024)) / audio_rate
                tone = 0.2 * np.sin(2 * np.pi * (180 + 40 * np.sin(t / 3)) * t) + rng.normal(0, 0.01, 1024)
                chunk = np.stack([tone, 0.8 * tone]).astype(np.float32)
                sound = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                sound.sample_rate, sound.pts, sound.time_base = audio_rate, written, Fraction(1, audio_rate)
                out.mux(audio.encode(sound))
                written += 1024
        for stream in (video, audio):
            out.mux(stream.encode(None))
    _write_labels(root, [("long", "1", "a long interview", 1.0)])
    marker.write_text(json.dumps(wanted))
    return root
