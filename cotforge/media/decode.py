"""Decode one clip into a Bundle in a single pass over its packets.

Frames are sampled while decoding (never by seeking per frame, which is slower on long-GOP H.264)
and, by default, non-reference frames are not decoded at all: at 2 fps from 25-30 fps video the
nearest reference frame is at most a frame or two from the target time, and the timestamp of the
frame actually taken is recorded. Audio is resampled to mono at the configured rate and trimmed
to the clip's exact span (AAC priming and padding otherwise add a few ms) and FLAC-encoded as it
is decoded: an hour of audio is held once, compressed.

Frames are stored as a player shows them: the sample aspect ratio and the display matrix (a phone
clip's rotation) are applied (see `encode.FrameEncoder`).
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import av.error
import numpy as np

from cotforge.config import MediaConfig
from cotforge.media.encode import FlacWriter, FrameEncoder, content_hash
from cotforge.media.resample import MonoResampler
from cotforge.types import Bundle, ClipRef

# A stream that ends this much before its declared end is truncated, not merely rounded.
TRUNCATION_SLACK_S = 0.5


class DecodeError(Exception):
    """The clip cannot be bundled; the message is the reason recorded in the ledger."""


def _stream_seconds(stream: av.stream.Stream | None) -> float | None:
    if stream is None or stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


class _FrameSampler:
    """Picks, for each target time, the decoded frame nearest to it and encodes it as JPEG."""

    def __init__(self, targets: list[float], encoder: FrameEncoder) -> None:
        self.targets = targets
        self.encoder = encoder
        self.next = 0
        self.prev: tuple[float, av.VideoFrame] | None = None
        self.frames: list[bytes] = []
        self.times: list[float] = []

    def feed(self, t: float, frame: av.VideoFrame) -> None:
        while self.next < len(self.targets) and t >= self.targets[self.next]:
            target = self.targets[self.next]
            if self.prev is not None and target - self.prev[0] < t - target:
                self._take(*self.prev)
            else:
                self._take(t, frame)
            self.next += 1
        self.prev = (t, frame)

    def finish(self) -> None:
        """Targets beyond the last decoded frame get the last frame if it is within one sample step."""
        if self.prev is None:
            return
        step = self.targets[1] - self.targets[0] if len(self.targets) > 1 else 1.0
        while self.next < len(self.targets) and self.targets[self.next] - self.prev[0] <= step / 2:
            self._take(*self.prev)
            self.next += 1

    def pair(self) -> None:
        """Make the frame count even (see `_targets`): two targets can land on one decoded frame, which
        is taken once. Drop the last frame of an odd count; a lone frame (a clip of one picture) is
        stored twice, with its own timestamp each time."""
        if len(self.frames) % 2 == 0:
            return
        if len(self.frames) > 1:
            del self.frames[-1], self.times[-1]
        else:
            self.frames.append(self.frames[0])
            self.times.append(self.times[0])

    def _take(self, t: float, frame: av.VideoFrame) -> None:
        if self.times and self.times[-1] == t:
            return
        self.frames.append(self.encoder.encode(frame))
        self.times.append(t)

    @property
    def done(self) -> bool:
        return self.next >= len(self.targets)


class _AudioTrack:
    """Mono FLAC of [start, audio_end) at `rate`, encoded while decoding.

    The resampler's output is a stream that begins at the first decoded audio frame (`t0`, before
    `start` after a seek): samples before `start` are dropped as they come, a stream that begins
    late gets silence in front, and nothing past `audio_end` is kept.
    """

    def __init__(self, rate: int, start: float, audio_end: float) -> None:
        self.rate = rate
        self.start = start
        # Output in chunks of a second: the samples are the same, the Python calls per second fewer.
        self.resampler = MonoResampler(rate, frame_size=rate)
        self.wanted = max(0, int(round((audio_end - start) * rate)))
        self.flac = FlacWriter(rate)
        self.skip: int | None = None  # samples of the stream still to drop before `start`

    def feed(self, frame: av.AudioFrame | None, t: float | None = None) -> None:
        if self.skip is None and t is not None:
            offset = int(round((self.start - t) * self.rate))
            self.skip = max(0, offset)
            self._put(np.zeros(max(0, -offset), dtype=np.int16))
        for out in self.resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1)
            dropped = min(self.skip or 0, len(samples))
            self.skip = (self.skip or 0) - dropped
            self._put(samples[dropped:])

    def _put(self, samples: np.ndarray) -> None:
        self.flac.write(samples[: self.wanted - self.flac.samples])

    def close(self) -> tuple[bytes, int]:
        """(FLAC bytes, samples); no samples when no audio frame was decoded."""
        samples = self.flac.samples
        return self.flac.close(), samples


def _targets(start: float, end: float, cfg: MediaConfig, source_fps: float) -> tuple[list[float], float]:
    """Sample times over [start, end): at `fps`, spread wider when the clip would exceed `max_frames`.

    The count is even and at least 2: Qwen's video processor (vLLM) groups frames in pairs, drops an
    odd last frame and fails on a single one. An odd count loses its last time (the others keep
    theirs); a clip too short for two samples at `fps` is sampled at its start and middle.
    """
    span = max(end - start, 1e-6)
    limit = max(2, cfg.max_frames - cfg.max_frames % 2)
    fps = min(cfg.fps, limit / span, source_fps or cfg.fps)
    count = min(limit, int(np.floor(span * fps + 1e-9)))
    count -= count % 2
    if count < 2:
        count, fps = 2, 2 / span
    return [start + i / fps for i in range(count)], fps


def decode_clip(ref: ClipRef, cfg: MediaConfig) -> Bundle:
    """Decode `ref` into a Bundle or raise DecodeError with a specific reason."""
    began = time.process_time()
    path = Path(ref.media_path)
    if not path.is_file():
        raise DecodeError(f"media file missing: {path}")
    if path.stat().st_size == 0:
        raise DecodeError(f"media file is empty (0 bytes): {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise DecodeError(f"cannot open media: {err.strerror or err} ({path})") from None
    with container:
        bundle = _decode_open(ref, cfg, container, path)
    bundle.decode_seconds = time.process_time() - began
    return bundle


def _decode_open(ref: ClipRef, cfg: MediaConfig, container: av.container.InputContainer, path: Path) -> Bundle:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    if video is None and cfg.require_video:
        raise DecodeError("no video stream")
    if audio is None and cfg.require_audio:
        raise DecodeError("no audio stream")

    container_s = container.duration / av.time_base if container.duration else None
    video_s = _stream_seconds(video) or container_s
    audio_s = _stream_seconds(audio) or container_s
    declared = max(s for s in (video_s, audio_s, container_s, 0.0) if s is not None)
    start = ref.start or 0.0
    end = min(ref.end, declared) if ref.end is not None and declared else (ref.end or declared)
    if ref.end is not None and declared and start >= declared:
        raise DecodeError(f"time range after the end of the media: starts at {start:g} s, media lasts {declared:.2f} s")
    if not end or end <= start:
        raise DecodeError("media has no duration")

    source_fps = float(video.average_rate) if video is not None and video.average_rate else 0.0
    sampler = None
    if video is not None:
        video.codec_context.thread_count = 1
        if cfg.skip_nonref:
            video.codec_context.skip_frame = "NONREF"
        targets, frame_fps = _targets(start, end, cfg, source_fps)
        sampler = _FrameSampler(targets, FrameEncoder(cfg.size, cfg.jpeg_quality, video.sample_aspect_ratio))
    else:
        frame_fps = 0.0

    audio_end = min(end, audio_s) if audio_s else end
    track = _AudioTrack(cfg.sample_rate, start, audio_end) if audio is not None else None
    last_video_t = last_audio_t = start
    if start > 0:
        container.seek(int(start * av.time_base), backward=True, any_frame=False)

    streams = [s for s in (video, audio) if s is not None]
    video_done = video is None
    audio_done = audio is None
    try:
        for packet in container.demux(*streams):
            if packet.stream is video and not video_done:
                if sampler.done:
                    # Every frame is taken: the rest of the stream is only read, to tell a truncated file.
                    at = packet.pts if packet.pts is not None else packet.dts
                    if at is not None:
                        t = float(at * packet.time_base)
                        video_done = t >= end
                        last_video_t = t if start <= t < end and t > last_video_t else last_video_t
                    continue
                for frame in packet.decode():
                    t = float(frame.time) if frame.time is not None else last_video_t
                    if t < start - 1e-3:
                        continue
                    if t >= end:
                        video_done = True
                        break
                    last_video_t = t
                    sampler.feed(t, frame)
            elif packet.stream is audio and not audio_done:
                for frame in packet.decode():
                    t = float(frame.time) if frame.time is not None else last_audio_t
                    last_audio_t = t + frame.samples / frame.sample_rate
                    track.feed(frame, t)
                    if t >= end:
                        audio_done = True
            if video_done and audio_done:
                break
        if track is not None:
            track.feed(None)
    except av.error.FFmpegError as err:
        at = min(last_video_t, last_audio_t) - start
        raise DecodeError(f"undecodable: at t={at:.2f} s, {err.strerror or err}") from None

    if video is not None:
        reached = last_video_t + (1.0 / source_fps if source_fps else 0.0)
        if reached < end - TRUNCATION_SLACK_S:
            raise DecodeError(
                f"undecodable: video stream ends at t={reached - start:.2f} s of {end - start:.2f} s (truncated file?)"
            )
        sampler.finish()
        if not sampler.frames:
            raise DecodeError("no video frame could be decoded")
        sampler.pair()
    if audio is not None and last_audio_t < min(end, audio_s or end) - TRUNCATION_SLACK_S:
        raise DecodeError(
            f"undecodable: audio stream ends at t={last_audio_t - start:.2f} s of {end - start:.2f} s (truncated file?)"
        )

    flac, samples = track.close() if track is not None else (FlacWriter(cfg.sample_rate).close(), 0)
    frames = sampler.frames if sampler else []
    times = [round(t - start, 4) for t in sampler.times] if sampler else []
    size = sampler.encoder.size if sampler else (0, 0)
    return Bundle(
        ref=ref,
        media_hash=content_hash(flac, frames, times),
        duration=end - start,
        audio_flac=flac,
        audio_sample_rate=cfg.sample_rate,
        audio_num_samples=samples,
        frames=frames,
        frame_timestamps=times,
        frame_fps=frame_fps,
        frame_width=size[0],
        frame_height=size[1],
        video_width=video.codec_context.width if video is not None else 0,
        video_height=video.codec_context.height if video is not None else 0,
        video_fps=source_fps,
    )
