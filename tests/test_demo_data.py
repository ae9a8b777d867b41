"""The demo dataset must look like the real MMSA files and hold media that decodes as declared.

Every check reads the output back the way the pipeline does (csv module, PyAV), never through
the generator's own structures, so a drift from the real layout shows up here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cotforge.config import SourceConfig
from cotforge.demo import CORRUPT_KINDS, DemoDataset, make_demo_dataset
from cotforge.demo.voice import synth_voice
from cotforge.sources.mmsa import MMSASource

HEADER = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
SHORT = {"min_seconds": 1.0, "max_seconds": 3.0}
CLIPS = 10
SIMS_GRID = {round(k * 0.2, 1) for k in range(-5, 6)}


def read_rows(demo: DemoDataset) -> tuple[list[str], list[dict[str, str]]]:
    with demo.label_file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def decode(path: Path) -> tuple[int, int]:
    """Video frames and audio samples that actually decode, stopping at the first decode error."""
    frames = samples = 0
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(*container.streams):
                if isinstance(frame, av.VideoFrame):
                    frames += 1
                else:
                    samples += frame.samples
        except av.FFmpegError:
            pass
    return frames, samples


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoDataset]:
    root = tmp_path_factory.mktemp("demos")
    names = ("mosi", "mosei", "sims", "simsv2")
    return {name: make_demo_dataset(root / name, name, CLIPS, seed=7, **SHORT) for name in names}


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return make_demo_dataset(tmp_path_factory.mktemp("corrupt") / "d", "sims", 6, corrupt=5, seed=3, **SHORT)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return make_demo_dataset(tmp_path_factory.mktemp("full") / "d", "mosei", 8, seed=5, full_videos=True, **SHORT)


@pytest.mark.parametrize("name", ["mosi", "mosei", "sims", "simsv2"])
def test_layout_header_and_manifest(demos: dict[str, DemoDataset], name: str) -> None:
    demo = demos[name]
    assert demo.label_file.name == ("meta.csv" if name == "simsv2" else "label.csv")
    header, rows = read_rows(demo)
    assert header == HEADER
    assert len(rows) == CLIPS
    manifest = json.loads((demo.root / "demo.json").read_text(encoding="utf-8"))
    assert manifest["dataset"] == name and manifest["seed"] == 7
    for row, clip in zip(rows, manifest["clips"], strict=True):
        assert (row["video_id"], row["clip_id"], row["text"], row["mode"]) == (
            clip["video_id"], clip["clip_id"], clip["text"], clip["split"]
        )
        assert float(row["label"]) == clip["label"]
        assert clip["path"] == f"Raw/{row['video_id']}/{row['clip_id']}.mp4"
        assert (demo.root / clip["path"]).stat().st_size > 0


@pytest.mark.parametrize("name", ["mosi", "mosei", "sims", "simsv2"])
def test_id_formats(demos: dict[str, DemoDataset], name: str) -> None:
    _, rows = read_rows(demos[name])
    video_pattern, clip_pattern = {
        "mosi": (r"[A-Za-z0-9_-]{11}", r"[1-9]\d*"),
        "mosei": (r"[A-Za-z0-9_-]{11}|\d+", r"[1-9]\d*"),
        "sims": (r"video_\d{4}", r"\d{4}"),
        "simsv2": (r"aqgy\d_\d{4}", r"\d{5}"),
    }[name]
    by_video: dict[str, list[str]] = {}
    for row in rows:
        assert re.fullmatch(video_pattern, row["video_id"]), row["video_id"]
        assert re.fullmatch(clip_pattern, row["clip_id"]), row["clip_id"]
        by_video.setdefault(row["video_id"], []).append(row["clip_id"])
    first = {"mosi": "1", "mosei": "1", "sims": "0001", "simsv2": "00000"}[name]
    assert all(ids[0] == first for ids in by_video.values())
    if name == "mosi":
        assert any(len(ids) > 1 for ids in by_video.values())
    if name == "mosei":
        assert any(video.isdigit() for video in by_video)


@pytest.mark.parametrize("name", ["mosi", "mosei", "sims", "simsv2"])
def test_labels_grid_range_and_annotation(demos: dict[str, DemoDataset], name: str) -> None:
    _, rows = read_rows(demos[name])
    sims = name.startswith("sims")
    high = 1.0 if sims else 3.0
    labels = [float(row["label"]) for row in rows]
    assert min(labels) == -high and max(labels) == high and 0.0 in labels
    for row, label in zip(rows, labels, strict=True):
        if sims:
            assert label in SIMS_GRID
            unimodal = [float(row[column]) for column in ("label_T", "label_A", "label_V")]
            assert all(value in SIMS_GRID and abs(value - label) <= 0.41 for value in unimodal)
            expected = "Neutral" if label == 0 else "Positive" if label > 0 else "Negative"
        else:
            assert -3.0 <= label <= 3.0
            assert abs(label * 5 - round(label * 5)) < 1e-9 or label == round(round(label * 3) / 3, 4)
            assert row["label_T"] == row["label_A"] == row["label_V"] == ""
            expected = "Neutral" if abs(label) < 0.5 else "Positive" if label > 0 else "Negative"
        assert row["annotation"] == expected
    assert {row["mode"] for row in rows} == {"train", "valid", "test"}


@pytest.mark.parametrize("name", ["mosi", "mosei", "sims", "simsv2"])
def test_transcripts_need_quoting_and_match_language(demos: dict[str, DemoDataset], name: str) -> None:
    demo = demos[name]
    _, rows = read_rows(demo)
    texts = [row["text"] for row in rows]
    assert any("," in text and '"' in text for text in texts)
    assert any("\n" in text for text in texts)
    assert '""' in demo.label_file.read_text(encoding="utf-8")
    if name.startswith("sims"):
        assert all(re.search(r"[\u4e00-\u9fff]", text) for text in texts)
        assert any(re.search(r"[！。，？]", text) for text in texts)
    elif name == "mosi":
        plain = [text for text in texts if '"' not in text]
        assert all(re.fullmatch(r"[A-Z0-9 \n]+", text) for text in plain)
    else:
        assert any(re.search(r"[a-z]", text) and re.search(r"[.!?]", text) for text in texts)


def test_transcript_words_follow_the_label(demos: dict[str, DemoDataset]) -> None:
    _, rows = read_rows(demos["mosei"])
    strongest = {float(row["label"]): row["text"] for row in rows}
    assert "loved" in strongest[3.0] or "amazing" in strongest[3.0] or "blown away" in strongest[3.0]
    assert any(word in strongest[-3.0] for word in ("terrible", "hated", "awful"))


@pytest.mark.parametrize("name", ["mosi", "mosei", "sims", "simsv2"])
def test_clip_streams_match_what_was_declared(demos: dict[str, DemoDataset], name: str) -> None:
    demo = demos[name]
    for clip in demo.clips:
        path = demo.root / clip.path
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert abs(float(video.average_rate) - clip.fps) < 1e-6
            assert (video.codec_context.width, video.codec_context.height) == (clip.width, clip.height)
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
            assert abs(float(video.duration * video.time_base) - clip.duration) <= 1 / clip.fps
            assert audio.sample_rate == clip.audio_rate
            assert abs(float(audio.duration * audio.time_base) - clip.duration) <= 0.025
            times = [frame.time for frame in container.decode(video=0)]
        assert len(times) == round(clip.duration * clip.fps)
        assert all(abs(t - i / clip.fps) < 1e-3 for i, t in enumerate(times))
        _, samples = decode(path)
        assert -0.025 <= samples / clip.audio_rate - clip.duration <= 1024 / clip.audio_rate


def test_media_parameters_vary(demos: dict[str, DemoDataset]) -> None:
    clips = [clip for demo in demos.values() for clip in demo.clips]
    assert len({(clip.width, clip.height) for clip in clips}) >= 3
    assert any(clip.height > clip.width for clip in clips)
    assert len({clip.fps for clip in clips}) >= 3
    assert any(Fraction(clip.fps).limit_denominator(1001) == Fraction(30000, 1001) for clip in clips)
    assert len({clip.audio_rate for clip in clips}) >= 2
    assert all(1.0 - 1 / clip.fps <= clip.duration <= 3.0 + 1 / clip.fps for clip in clips)


def test_frames_move_and_audio_is_not_silent(demos: dict[str, DemoDataset]) -> None:
    clip = demos["mosi"].clips[0]
    with av.open(str(demos["mosi"].root / clip.path)) as container:
        images = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(2), container.decode(video=0))]
    assert not np.array_equal(images[0], images[1])
    with av.open(str(demos["mosi"].root / clip.path)) as container:
        sound = np.concatenate([frame.to_ndarray().ravel() for frame in container.decode(audio=0)])
    assert np.sqrt(np.mean(sound**2)) > 0.02


def test_each_corrupt_kind_has_its_defect(corrupted: DemoDataset) -> None:
    kinds = {clip.corrupt: clip for clip in corrupted.clips if clip.corrupt}
    assert sorted(kinds) == sorted(CORRUPT_KINDS)
    assert len({clip.split for clip in kinds.values()}) == 3
    _, rows = read_rows(corrupted)
    assert len(rows) == 6
    root = corrupted.root

    truncated = kinds["truncated"]
    frames, _ = decode(root / truncated.path)
    assert 0 <= frames < round(truncated.duration * truncated.fps)
    with av.open(str(root / truncated.path)) as container:
        assert container.streams.video and container.streams.audio

    with av.open(str(root / kinds["no-audio"].path)) as container:
        assert container.streams.video and not container.streams.audio
    assert kinds["no-audio"].audio_rate == 0

    with av.open(str(root / kinds["no-video"].path)) as container:
        assert container.streams.audio and not container.streams.video
    assert kinds["no-video"].fps == 0 and kinds["no-video"].width == 0

    assert (root / kinds["zero-bytes"].path).stat().st_size == 0
    assert not (root / kinds["missing"].path).exists()
    assert (kinds["missing"].video_id, kinds["missing"].clip_id) in {(r["video_id"], r["clip_id"]) for r in rows}


def test_full_videos_layout_segments_and_transcripts(full: DemoDataset) -> None:
    header, rows = read_rows(full)
    assert header == HEADER + ["start", "end"]
    assert not list((full.root / "Raw").glob("*/*.mp4"))
    by_video: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_video.setdefault(row["video_id"], []).append(row)
    assert any(video.isdigit() for video in by_video)
    assert any(float(segments[0]["start"]) < 0 for segments in by_video.values())
    for video, segments in by_video.items():
        assert 2 <= len(segments) <= 4
        assert [row["clip_id"] for row in segments] == [str(n) for n in range(1, len(segments) + 1)]
        times = [(float(row["start"]), float(row["end"])) for row in segments]
        assert -1.0 < times[0][0] < 2.0
        assert all(start < end for start, end in times)
        assert all(previous[1] < following[0] for previous, following in zip(times, times[1:]))
        transcript = full.root / "Raw/Transcript/Segmented/Combined" / f"{video}.txt"
        lines = transcript.read_text(encoding="utf-8").splitlines()
        parsed = [line.split("___", 4) for line in lines]
        assert [(vid, seg, float(start), float(end)) for vid, seg, start, end, _ in parsed] == [
            (video, row["clip_id"], float(row["start"]), float(row["end"])) for row in segments
        ]
        with av.open(str(full.root / "Raw/Videos/Full/Combined" / f"{video}.mp4")) as container:
            stream = container.streams.video[0]
            assert float(stream.duration * stream.time_base) > times[-1][1]
    for clip in full.clips:
        assert clip.path == f"Raw/Videos/Full/Combined/{clip.video_id}.mp4"
        assert clip.start is not None and clip.end is not None
        assert clip.duration == pytest.approx(clip.end - max(clip.start, 0.0))


def test_full_video_corruption_damages_every_segment(tmp_path: Path) -> None:
    demo = make_demo_dataset(tmp_path / "d", "mosei", 4, corrupt=2, seed=2, full_videos=True, **SHORT)
    by_video: dict[str, set[str | None]] = {}
    for clip in demo.clips:
        by_video.setdefault(clip.video_id, set()).add(clip.corrupt)
    assert all(len(kinds) == 1 for kinds in by_video.values())
    assert sorted(kind for kinds in by_video.values() for kind in kinds if kind) == ["no-audio", "truncated"]


def test_reader_reads_the_demo_unchanged(
    demos: dict[str, DemoDataset], full: DemoDataset, corrupted: DemoDataset
) -> None:
    for demo in [*demos.values(), full]:
        refs = list(MMSASource(SourceConfig(dataset=demo.dataset, root=demo.root)))
        assert len(refs) == len(demo.clips)
        assert all(ref.error is None and Path(ref.media_path).is_file() for ref in refs)
    refs = list(MMSASource(SourceConfig(dataset="mosei", root=full.root, segments="transcripts")))
    assert [(ref.start, ref.end) for ref in refs] == [(max(c.start or 0.0, 0.0), c.end) for c in full.clips]
    failed = [ref for ref in MMSASource(SourceConfig(dataset="sims", root=corrupted.root)) if ref.error]
    assert len(failed) == 1 and "missing" in (failed[0].error or "")


def test_same_seed_same_dataset(tmp_path: Path) -> None:
    calls: list[int] = []
    first = make_demo_dataset(tmp_path / "a", "mosi", 4, seed=11, min_seconds=1, max_seconds=1.2, progress=calls.append)
    second = make_demo_dataset(tmp_path / "b", "mosi", 4, seed=11, min_seconds=1, max_seconds=1.2)
    other = make_demo_dataset(tmp_path / "c", "mosi", 4, seed=12, min_seconds=1, max_seconds=1.2)
    assert calls == [1, 1, 1, 1]
    assert first.label_file.read_bytes() == second.label_file.read_bytes()
    assert (first.root / "demo.json").read_bytes() == (second.root / "demo.json").read_bytes()
    assert first.clips == second.clips
    assert other.label_file.read_bytes() != first.label_file.read_bytes()


def test_rewrites_a_previous_demo_but_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    make_demo_dataset(out, "sims", 3, seed=1, min_seconds=1, max_seconds=1)
    demo = make_demo_dataset(out, "simsv2", 1, seed=1, min_seconds=1, max_seconds=1)
    assert not (out / "label.csv").exists()
    assert [path.relative_to(out).as_posix() for path in (out / "Raw").rglob("*.mp4")] == [demo.clips[0].path]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a demo dataset"):
        make_demo_dataset(other, "mosi", 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "mosi", "clips": 0}, "at least 1"),
        ({"dataset": "mosi", "clips": 2, "corrupt": 3}, "corrupt"),
        ({"dataset": "mosi", "clips": 2, "corrupt": -1}, "corrupt"),
        ({"dataset": "iemocap", "clips": 2}, "unknown dataset"),
        ({"dataset": "sims", "clips": 2, "full_videos": True}, "MOSEI"),
        ({"dataset": "mosi", "clips": 2, "min_seconds": 3, "max_seconds": 2}, "min_seconds"),
        ({"dataset": "mosi", "clips": 2, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_voice_is_voiced_and_valence_raises_pitch(rate: int) -> None:
    low = synth_voice(2.0, rate, -1.0, np.random.default_rng(4))
    high = synth_voice(2.0, rate, 1.0, np.random.default_rng(4))
    assert low.dtype == np.float32 and low.shape == (2 * rate,)
    assert np.abs(low).max() <= 1.0 and np.abs(low[: rate // 100]).max() < 0.05

    def centroid(signal: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(signal))[: int(len(signal) * 400 / rate)]
        return float(np.sum(spectrum * np.arange(spectrum.size)) / np.sum(spectrum))

    assert centroid(high) > centroid(low)


# --- the split of demo/ into labels, media and writer changed no byte ------------------------------

# sha256 of files written before `demo/writer.py` was split (same seeds and sizes as the fixtures above:
# "mosi-7" is demos["mosi"], "sims-3" is `corrupted`, "mosei-5" is `full`).
TEXT_SHA256 = {
    "mosi-7/label.csv":
        "5a21f7a695aaf65587d0bdf617fb30cb57d9a2c2525485c9e1a575ec77ec9225",
    "mosi-7/demo.json":
        "d07467b1f28f2d15694e4fc3a19ece160965e816ebe41ceb507e876ae7e973d3",
    "sims-3/label.csv":
        "93a84bf3cdbcddc78e5f03a6a67f98103d29e151f422fb3da41e58f9b54fc08e",
    "sims-3/demo.json":
        "6da16110a1d067324a41b9cfd33379a7499357756317d5bcec79daaab3f0af75",
    "mosei-5/label.csv":
        "ec83aafb515ee407dff5dbc7a390a952b0113ec803b90d5e811ad7c1967304d2",
    "mosei-5/demo.json":
        "7de0321e5ffd20c55e6859db515f94d86850c4fbd16c7e6210304d7c710e7045",
    "mosei-5/Raw/Transcript/Segmented/Combined/362369.txt":
        "4e70274c0fa8e4124027cae3868fa2dbfec6fe173060519e765f8516a12cfe4c",
}
MEDIA_SHA256 = {
    "mosi-7/Raw/YSNv_Dn2k2N/1.mp4":
        "38462efae141a333fd2684e8aabc4306a56d127e3a5d615fe178a94020badf30",
    "mosi-7/Raw/hcCcjG-DZ60/5.mp4":
        "d5875cc61f083eb9a621531cf8999c3288e3d4acb8b7571580755d4b7c8aa167",
    "sims-3/Raw/video_0001/0003.mp4":
        "71621091ea6457cd857eae51ec8cb1bf99393751c249b3b83389584215afa60c",
    "mosei-5/Raw/Videos/Full/Combined/362369.mp4":
        "5c35c12dee73d52a95da6e78c635bd189e6fc23598a95b69c069111de64e3ce3",
}
MEDIA_ENCODER = ("18.1.0", (62, 28, 102))
"""PyAV and libavcodec versions the media hashes were taken with; another encoder build writes other bytes."""


@pytest.fixture(scope="module")
def by_case(demos: dict[str, DemoDataset], corrupted: DemoDataset, full: DemoDataset) -> dict[str, Path]:
    return {"mosi-7": demos["mosi"].root, "sims-3": corrupted.root, "mosei-5": full.root}


def _sha256(by_case: dict[str, Path], name: str) -> str:
    case, path = name.split("/", 1)
    return hashlib.sha256((by_case[case] / path).read_bytes()).hexdigest()


def test_same_seed_same_label_files_as_before_the_split(by_case: dict[str, Path]) -> None:
    assert {name: _sha256(by_case, name) for name in TEXT_SHA256} == TEXT_SHA256


@pytest.mark.skipif((av.__version__, av.library_versions["libavcodec"]) != MEDIA_ENCODER, reason="another encoder build")
def test_same_seed_same_clips_as_before_the_split(by_case: dict[str, Path]) -> None:
    assert {name: _sha256(by_case, name) for name in MEDIA_SHA256} == MEDIA_SHA256
