"""A small synthetic dataset in exactly the MMSA raw layout, with real H.264/AAC MP4 clips.

The point is to run the whole pipeline (readers, PyAV decoding, prompts) without the licensed
datasets and without network access. So the files follow the real ones to the letter: label
file name and header, id formats (SIMS' zero-padded `0001`, MOSEI's purely numeric video ids),
label grids, transcripts that need CSV quoting, and for MOSEI optionally CMU's full videos with
segment times (the first one slightly negative) and segmented transcript files. Media parameters
vary per clip (size, portrait, NTSC frame rate, sample rate, channels) because a decoder that only
ever saw one shape of file is not tested. Some clips can be corrupted on purpose, in the ways
real downloads go wrong, so failure handling is exercised too.

`demo.json` records what was encoded, so tests can compare decoded output with it.
"""

from __future__ import annotations

import csv
import heapq
import json
import shutil
import string
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from itertools import zip_longest
from pathlib import Path

import av
import numpy as np

from cotforge.sources.mmsa import TRANSCRIPT_DIR
from cotforge.sources.rows import SPLITS
from cotforge.demo.voice import synth_voice
from cotforge.types import DATASETS

CORRUPT_KINDS = ("truncated", "no-audio", "no-video", "zero-bytes", "missing")
HEADER = ("video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode")
FULL_VIDEO_DIR = "Raw/Videos/Full/Combined"
"""Where CMU keeps MOSEI's full videos; the reader's `source.full_video_dir` defaults to it."""

RESOLUTIONS = ((320, 240), (480, 270), (640, 360), (360, 640), (256, 144))
FRAME_RATES = (Fraction(24), Fraction(25), Fraction(30), Fraction(30000, 1001))
AUDIO_RATES = (16000, 44100, 48000)
AUDIO_FRAME_SAMPLES = 1024
TRUNCATE_FRACTION = 0.45
X264_CRF = "30"
"""ultrafast at crf 30 keeps test suites fast; benchmarks pass a slower preset that writes B-frames like real uploads."""
AAC_OPTIONS = {"aac_coder": "fast"}
"""FFmpeg's fast AAC coder halves audio encode time; quality is beside the point for test speech."""

CMU_ANCHORS = (-3.0, 3.0, 0.0, -1.2, 1.4, -0.6667, 2.3333)
SIMS_ANCHORS = (-1.0, 1.0, 0.0, -0.6, 0.4, -0.2, 0.8)
"""The first labels drawn, so that even a small demo spans both extremes, neutral and both signs."""

Timeline = list[tuple[float, float, float]]
"""(start, end, valence) of each spoken segment of a media file, in seconds of that file."""

YOUTUBE_ALPHABET = string.ascii_letters + string.digits + "-_"

SENTENCES_EN = {
    "pos2": (
        "I absolutely loved it, honestly one of the best films I have seen.",
        "This was amazing! The acting was brilliant from start to finish.",
        "Wow, I was blown away; I would happily watch it again tomorrow.",
    ),
    "pos1": (
        "It was pretty good overall, I enjoyed most of it.",
        "The story was nice and the ending worked for me.",
        "I liked it more than I expected to.",
    ),
    "neu": (
        "The movie is about two brothers who travel across the country.",
        "It runs about two hours and came out last spring.",
        "So, the next part of this video covers the soundtrack.",
    ),
    "neg1": (
        "It was a bit slow in the middle, kind of disappointing.",
        "The plot did not really work for me.",
        "I expected a lot more from the second half.",
    ),
    "neg2": (
        "This was terrible; the worst movie I have seen in years.",
        "I hated it, a complete waste of time and money!",
        "Honestly awful, the acting was painfully bad.",
    ),
}
SENTENCES_ZH = {
    "pos2": ("你这是嫁入豪门啊！", "太好了，我真的特别开心！", "这简直是我见过最棒的安排。"),
    "pos1": ("还不错，挺满意的。", "这个主意挺好的，试试吧。", "嗯，我觉得可以接受。"),
    "neu": ("我们明天上午九点出发。", "他说他下午再过来。", "这件事情我还要再想一想。"),
    "neg1": ("唉，这事有点麻烦。", "我不太喜欢这样的安排。", "你怎么又迟到了？"),
    "neg2": ("你太过分了，我再也不想见到你！", "这简直糟透了！", "别骗我了，我什么都知道了！"),
}
QUOTE_PREFIX = {"mosi": "SO I SAID, ", "mosei": "So I told them, ", "sims": "他说, ", "simsv2": "她说, "}
"""Each demo has one transcript with an ASCII comma and double quotes, so its CSV field is quoted."""


@dataclass
class DemoClip:
    """One label-file row as written, with the media parameters it was encoded with."""

    video_id: str
    clip_id: str
    split: str
    label: float
    text: str
    path: str
    duration: float
    fps: float
    width: int
    height: int
    audio_rate: int
    start: float | None = None
    end: float | None = None
    corrupt: str | None = None


@dataclass
class DemoDataset:
    """What `make_demo_dataset` wrote: where, which layout, and every row."""

    root: Path
    dataset: str
    label_file: Path
    clips: list[DemoClip]


@dataclass(frozen=True)
class _MediaSpec:
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


@dataclass
class _Row:
    """A label-file row before its media is written."""

    video_id: str
    clip_id: str
    split: str
    label: float
    valence: float
    unimodal: tuple[float, ...] | None
    text: str
    start: float | None = None
    end: float | None = None


@dataclass
class _MediaFile:
    """One file on disk and the rows it serves (one clip, or all segments of a full video)."""

    path: str
    spec: _MediaSpec
    rows: list[_Row]
    timeline: Timeline
    corrupt: str | None = None


def make_demo_dataset(
    out: Path,
    dataset: str,
    clips: int,
    corrupt: int = 0,
    seed: int = 0,
    full_videos: bool = False,
    min_seconds: float = 1.0,
    max_seconds: float = 15.0,
    progress: Callable[[int], None] | None = None,
    x264_preset: str = "ultrafast",
) -> DemoDataset:
    """Write `clips` rows of `dataset` in the MMSA raw layout under `out`, plus `out/demo.json`.

    The same seed gives the same rows and media parameters. `corrupt` media files are damaged on
    purpose (cycling through CORRUPT_KINDS); with `full_videos` (MOSEI only) a damaged full video
    damages all of its segments. `progress(1)` is called once per row after its media is written.
    `x264_preset` trades encode time for realism ("veryfast" and slower write B-frames).
    """
    _check_args(dataset, clips, corrupt, seed, full_videos, min_seconds, max_seconds)
    out = Path(out)
    _prepare_out(out)
    rng = np.random.default_rng(seed)
    sizes = _group_sizes(dataset, clips, corrupt if full_videos else 0, full_videos, rng)
    rows = _rows(dataset, sizes, rng)
    files = _plan_media(dataset, rows, sizes, full_videos, min_seconds, max_seconds, rng)
    for index, kind in _pick_corrupt(files, corrupt, rng).items():
        files[index].corrupt = kind
    written: list[DemoClip] = []
    for number, media in enumerate(files):
        _write_media(out, media, np.random.default_rng([seed, number]), x264_preset)
        for row in media.rows:
            written.append(_demo_clip(row, media))
            if progress is not None:
                progress(1)
    label_file = out / ("meta.csv" if dataset == "simsv2" else "label.csv")
    _write_label_file(label_file, dataset, rows, full_videos)
    if full_videos:
        _write_transcripts(out, files)
    _write_manifest(out, dataset, seed, full_videos, label_file, written)
    return DemoDataset(root=out, dataset=dataset, label_file=label_file, clips=written)


def _check_args(
    dataset: str, clips: int, corrupt: int, seed: int, full_videos: bool, min_seconds: float, max_seconds: float
) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if clips < 1:
        raise ValueError(f"--clips must be at least 1, got {clips}")
    if not 0 <= corrupt <= clips:
        raise ValueError(f"--corrupt must be between 0 and the number of clips ({clips}), got {corrupt}")
    if full_videos and dataset != "mosei":
        raise ValueError(f"--full-videos is CMU-MOSEI's layout; it does not apply to {dataset}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"clip lengths need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")


def _prepare_out(out: Path) -> None:
    """Create `out`, or clear a previous demo there; never write over anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the demo dataset")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "demo.json").is_file():
            raise ValueError(
                f"{out} is not empty and is not a demo dataset (no demo.json); choose a new or empty folder"
            )
        shutil.rmtree(out / "Raw", ignore_errors=True)
        for name in ("label.csv", "meta.csv", "demo.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _group_sizes(dataset: str, clips: int, min_groups: int, full_videos: bool, rng: np.random.Generator) -> list[int]:
    """Clips per video: MOSI has several per video, full MOSEI videos 2-4 segments, others 1-4.

    A corrupt full video damages all its segments, so `--corrupt K` needs K videos: big groups
    are split until there are `min_groups` of them (which may leave one-segment videos).
    """
    low, high = (2, 5) if dataset == "mosi" else (2, 4) if full_videos else (1, 4)
    sizes: list[int] = []
    while sum(sizes) < clips:
        sizes.append(int(rng.integers(low, high + 1)))
    sizes[-1] -= sum(sizes) - clips
    if len(sizes) > 1 and sizes[-1] < low:
        sizes[-2:] = [sum(sizes[-2:])] if sum(sizes[-2:]) <= high else [sizes[-2] + sizes[-1] - low, low]
    while len(sizes) < min_groups:
        largest = sizes.index(max(sizes))
        sizes[largest : largest + 1] = [sizes[largest] - sizes[largest] // 2, sizes[largest] // 2]
    return sizes


def _rows(dataset: str, sizes: list[int], rng: np.random.Generator) -> list[_Row]:
    """Rows ordered by video and clip like the real files, with shuffled labels and splits."""
    count = sum(sizes)
    labels = _labels(dataset, count, rng)
    splits = _splits(count, rng)
    video_ids = _video_ids(dataset, len(sizes), rng)
    rows: list[_Row] = []
    for video_id, size in zip(video_ids, sizes, strict=True):
        for number in range(size):
            index = len(rows)
            label = labels[index]
            rows.append(
                _Row(
                    video_id=video_id,
                    clip_id=_clip_id(dataset, number),
                    split=splits[index],
                    label=label,
                    valence=label / DATASETS[dataset].scale.high,
                    unimodal=_unimodal(label, rng) if dataset in ("sims", "simsv2") else None,
                    text=_text(dataset, label, index, count, rng),
                )
            )
    return rows


def _labels(dataset: str, count: int, rng: np.random.Generator) -> list[float]:
    """Anchors first (both extremes, neutral, both signs), then random values on the dataset's grid."""
    sims = dataset in ("sims", "simsv2")
    anchors = SIMS_ANCHORS if sims else CMU_ANCHORS
    draw = _sims_label if sims else _cmu_label
    labels = list(anchors[:count]) + [draw(rng) for _ in range(count - len(anchors))]
    rng.shuffle(labels)
    return labels


def _cmu_label(rng: np.random.Generator) -> float:
    """A mean of 5 annotators (a multiple of 0.2) or of 3 (a third, rounded to 4 decimals)."""
    if rng.random() < 0.5:
        return round(int(rng.integers(-15, 16)) / 5, 4) + 0.0
    return round(int(rng.integers(-9, 10)) / 3, 4) + 0.0


def _sims_label(rng: np.random.Generator) -> float:
    return round(int(rng.integers(-5, 6)) * 0.2, 1) + 0.0


def _unimodal(label: float, rng: np.random.Generator) -> tuple[float, ...]:
    """SIMS' text/audio/vision labels: on the same grid, within two steps of the overall label."""
    steps = rng.integers(-2, 3, 3)
    return tuple(round(min(1.0, max(-1.0, label + 0.2 * int(step))), 1) + 0.0 for step in steps)


def _splits(count: int, rng: np.random.Generator) -> list[str]:
    """About 60/20/20 train/valid/test, each split non-empty once there are three rows."""
    if count < 3:
        splits = ["train", "test"][:count]
    else:
        held_out = max(1, round(0.2 * count))
        splits = ["train"] * (count - 2 * held_out) + ["valid"] * held_out + ["test"] * held_out
    rng.shuffle(splits)
    return splits


def _video_ids(dataset: str, count: int, rng: np.random.Generator) -> list[str]:
    if dataset == "sims":
        return [f"video_{number + 1:04d}" for number in range(count)]
    if dataset == "simsv2":
        return [f"aqgy{int(rng.integers(3, 6))}_{number + 1:04d}" for number in range(count)]
    ids = ["".join(rng.choice(list(YOUTUBE_ALPHABET), 11)) for _ in range(count)]
    if dataset == "mosei":
        ids[min(1, count - 1)] = str(int(rng.integers(10000, 400000)))
    return ids


def _clip_id(dataset: str, number: int) -> str:
    if dataset == "sims":
        return f"{number + 1:04d}"
    if dataset == "simsv2":
        return f"{number:05d}"
    return str(number + 1)


def _annotation(dataset: str, label: float) -> str:
    """MMSA's annotation column: SIMS calls only 0 neutral, the CMU sets anything under 0.5 away."""
    neutral = label == 0 if dataset in ("sims", "simsv2") else abs(label) < 0.5
    if neutral:
        return "Neutral"
    return "Positive" if label > 0 else "Negative"


def _text(dataset: str, label: float, index: int, count: int, rng: np.random.Generator) -> str:
    """A transcript whose words match the label; row 1 needs CSV quoting, a middle row has a newline."""
    bank = (SENTENCES_ZH if dataset in ("sims", "simsv2") else SENTENCES_EN)[_bucket(dataset, label)]
    first, second = (str(sentence) for sentence in rng.choice(bank, 2, replace=False))
    text = _spell(dataset, first)
    if index == min(1, count - 1):
        text = f'{QUOTE_PREFIX[dataset]}"{text}"'
    if count >= 10 and index == count // 2:
        text = f"{text}\n{_spell(dataset, second)}"
    return text


def _bucket(dataset: str, label: float) -> str:
    """Polarity and intensity: strong when at least two thirds of the way to an extreme."""
    if _annotation(dataset, label) == "Neutral":
        return "neu"
    strength = "2" if abs(label) >= 2 / 3 * DATASETS[dataset].scale.high else "1"
    return ("pos" if label > 0 else "neg") + strength


def _spell(dataset: str, sentence: str) -> str:
    """MOSI transcripts are upper case without punctuation; the others keep the sentence as is."""
    if dataset != "mosi":
        return sentence
    kept = "".join(ch for ch in sentence if ch.isalnum() or ch.isspace())
    return " ".join(kept.upper().split())


def _plan_media(
    dataset: str,
    rows: list[_Row],
    sizes: list[int],
    full_videos: bool,
    min_seconds: float,
    max_seconds: float,
    rng: np.random.Generator,
) -> list[_MediaFile]:
    """One media file per row, or per video with segment times set on its rows."""
    if not full_videos:
        return [_clip_file(row, rng.uniform(min_seconds, max_seconds), rng) for row in rows]
    files: list[_MediaFile] = []
    offset = 0
    for number, size in enumerate(sizes):
        files.append(_full_video(rows[offset : offset + size], number == 0, min_seconds, max_seconds, rng))
        offset += size
    return files


def _media_spec(seconds: float, rng: np.random.Generator) -> _MediaSpec:
    width, height = RESOLUTIONS[int(rng.integers(len(RESOLUTIONS)))]
    return _MediaSpec(
        seconds=seconds,
        fps=FRAME_RATES[int(rng.integers(len(FRAME_RATES)))],
        width=width,
        height=height,
        audio_rate=AUDIO_RATES[int(rng.integers(len(AUDIO_RATES)))],
        channels=int(rng.integers(1, 3)),
    )


def _clip_file(row: _Row, seconds: float, rng: np.random.Generator) -> _MediaFile:
    spec = _media_spec(seconds, rng)
    return _MediaFile(
        path=f"Raw/{row.video_id}/{row.clip_id}.mp4",
        spec=spec,
        rows=[row],
        timeline=[(0.0, spec.duration, row.valence)],
    )


def _full_video(
    rows: list[_Row], early_start: bool, min_seconds: float, max_seconds: float, rng: np.random.Generator
) -> _MediaFile:
    """A CMU full video: segments with gaps between them, setting each row's start and end.

    As in CMU's files, the first segment of some videos (always of the first one, when
    `early_start`) starts slightly before 0; the segment's content then starts at 0.
    """
    timeline: Timeline = []
    end = 0.0
    for number, row in enumerate(rows):
        if number == 0:
            early = early_start or rng.random() < 0.5
            start = -round(rng.uniform(0.2, 0.6), 4) if early else round(rng.uniform(0.0, 1.5), 4)
        else:
            start = round(end + rng.uniform(0.2, 2.0), 4)
        end = round(max(start, 0.0) + rng.uniform(min_seconds, max_seconds), 4)
        row.start, row.end = start, end
        timeline.append((max(start, 0.0), end, row.valence))
    return _MediaFile(
        path=f"{FULL_VIDEO_DIR}/{rows[0].video_id}.mp4",
        spec=_media_spec(end + rng.uniform(0.3, 1.0), rng),
        rows=rows,
        timeline=timeline,
    )


def _pick_corrupt(files: list[_MediaFile], count: int, rng: np.random.Generator) -> dict[int, str]:
    """Choose `count` files, taking splits in turn so that every split sees damaged media."""
    by_split = [
        [int(i) for i in rng.permutation([n for n, media in enumerate(files) if media.rows[0].split == split])]
        for split in SPLITS
    ]
    order = [n for turn in zip_longest(*by_split) for n in turn if n is not None]
    return {n: CORRUPT_KINDS[k % len(CORRUPT_KINDS)] for k, n in enumerate(order[:count])}


def _write_media(out: Path, media: _MediaFile, rng: np.random.Generator, x264_preset: str) -> None:
    """Encode the file, or damage it as its `corrupt` kind says."""
    path = out / media.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if media.corrupt == "missing":
        return
    if media.corrupt == "zero-bytes":
        path.write_bytes(b"")
        return
    _encode(path, media.spec, media.timeline, rng, x264_preset, video=media.corrupt != "no-video", audio=media.corrupt != "no-audio")
    if media.corrupt == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * TRUNCATE_FRACTION)])


def _encode(
    path: Path,
    spec: _MediaSpec,
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
    stream: av.stream.Stream, spec: _MediaSpec, timeline: Timeline, rng: np.random.Generator
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


def _soundtrack(spec: _MediaSpec, timeline: Timeline, rng: np.random.Generator) -> np.ndarray:
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
    stream: av.stream.Stream, spec: _MediaSpec, samples: np.ndarray
) -> Iterator[tuple[float, av.stream.Stream, av.AudioFrame]]:
    """AAC-sized frames with pts counted in samples (time base 1/sample rate)."""
    layout = "mono" if spec.channels == 1 else "stereo"
    time_base = Fraction(1, spec.audio_rate)
    for offset in range(0, samples.shape[1], AUDIO_FRAME_SAMPLES):
        chunk = np.ascontiguousarray(samples[:, offset : offset + AUDIO_FRAME_SAMPLES])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = spec.audio_rate, offset, time_base
        yield offset / spec.audio_rate, stream, frame


def _demo_clip(row: _Row, media: _MediaFile) -> DemoClip:
    """The row as recorded in demo.json; stream fields are 0 where the stream was not written."""
    spec, kind = media.spec, media.corrupt
    has_video = kind not in ("no-video", "zero-bytes", "missing")
    has_audio = kind not in ("no-audio", "zero-bytes", "missing")
    duration = spec.duration if has_video or has_audio else 0.0
    if row.start is not None and row.end is not None and duration:
        duration = round(row.end - max(row.start, 0.0), 4)
    return DemoClip(
        video_id=row.video_id,
        clip_id=row.clip_id,
        split=row.split,
        label=row.label,
        text=row.text,
        path=media.path,
        duration=duration,
        fps=float(spec.fps) if has_video else 0.0,
        width=spec.width if has_video else 0,
        height=spec.height if has_video else 0,
        audio_rate=spec.audio_rate if has_audio else 0,
        start=row.start,
        end=row.end,
        corrupt=kind,
    )


def _number(value: float | None) -> str:
    """Labels and times as the real files print them: shortest form, no -0.0, empty when absent."""
    return "" if value is None else repr(round(value, 4) + 0.0)


def _write_label_file(path: Path, dataset: str, rows: list[_Row], full_videos: bool) -> None:
    header = HEADER + (("start", "end") if full_videos else ())
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        for row in rows:
            unimodal = [_number(value) for value in row.unimodal or (None, None, None)]
            record = [row.video_id, row.clip_id, row.text, _number(row.label), *unimodal]
            record += [_annotation(dataset, row.label), row.split]
            if full_videos:
                record += [_number(row.start), _number(row.end)]
            writer.writerow(record)


def _write_transcripts(out: Path, files: list[_MediaFile]) -> None:
    """CMU's segmented transcripts: `<vid>___<seg>___<start>___<end>___<text>`, one segment a line."""
    folder = out / TRANSCRIPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for media in files:
        lines = [
            f"{row.video_id}___{row.clip_id}___{_number(row.start)}___{_number(row.end)}___"
            + " ".join(row.text.split())
            for row in media.rows
        ]
        (folder / f"{media.rows[0].video_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_manifest(
    out: Path, dataset: str, seed: int, full_videos: bool, label_file: Path, clips: list[DemoClip]
) -> None:
    """demo.json, written last: its presence marks a complete demo that may be overwritten."""
    manifest = {
        "dataset": dataset,
        "seed": seed,
        "full_videos": full_videos,
        "label_file": label_file.name,
        "clips": [asdict(clip) for clip in clips],
    }
    (out / "demo.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
