"""Browser-playable clips: H.264/AAC MP4, MOSEI segments cut by time, content-addressed, made once."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cotforge.review.media import (
    ClipSource,
    MediaError,
    clip_id,
    make_playable,
    prepare,
)


def _streams(path: Path) -> dict[str, dict]:
    with av.open(str(path)) as container:
        found = {}
        for stream in container.streams:
            found[stream.type] = {"codec": stream.codec_context.name, "seconds": float(stream.duration * stream.time_base),
                                  "pix_fmt": getattr(stream.codec_context, "pix_fmt", None)}
    return found


def _mjpeg_clip(path: Path, seconds: float = 2.0) -> Path:
    """A clip like the teacher's request media: MJPEG video + FLAC audio in MP4 (Chromium shows no picture)."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("mjpeg", rate=5)
        video.width, video.height, video.pix_fmt = 320, 240, "yuvj420p"
        audio = out.add_stream("flac", rate=16000, layout="mono")
        for i in range(int(seconds * 5)):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i * 20 % 255, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        tone = (np.sin(np.arange(int(seconds * 16000)) / 10) * 8000).astype(np.int16)
        for start in range(0, len(tone), 4096):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 4096], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))
    return path


def test_h264_aac_source_is_remuxed_with_its_index_first(demo_factory, tmp_path: Path) -> None:
    made = demo_factory("mosi", clips=3)
    clip = made.clips[0]
    dest = tmp_path / "a.mp4"
    assert make_playable(ClipSource(str(made.root / clip.path)), dest) == "remux"
    streams = _streams(dest)
    assert streams["video"]["codec"] == "h264" and streams["audio"]["codec"] == "aac"
    assert streams["video"]["seconds"] == pytest.approx(clip.duration, abs=0.1)
    data = dest.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: the browser needs no second request for the index


def test_mosei_segment_is_cut_by_time_and_encoded(demo_factory, tmp_path: Path) -> None:
    made = demo_factory("mosei", clips=4, full_videos=True)
    clip = next(c for c in made.clips if c.start and c.start > 1)
    dest = tmp_path / "seg.mp4"
    assert make_playable(ClipSource(str(made.root / clip.path), clip.start, clip.end), dest) == "encode"
    streams = _streams(dest)
    length = clip.end - clip.start
    assert streams["video"]["codec"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec"] == "aac"
    assert streams["video"]["seconds"] == pytest.approx(length, abs=0.15)
    assert streams["audio"]["seconds"] == pytest.approx(length, abs=0.15)


def test_mjpeg_source_is_transcoded_to_h264_aac(tmp_path: Path) -> None:
    source = _mjpeg_clip(tmp_path / "mjpeg.mp4")
    dest = tmp_path / "out.mp4"
    assert make_playable(ClipSource(str(source)), dest) == "encode"
    streams = _streams(dest)
    assert (streams["video"]["codec"], streams["audio"]["codec"]) == ("h264", "aac")
    assert streams["audio"]["seconds"] == pytest.approx(2.0, abs=0.1)


def test_clips_are_content_addressed_and_made_once(demo_factory, tmp_path: Path) -> None:
    made = demo_factory("mosi", clips=3)
    paths = [str(made.root / c.path) for c in made.clips]
    sources = [ClipSource(p) for p in paths] + [ClipSource(paths[0])]
    first = prepare(sources, tmp_path / "clips")
    assert first.remuxed + first.encoded == 3 and not first.errors
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == 3
    again = prepare(sources, tmp_path / "clips")
    assert (again.reused, again.remuxed, again.encoded) == (3, 0, 0)
    assert again.names == first.names
    assert clip_id(ClipSource(paths[0], 0.5, 1.0)) != clip_id(ClipSource(paths[0]))


def test_missing_and_broken_media_are_reasons_not_exceptions(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    result = prepare([ClipSource(str(tmp_path / "gone.mp4")), ClipSource(str(broken))], tmp_path / "clips")
    reasons = sorted(result.errors.values())
    assert reasons[0].startswith("media file missing: ") and reasons[1].startswith("media unreadable: ")
    assert not list((tmp_path / "clips").glob("*"))  # no half-written file left behind
    with pytest.raises(MediaError, match="media file missing"):
        clip_id(ClipSource(str(tmp_path / "gone.mp4")))
