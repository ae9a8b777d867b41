"""MonoResampler against PyAV's own AudioResampler: the same samples for every input it meets."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from cotforge.media.resample import MonoResampler


def _frames(fmt: str, layout: str, rate: int, sizes: list[int], seed: int) -> list[av.AudioFrame]:
    """Noise in frames of the given sizes, as a decoder would hand them over (pts and time base set)."""
    rng = np.random.default_rng(seed)
    channels = len(av.AudioLayout(layout).channels)
    frames, pts = [], 0
    for size in sizes:
        if fmt == "fltp":
            data = rng.uniform(-0.9, 0.9, (channels, size)).astype(np.float32)
        else:  # s16, interleaved
            data = rng.integers(-30000, 30000, (1, size * channels), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
        frames.append(frame)
        pts += size
    return frames


def _samples(resampler, frames: list[av.AudioFrame]) -> tuple[np.ndarray, list[int]]:
    out = [f for frame in [*frames, None] for f in resampler.resample(frame)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]), [f.samples for f in out]


@pytest.mark.parametrize(
    ("fmt", "layout", "rate", "sizes"),
    [
        ("fltp", "stereo", 48000, [1024] * 470),  # AAC at 48 kHz, ten seconds
        ("fltp", "stereo", 44100, [1024] * 200 + [317]),  # 44.1 kHz, a short last frame
        ("fltp", "5.1", 48000, [1024] * 60),
        ("s16", "mono", 16000, [4000, 1, 12000, 999]),  # already the output's shape: only reframed
        ("s16", "stereo", 8000, [160] * 300),  # upsampling
    ],
)
def test_the_same_samples_and_frames_as_pyavs_resampler(fmt: str, layout: str, rate: int, sizes: list[int]) -> None:
    frames = _frames(fmt, layout, rate, sizes, seed=len(sizes))
    ours, our_sizes = _samples(MonoResampler(16000, frame_size=16000), frames)
    theirs, their_sizes = _samples(av.AudioResampler(format="s16", layout="mono", rate=16000, frame_size=16000), frames)
    assert ours.dtype == np.int16 and np.array_equal(ours, theirs) and our_sizes == their_sizes


def test_a_stream_that_changes_shape_midway_is_refused() -> None:
    resampler = MonoResampler(16000, frame_size=16000)
    resampler.resample(_frames("fltp", "stereo", 48000, [1024], seed=1)[0])
    with pytest.raises(ValueError, match="differs from the stream's first"):
        resampler.resample(_frames("fltp", "mono", 48000, [1024], seed=2)[0])


def test_nothing_in_nothing_out() -> None:
    assert MonoResampler(16000, frame_size=16000).resample(None) == []
