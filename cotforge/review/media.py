"""Browser-playable clips for reviewers: H.264/AAC MP4, one per source clip, made once.

Chromium plays H.264/AAC MP4 but shows no picture for MJPEG-in-MP4 (notes/deps.md §4), and Label
Studio serves media only from a local storage under its document root. So each row's source clip is
written to `MEDIA_ROOT/clips/<id>.mp4`, where the id hashes the source file's bytes, the time range and
the recipe version: the same clip is never encoded twice, however often it is pushed, and a changed
source file gets a new name instead of a stale video.

A whole-file source that is already H.264 (8-bit 4:2:0) with AAC or no audio is only remuxed (a copy
of the packets with the index moved to the front, ~1% of an encode); anything else, and every MOSEI
segment (a time range of a full video), is decoded and encoded at constant frame rate.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

RECIPE = "h264-aac-v1"
"""Part of every clip id: bump it when the encoding settings change, so old files are not reused."""
MAX_WIDTH = 640
MAX_FPS = 30
AUDIO_FRAME = 1024  # AAC's frame size
_REMUXABLE_PIX = {"yuv420p", "yuvj420p"}


class MediaError(Exception):
    """A clip could not be made playable; the message is the reason shown to the user."""


@dataclass(frozen=True, slots=True)
class ClipSource:
    path: str
    start: float | None = None
    end: float | None = None

    @property
    def ranged(self) -> bool:
        return self.start is not None or self.end is not None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) so 5,000 rows of one MOSEI video hash it once."""
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def clip_id(source: ClipSource) -> str:
    """The content address of a playable clip; raises MediaError when the source is gone."""
    if not source.path:
        raise MediaError("media file missing: the row has no source_path")
    path = Path(source.path)
    if not path.is_file():
        raise MediaError(f"media file missing: {source.path}")
    key = f"{file_digest(path)}|{source.start}|{source.end}|{RECIPE}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _remuxable(inp: av.container.InputContainer) -> bool:
    video = inp.streams.video[0] if inp.streams.video else None
    audio = inp.streams.audio[0] if inp.streams.audio else None
    if video is None or video.codec_context.name != "h264" or video.codec_context.pix_fmt not in _REMUXABLE_PIX:
        return False
    return audio is None or audio.codec_context.name == "aac"


def _remux(inp: av.container.InputContainer, out: av.container.OutputContainer) -> None:
    streams = list(inp.streams.video[:1]) + list(inp.streams.audio[:1])
    mapping = {s.index: out.add_stream_from_template(s) for s in streams}
    for packet in inp.demux(streams):
        if packet.dts is None:
            continue
        packet.stream = mapping[packet.stream.index]
        out.mux(packet)


class _AudioOut:
    """Trims decoded audio to the clip's time range sample-exactly and feeds AAC whole frames."""

    def __init__(self, out: av.container.OutputContainer, src: av.AudioStream) -> None:
        self.rate = src.codec_context.sample_rate or 48000
        channels = src.codec_context.layout.nb_channels if src.codec_context.layout else 1
        self.layout = "stereo" if channels >= 2 else "mono"
        self.stream = out.add_stream("aac", rate=self.rate, layout=self.layout)
        self.stream.codec_context.thread_count = 1
        self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self.out = out
        self.pending = np.zeros((2 if self.layout == "stereo" else 1, 0), dtype=np.float32)
        self.written = 0

    def add(self, frame: av.AudioFrame, start: float, end: float | None) -> bool:
        """Add a decoded frame; False once the frame starts at or after `end`."""
        for chunk in self.resampler.resample(frame):
            t0 = chunk.time if chunk.time is not None else 0.0
            if end is not None and t0 >= end:
                return False
            samples = chunk.to_ndarray()
            first = max(0, round((start - t0) * self.rate))
            last = samples.shape[1] if end is None else min(samples.shape[1], round((end - t0) * self.rate))
            if last > first:
                self.pending = np.concatenate([self.pending, samples[:, first:last]], axis=1)
            self._encode(final=False)
        return True

    def _encode(self, final: bool) -> None:
        while self.pending.shape[1] >= AUDIO_FRAME or (final and self.pending.shape[1]):
            block, self.pending = self.pending[:, :AUDIO_FRAME], self.pending[:, AUDIO_FRAME:]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.written
            frame.time_base = Fraction(1, self.rate)
            self.written += block.shape[1]
            self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        self._encode(final=True)
        self.out.mux(self.stream.encode(None))


class _VideoOut:
    """Constant frame rate H.264 (yuv420p, even size, at most MAX_WIDTH wide) from decoded frames."""

    def __init__(self, out: av.container.OutputContainer, src: av.VideoStream) -> None:
        fps = float(src.average_rate or src.guessed_rate or 25)
        self.rate = Fraction(min(MAX_FPS, fps)).limit_denominator(1001)
        width, height = src.codec_context.width, src.codec_context.height
        scale = min(1.0, MAX_WIDTH / width) if width else 1.0
        self.width, self.height = max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
        self.stream = out.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        # A keyframe a second: the reviewer can seek without decoding from the start.
        self.stream.options = {"preset": "veryfast", "crf": "23", "g": str(max(1, round(float(self.rate))))}
        self.stream.codec_context.thread_count = 1
        self.out = out
        self.last = -1

    def add(self, frame: av.VideoFrame, start: float, end: float | None) -> bool:
        t = frame.time if frame.time is not None else 0.0
        if end is not None and t >= end:
            return False
        index = round((t - start) * self.rate)
        if t < start - 0.5 / float(self.rate) or index <= self.last:
            return True
        self.last = index
        picture = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        picture.pts, picture.time_base = index, 1 / self.rate
        self.out.mux(self.stream.encode(picture))
        return True

    def close(self) -> None:
        self.out.mux(self.stream.encode(None))


def _transcode(inp: av.container.InputContainer, out: av.container.OutputContainer, source: ClipSource) -> None:
    vin = inp.streams.video[0] if inp.streams.video else None
    ain = inp.streams.audio[0] if inp.streams.audio else None
    start = max(0.0, source.start or 0.0)  # MOSEI's segment lists hold a few negative starts
    writers: dict[int, _VideoOut | _AudioOut] = {}
    if vin is not None:
        vin.thread_type = "NONE"
        writers[vin.index] = _VideoOut(out, vin)
    if ain is not None:
        writers[ain.index] = _AudioOut(out, ain)
    if start > 0:
        inp.seek(int(start * av.time_base), backward=True, any_frame=False)
    open_streams = set(writers)
    for packet in inp.demux([s for s in (vin, ain) if s is not None]):
        index = packet.stream.index
        if index not in open_streams:
            continue
        for frame in packet.decode():
            if not writers[index].add(frame, start, source.end):
                open_streams.discard(index)
                break
        if not open_streams:
            break
    for writer in writers.values():
        writer.close()


def make_playable(source: ClipSource, dest: Path) -> str:
    """Write the playable MP4 of a source clip to `dest` (atomically); returns "remux" or "encode"."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.{id(source)}.tmp.mp4")
    try:
        with av.open(source.path) as inp:
            if not inp.streams.video and not inp.streams.audio:
                raise MediaError(f"no audio or video stream: {source.path}")
            how = "remux" if not source.ranged and _remuxable(inp) else "encode"
            with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
                if how == "remux":
                    _remux(inp, out)
                else:
                    _transcode(inp, out, source)
        if tmp.stat().st_size == 0:
            raise MediaError(f"nothing could be decoded from {source.path}")
        os.replace(tmp, dest)
        return how
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise MediaError(f"media unreadable: {source.path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class MediaResult:
    """Per source: the clip's file name under clips/, or the reason it could not be made."""

    names: dict[ClipSource, str]
    errors: dict[ClipSource, str]
    encoded: int = 0
    remuxed: int = 0
    reused: int = 0


def prepare(sources: Iterable[ClipSource], clips_dir: Path, workers: int = 2,
            progress: Callable[[int], None] = lambda n: None) -> MediaResult:
    """Make every distinct source playable under `clips_dir`, reusing files already there."""
    result = MediaResult({}, {})
    todo: dict[str, list[ClipSource]] = {}
    for source in dict.fromkeys(sources):
        try:
            name = f"{clip_id(source)}.mp4"
        except MediaError as exc:
            result.errors[source] = str(exc)
            progress(1)
            continue
        except OSError as exc:
            result.errors[source] = f"media unreadable: {source.path}: {exc.strerror or exc}"
            progress(1)
            continue
        if (clips_dir / name).is_file():
            result.names[source] = name
            result.reused += 1
            progress(1)
        else:
            todo.setdefault(name, []).append(source)

    def work(name: str) -> tuple[str, str | None, str | None]:
        try:
            return name, make_playable(todo[name][0], clips_dir / name), None
        except MediaError as exc:
            return name, None, str(exc)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for name, how, error in pool.map(work, todo):
            for source in todo[name]:
                if error is None:
                    result.names[source] = name
                else:
                    result.errors[source] = error
            result.encoded += how == "encode"
            result.remuxed += how == "remux"
            progress(len(todo[name]))
    return result
