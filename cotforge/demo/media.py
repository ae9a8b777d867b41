"""The media of a demo dataset: H.264/AAC MP4 files with a face that follows the label and a voice-like track.

Parameters vary per file (size, portrait, NTSC frame rate, sample rate, channels) because a decoder
that only ever saw one shape of file is not tested. Frames show a drawn face whose mouth curves with
the valence of the segment playing; the audio is synthesised speech (`voice`) whose prosody does too.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cotforge.demo.voice import synth_voice

RESOLUTIONS = ((320, 240), (480, 270), (640, 360), (360, 640), (256, 144))
FRAME_RATES = (Fraction(24), Fraction(25), Fraction(30), Fraction(30000, 1001))
AUDIO_RATES = (16000, 44100, 48000)
AUDIO_FRAME_SAMPLES = 1024
X264_CRF = "30"
"""ultrafast at crf 30 keeps test suites fast; benchmarks pass a slower preset that writes B-frames like real uploads."""
AAC_OPTIONS = {"aac_coder": "fast"}
"""FFmpeg's fast AAC coder halves audio encode time; quality is beside the point for test speech."""

Timeline = list[tuple[float, float, float]]
"""(start, end, valence) of each spoken segment of a media file, in seconds of that file."""


@dataclass(frozen=True)
class MediaSpec:
    """How one media file is encoded; the frame count and sample count follow from it."""

    seconds: float
    fps: Fraction
    width: int
    height: int
    audio_rate: int
    channels: int

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    @property
    def duration(self) -> float:
        """Seconds as encoded: a whole number of frames."""
        return float(self.frames / self.fps)

    @property
    def samples(self) -> int:
        return round(self.frames / self.fps * self.audio_rate)


def media_spec(seconds: float, rng: np.random.Generator) -> MediaSpec:
    width, height = RESOLUTIONS[int(rng.integers(len(RESOLUTIONS)))]
    return MediaSpec(
        seconds=seconds,
        fps=FRAME_RATES[int(rng.integers(len(FRAME_RATES)))],
        width=width,
        height=height,
        audio_rate=AUDIO_RATES[int(rng.integers(len(AUDIO_RATES)))],
        channels=int(rng.integers(1, 3)),
    )


def encode(
    path: Path,
    spec: MediaSpec,
    timeline: Timeline,
    rng: np.random.Generator,
    x264_preset: str,
    video: bool,
    audio: bool,
) -> None:
    """Write an MP4 with the moov atom in front and audio interleaved with video by time.

    Interleaving matters for truncation: a file cut short then still holds both streams up to
    the cut, as a real interrupted download does.
    """
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        sources: list[Iterator[tuple[float, av.stream.Stream, av.frame.Frame]]] = []
        if video:
            stream = container.add_stream("libx264", rate=spec.fps, options={"preset": x264_preset, "crf": X264_CRF})
            stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
            stream.codec_context.time_base = 1 / spec.fps
            sources.append(_video_frames(stream, spec, timeline, rng))
        if audio:
            layout = "mono" if spec.channels == 1 else "stereo"
            stream = container.add_stream("aac", rate=spec.audio_rate, layout=layout, options=AAC_OPTIONS)
            stream.codec_context.time_base = Fraction(1, spec.audio_rate)
            sources.append(_audio_frames(stream, spec, _soundtrack(spec, timeline, rng)))
        for _, stream, frame in heapq.merge(*sources, key=lambda event: event[0]):
            container.mux(stream.encode(frame))
        for stream in container.streams:
            container.mux(stream.encode(None))


def _video_frames(
    stream: av.stream.Stream, spec: MediaSpec, timeline: Timeline, rng: np.random.Generator
) -> Iterator[tuple[float, av.stream.Stream, av.VideoFrame]]:
    """Frame i at pts i in time base 1/fps: the face for the valence at that time, plus motion."""
    painter = _FacePainter(spec.width, spec.height, rng)
    time_base = 1 / spec.fps
    for number in range(spec.frames):
        seconds = float(number * time_base)
        frame = av.VideoFrame.from_ndarray(painter.paint(number, _valence_at(timeline, seconds)), format="rgb24")
        frame.pts, frame.time_base = number, time_base
        yield seconds, stream, frame


def _valence_at(timeline: Timeline, seconds: float) -> float:
    """The valence of the segment playing at `seconds`; 0 (a neutral face) between segments."""
    return next((valence for start, end, valence in timeline if start <= seconds < end), 0.0)


class _FacePainter:
    """Draws frames cheaply: a cached face per valence, a moving square and a binary frame counter.

    The mouth curves up for positive and down for negative valence, so a vision model has a
    visible cue; the square and the counter make every frame differ, as in real video.
    """

    COUNTER_BITS = 12

    def __init__(self, width: int, height: int, rng: np.random.Generator) -> None:
        self.width, self.height = width, height
        self.background = rng.integers(30, 110, 3)
        self.skin = np.array([224, 182, 150]) + rng.integers(-30, 20, 3)
        self.block = max(4, min(width, height) // 24)
        self.speed = rng.uniform(2.0, 6.0) * self.block / 4
        self._faces: dict[float, np.ndarray] = {}

    def paint(self, number: int, valence: float) -> np.ndarray:
        if valence not in self._faces:
            self._faces[valence] = self._face(valence)
        image = self._faces[valence].copy()
        span = self.width - self.block
        x = int(number * self.speed) % (2 * span)
        x = x if x < span else 2 * span - x
        image[: self.block, x : x + self.block] = 255
        for bit in range(self.COUNTER_BITS):
            lit = 255 if number >> bit & 1 else 0
            image[-self.block :, bit * self.block : (bit + 1) * self.block] = lit
        return image

    def _face(self, valence: float) -> np.ndarray:
        """A disc with two eyes and a parabolic mouth whose curvature is the valence."""
        y, x = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        image = np.empty((self.height, self.width, 3), np.uint8)
        image[:] = self.background
        cx, cy = self.width / 2, self.height * 0.47
        radius = 0.32 * min(self.width, self.height)
        image[np.hypot(x - cx, y - cy) < radius] = self.skin
        for eye_x in (cx - 0.35 * radius, cx + 0.35 * radius):
            image[np.hypot(x - eye_x, y - (cy - 0.2 * radius)) < 0.1 * radius] = (40, 30, 30)
        across = (x - cx) / (0.5 * radius)
        mouth_y = cy + 0.4 * radius + valence * 0.25 * radius * (1 - across**2)
        mouth = (np.abs(across) <= 1) & (np.abs(y - mouth_y) < max(1.5, 0.06 * radius))
        image[mouth] = (150, 30, 40)
        return image


def _soundtrack(spec: MediaSpec, timeline: Timeline, rng: np.random.Generator) -> np.ndarray:
    """Planar float32 audio (channels, samples): voice in each segment over faint room noise."""
    rate = spec.audio_rate
    track = rng.normal(0.0, 0.002, spec.samples)
    for start, end, valence in timeline:
        first = round(start * rate)
        voice = synth_voice(end - start, rate, valence, rng)[: spec.samples - first]
        track[first : first + voice.size] += voice
    channels = np.stack([track, 0.85 * track])[: spec.channels]
    return np.clip(channels, -1.0, 1.0).astype(np.float32)


def _audio_frames(
    stream: av.stream.Stream, spec: MediaSpec, samples: np.ndarray
) -> Iterator[tuple[float, av.stream.Stream, av.AudioFrame]]:
    """AAC-sized frames with pts counted in samples (time base 1/sample rate)."""
    layout = "mono" if spec.channels == 1 else "stereo"
    time_base = Fraction(1, spec.audio_rate)
    for offset in range(0, samples.shape[1], AUDIO_FRAME_SAMPLES):
        chunk = np.ascontiguousarray(samples[:, offset : offset + AUDIO_FRAME_SAMPLES])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = spec.audio_rate, offset, time_base
        yield offset / spec.audio_rate, stream, frame
