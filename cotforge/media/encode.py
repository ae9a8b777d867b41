"""Encoding of what a bundle stores: JPEG frames, FLAC audio, and the content hash of both."""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
import soundfile as sf
from av.sidedata.sidedata import Type as SideData
from av.video.reformatter import VideoReformatter
from PIL import Image

# The 2x2 part of FFmpeg's display matrix, as signs (a, b, c, d), -> the transposition that shows the
# frame as players do (checked against the ffmpeg CLI's autorotate for all eight orientations).
_ORIENTATIONS: dict[tuple[int, int, int, int], Image.Transpose | None] = {
    (1, 0, 0, 1): None,
    (-1, 0, 0, 1): Image.Transpose.FLIP_LEFT_RIGHT,
    (1, 0, 0, -1): Image.Transpose.FLIP_TOP_BOTTOM,
    (-1, 0, 0, -1): Image.Transpose.ROTATE_180,
    (0, -1, 1, 0): Image.Transpose.ROTATE_90,
    (0, 1, -1, 0): Image.Transpose.ROTATE_270,
    (0, -1, -1, 0): Image.Transpose.TRANSVERSE,
    (0, 1, 1, 0): Image.Transpose.TRANSPOSE,
}
_QUARTER_TURNS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE)


def scaled_size(width: float, height: float, long_side: int) -> tuple[int, int]:
    """Fit into `long_side` without upscaling; even sizes so the frames can be muxed as yuv420 video."""
    scale = min(1.0, long_side / max(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def orientation(frame: av.VideoFrame) -> Image.Transpose | None:
    """How to turn a decoded frame upright: its display matrix (phone clips) rounded to a right angle."""
    for side in frame.side_data:
        if side.type == SideData.DISPLAYMATRIX:
            a, b, _, c, d, *_ = struct.unpack("<9i", bytes(side))
            if abs(a) >= abs(b):
                key = (1 if a >= 0 else -1, 0, 0, 1 if d >= 0 else -1)
            else:
                key = (0, 1 if b > 0 else -1, 1 if c > 0 else -1, 0)
            return _ORIENTATIONS[key]
    return None


class FrameEncoder:
    """Decoded frames -> JPEG bytes, as a player would show them, with the long side at most `long_side`.

    The geometry is fixed by the first frame: the sample aspect ratio stretches the width (an
    anamorphic 352x240 DVD clip is shown at 16:9), and the display matrix turns the frame upright
    after scaling (a right-angle turn of the small image costs nothing). The swscale contexts are
    kept for every frame of the clip and run on one thread: a frame's own `reformat` builds a new
    context, with a thread pool, for each frame, and that once cost more than decoding.
    """

    def __init__(self, long_side: int, quality: int, sample_aspect: Fraction | None = None) -> None:
        self.long_side = long_side
        self.quality = quality
        self.sample_aspect = sample_aspect if sample_aspect and sample_aspect > 0 else Fraction(1)
        self.scaler = VideoReformatter()
        self.converter = VideoReformatter()
        self.scaled: tuple[int, int] | None = None
        self.turn: Image.Transpose | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the stored frames; only known after the first `encode`."""
        assert self.scaled is not None, "no frame encoded yet"
        w, h = self.scaled
        return (h, w) if self.turn in _QUARTER_TURNS else (w, h)

    def _geometry(self, frame: av.VideoFrame) -> tuple[int, int]:
        """Scaled size before the turn: the display width is the coded width times the sample aspect."""
        self.turn = orientation(frame)
        width = frame.width if self.sample_aspect == 1 else float(frame.width * self.sample_aspect)
        return scaled_size(width, frame.height, self.long_side)

    def encode(self, frame: av.VideoFrame) -> bytes:
        if self.scaled is None:
            self.scaled = self._geometry(frame)
        w, h = self.scaled
        # Scale first in the frame's own pixel format, then convert the small frame: half the cost of
        # swscale's one-pass scale-and-convert, and no further from a Lanczos resize of the full frame.
        small = self.scaler.reformat(frame, w, h, threads=1)
        plane = self.converter.reformat(small, format="rgb0", threads=1).planes[0]
        # RGBX is Pillow's own layout for RGB, so the image maps the frame's buffer instead of copying it.
        image = Image.frombuffer("RGBX", (w, h), plane, "raw", "RGBX", plane.line_size, 1)
        if self.turn is not None:
            image = image.transpose(self.turn)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()


class FlacWriter:
    """int16 mono samples -> FLAC bytes (lossless, about half the size of WAV), encoded as they come, so
    an hour of audio is held once, compressed, and never as PCM."""

    def __init__(self, sample_rate: int) -> None:
        self.buf = io.BytesIO()
        self.file = sf.SoundFile(self.buf, mode="w", samplerate=sample_rate, channels=1, format="FLAC", subtype="PCM_16")
        self.samples = 0

    def write(self, samples: np.ndarray) -> None:
        if len(samples):
            self.file.write(samples)
            self.samples += len(samples)

    def close(self) -> bytes:
        self.file.close()
        return self.buf.getvalue()


def flac_to_pcm(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return samples, rate


def content_hash(audio: bytes, frames: Sequence[bytes], timestamps: Sequence[float]) -> str:
    """Hash of exactly what the teacher will see; the teacher cache keys on it."""
    digest = hashlib.sha256()
    digest.update(len(audio).to_bytes(8, "little"))
    digest.update(audio)
    for data, ts in zip(frames, timestamps, strict=True):
        digest.update(f"{ts:.4f}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()
