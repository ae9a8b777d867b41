"""Encoding of what a bundle stores: JPEG frames, FLAC audio, and the content hash of both."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import av
import numpy as np
import soundfile as sf


def scaled_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Fit into `long_side` without upscaling; even sizes so the frames can be muxed as yuv420 video."""
    scale = min(1.0, long_side / max(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def frame_to_jpeg(frame: av.VideoFrame, width: int, height: int, quality: int) -> bytes:
    """Resize with FFmpeg's swscale (one C pass to RGB at the target size), then Pillow's JPEG encoder."""
    image = frame.reformat(width=width, height=height, format="rgb24").to_image()
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pcm_to_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """int16 mono samples -> FLAC bytes (lossless, about half the size of WAV)."""
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


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
