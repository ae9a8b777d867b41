"""Decode one clip into a Bundle in a single pass over its packets.

Frames are sampled while decoding (never by seeking per frame, which is slower on long-GOP H.264)
and, by default, non-reference frames are not decoded at all: at 2 fps from 25-30 fps video the
nearest reference frame is at most a frame or two from the target time, and the timestamp of the
frame actually taken is recorded. Audio is resampled to mono at the configured rate and trimmed
to the clip's exact span (AAC priming and padding otherwise add a few ms).
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import av.error
import numpy as np

from cotforge.config import MediaConfig
from cotforge.media.encode import content_hash, frame_to_jpeg, pcm_to_flac, scaled_size
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

    def __init__(self, targets: list[float], size: tuple[int, int], quality: int) -> None:
        self.targets = targets
        self.size = size
        self.quality = quality
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

    def _take(self, t: float, frame: av.VideoFrame) -> None:
        if self.times and self.times[-1] == t:
            return
        self.frames.append(frame_to_jpeg(frame, *self.size, self.quality))
        self.times.append(t)

    @property
    def done(self) -> bool:
        return self.next >= len(self.targets)


def _targets(start: float, end: float, cfg: MediaConfig, source_fps: float) -> tuple[list[float], float]:
    """Sample times over [start, end): at `fps`, spread wider when the clip would exceed `max_frames`."""
    span = max(end - start, 1e-6)
    fps = min(cfg.fps, cfg.max_frames / span, source_fps or cfg.fps)
    count = min(cfg.max_frames, max(1, int(np.floor(span * fps + 1e-9))))
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
        size = scaled_size(video.codec_context.width, video.codec_context.height, cfg.size)
        sampler = _FrameSampler(targets, size, cfg.jpeg_quality)
    else:
        frame_fps, size = 0.0, (0, 0)

    resampler = av.AudioResampler(format="s16", layout="mono", rate=cfg.sample_rate) if audio else None
    chunks: list[np.ndarray] = []
    audio_t0: float | None = None
    last_video_t = last_audio_t = start
    if start > 0:
        container.seek(int(start * av.time_base), backward=True, any_frame=False)

    streams = [s for s in (video, audio) if s is not None]
    video_done = video is None
    audio_done = audio is None
    try:
        for packet in container.demux(*streams):
            if packet.stream is video and not video_done:
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
                    if audio_t0 is None:
                        audio_t0 = t
                    last_audio_t = t + frame.samples / frame.sample_rate
                    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                    if t >= end:
                        audio_done = True
            if video_done and audio_done:
                break
        if resampler is not None:
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
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
    if audio is not None and last_audio_t < min(end, audio_s or end) - TRUNCATION_SLACK_S:
        raise DecodeError(
            f"undecodable: audio stream ends at t={last_audio_t - start:.2f} s of {end - start:.2f} s (truncated file?)"
        )

    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if audio_t0 is not None:
        offset = int(round((start - audio_t0) * cfg.sample_rate))
        if offset > 0:
            pcm = pcm[offset:]
        elif offset < 0:
            pcm = np.concatenate([np.zeros(-offset, dtype=np.int16), pcm])
        audio_end = min(end, audio_s) if audio_s else end
        pcm = pcm[: max(0, int(round((audio_end - start) * cfg.sample_rate)))]
    flac = pcm_to_flac(pcm, cfg.sample_rate)
    frames = sampler.frames if sampler else []
    times = [round(t - start, 4) for t in sampler.times] if sampler else []
    return Bundle(
        ref=ref,
        media_hash=content_hash(flac, frames, times),
        duration=end - start,
        audio_flac=flac,
        audio_sample_rate=cfg.sample_rate,
        audio_num_samples=len(pcm),
        frames=frames,
        frame_timestamps=times,
        frame_fps=frame_fps,
        frame_width=size[0],
        frame_height=size[1],
        video_width=video.codec_context.width if video is not None else 0,
        video_height=video.codec_context.height if video is not None else 0,
        video_fps=source_fps,
    )
