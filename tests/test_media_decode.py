"""The fast bundle path gives what the plain one gave: same timestamps, frames within a PSNR bound, same audio.

The reference below is the decoder as it was before the speed work, written for clarity: every
decoded frame kept, each target's nearest frame picked afterwards, each sampled frame converted by
its own `reformat(...).to_image()` and saved by Pillow, the resampled audio collected whole and then
trimmed. The bundle stage keeps one swscale context, scales before converting, stops decoding video
after the last sampled frame, and encodes FLAC as the audio is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cotforge.config import MediaConfig, SourceConfig
from cotforge.media.decode import _targets, decode_clip
from cotforge.media.encode import scaled_size
from cotforge.sources import open_source
from cotforge.types import ClipRef

MIN_PSNR_DB = 38.0  # JPEG q90 of the same picture is about 40 dB from it; the two scalers differ by far less


def reference(ref: ClipRef, cfg: MediaConfig) -> tuple[list[float], list[np.ndarray], np.ndarray]:
    """(timestamps, RGB frames, int16 audio) of a clip, the plain way."""
    with av.open(ref.media_path) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video.codec_context.thread_count = 1
        video.codec_context.skip_frame = "NONREF"
        seconds = [float(s.duration * s.time_base) for s in (video, audio) if s.duration is not None]
        declared = max([*seconds, container.duration / av.time_base])
        start = ref.start or 0.0
        end = min(ref.end, declared) if ref.end is not None else declared
        audio_end = min(end, float(audio.duration * audio.time_base)) if audio.duration is not None else end
        if start > 0:
            container.seek(int(start * av.time_base), backward=True, any_frame=False)
        frames: list[tuple[float, av.VideoFrame]] = []
        chunks: list[np.ndarray] = []
        resampler = av.AudioResampler(format="s16", layout="mono", rate=cfg.sample_rate)
        audio_t0 = None
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                if packet.stream is video and start - 1e-3 <= frame.time < end:
                    frames.append((frame.time, frame))
                elif packet.stream is audio and (audio_t0 is None or frame.time < end + 1.0):
                    audio_t0 = frame.time if audio_t0 is None else audio_t0
                    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        targets, _ = _targets(start, end, cfg, float(video.average_rate))
        step = targets[1] - targets[0] if len(targets) > 1 else 1.0
        taken: list[tuple[float, av.VideoFrame]] = []
        for target in targets:
            later = next((i for i, (t, _) in enumerate(frames) if t >= target), None)
            if later is None:
                if target - frames[-1][0] > step / 2:
                    break
                pick = frames[-1]
            else:
                pick = frames[later - 1] if later and target - frames[later - 1][0] < frames[later][0] - target else frames[later]
            if not taken or taken[-1][0] != pick[0]:
                taken.append(pick)
        if len(taken) % 2:  # an even count (see test_the_frame_count_is_even_and_at_least_two)
            taken = taken[:-1] if len(taken) > 1 else taken * 2
        w, h = scaled_size(video.codec_context.width, video.codec_context.height, cfg.size)
        images = []
        for _, frame in taken:
            buf = io.BytesIO()
            frame.reformat(width=w, height=h, format="rgb24").to_image().save(buf, format="JPEG", quality=cfg.jpeg_quality)
            images.append(np.asarray(Image.open(buf)))
    pcm = np.concatenate(chunks)
    offset = int(round((start - audio_t0) * cfg.sample_rate))
    pcm = pcm[offset:] if offset > 0 else np.concatenate([np.zeros(-offset, np.int16), pcm])
    pcm = pcm[: max(0, int(round((audio_end - start) * cfg.sample_rate)))]
    return [round(t - start, 4) for t, _ in taken], images, pcm


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def clips(root: Path, dataset: str) -> list[ClipRef]:
    return [r for r in open_source(SourceConfig(dataset=dataset, root=root)) if r.error is None]


@pytest.mark.parametrize(
    ("dataset", "full_videos", "cfg"),
    [
        ("mosi", False, MediaConfig()),
        ("mosi", False, MediaConfig(fps=5.0, max_frames=64, size=160, sample_rate=22050)),
        ("mosei", True, MediaConfig()),  # time ranges of full videos: a seek, audio before the start dropped
    ],
)
def test_bundle_matches_the_plain_decoder(demo_factory, dataset: str, full_videos: bool, cfg: MediaConfig) -> None:
    demo = demo_factory(dataset, clips=6, full_videos=full_videos, min_seconds=1.5, max_seconds=4.0, seed=4)
    for ref in clips(demo.root, dataset):
        bundle = decode_clip(ref, cfg)
        times, images, pcm = reference(ref, cfg)
        assert bundle.frame_timestamps == times, ref.key
        for data, expected in zip(bundle.frames, images, strict=True):
            got = np.asarray(Image.open(io.BytesIO(data)))
            assert got.shape == expected.shape and psnr(got, expected) >= MIN_PSNR_DB, ref.key
        audio, rate = sf.read(io.BytesIO(bundle.audio_flac), dtype="int16")
        assert rate == cfg.sample_rate and bundle.audio_num_samples == len(pcm)
        assert np.array_equal(audio, pcm), ref.key


def test_a_time_range_gets_exactly_its_span_of_audio(demo_factory) -> None:
    """Audio decoded from the keyframe before a segment's start is dropped up to the start, as it comes."""
    demo = demo_factory("mosei", clips=6, full_videos=True, min_seconds=1.5, max_seconds=4.0, seed=4)
    for ref in clips(demo.root, "mosei"):
        bundle = decode_clip(ref, MediaConfig())
        assert bundle.audio_num_samples == round(bundle.duration * 16000)


def video_only(path: Path, frames: int, fps: int = 25) -> ClipRef:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for number in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 9 * number % 256, np.uint8), format="rgb24")
            frame.pts = number
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return ClipRef(key=f"t/{path.stem}/1", dataset="mosi", video_id=path.stem, clip_id="1", split="train", text="",
                   label=0.0, media_path=str(path), language="en")


@pytest.mark.parametrize(
    ("frames", "cfg", "count"),
    [
        (63, MediaConfig(), 4),  # 2.52 s at 2 fps: 5 targets, the last dropped
        (50, MediaConfig(max_frames=3), 2),  # an odd cap is taken as the even number below it
        (8, MediaConfig(), 2),  # 0.32 s: too short for 2 fps, sampled at its start and middle
        (50, MediaConfig(fps=25.0, max_frames=64), 50),  # every frame (non-reference ones skipped, so pairs meet)
        (1, MediaConfig(), 2),  # one picture: stored twice
    ],
)
def test_the_frame_count_is_even_and_at_least_two(tmp_path: Path, frames: int, cfg: MediaConfig, count: int) -> None:
    """vLLM's Qwen video processor drops an odd last frame and divides by zero on a single one."""
    cfg = cfg.model_copy(update={"require_audio": False})
    bundle = decode_clip(video_only(tmp_path / "v.mp4", frames), cfg)
    assert len(bundle.frames) % 2 == 0 and len(bundle.frames) >= 2
    assert len(bundle.frames) <= count and len(bundle.frame_timestamps) == len(bundle.frames)
    # the timestamps stay those of the frames taken: in order, inside the clip, one sample step apart at most
    times = bundle.frame_timestamps
    assert times == sorted(times) and 0 <= times[0] and times[-1] < bundle.duration
    if frames > 1:
        assert len(set(times)) == len(times)
        assert len(bundle.frames) == count or cfg.skip_nonref
    for got, target in zip(times, [i / bundle.frame_fps for i in range(len(times))], strict=True):
        assert abs(got - target) <= max(1 / 25, 0.5 / bundle.frame_fps) + 1e-6
