"""The label-file rows of a demo dataset: ids, labels on each dataset's grid, splits and transcripts.

The rows follow the real files to the letter: id formats (SIMS' zero-padded `0001`, MOSEI's purely
numeric video ids), label grids (means of 3 or 5 CMU annotators, SIMS' 0.2 steps), MMSA's
annotation column, and transcripts whose words match the label, one of which needs CSV quoting.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from cotforge.types import DATASETS

CMU_ANCHORS = (-3.0, 3.0, 0.0, -1.2, 1.4, -0.6667, 2.3333)
SIMS_ANCHORS = (-1.0, 1.0, 0.0, -0.6, 0.4, -0.2, 0.8)
"""The first labels drawn, so that even a small demo spans both extremes, neutral and both signs."""

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
class Row:
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


def group_sizes(dataset: str, clips: int, min_groups: int, full_videos: bool, rng: np.random.Generator) -> list[int]:
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


def make_rows(dataset: str, sizes: list[int], rng: np.random.Generator) -> list[Row]:
    """Rows ordered by video and clip like the real files, with shuffled labels and splits."""
    count = sum(sizes)
    labels = _labels(dataset, count, rng)
    splits = _splits(count, rng)
    video_ids = _video_ids(dataset, len(sizes), rng)
    rows: list[Row] = []
    for video_id, size in zip(video_ids, sizes, strict=True):
        for number in range(size):
            index = len(rows)
            label = labels[index]
            rows.append(
                Row(
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


def annotation(dataset: str, label: float) -> str:
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
    if annotation(dataset, label) == "Neutral":
        return "neu"
    strength = "2" if abs(label) >= 2 / 3 * DATASETS[dataset].scale.high else "1"
    return ("pos" if label > 0 else "neg") + strength


def _spell(dataset: str, sentence: str) -> str:
    """MOSI transcripts are upper case without punctuation; the others keep the sentence as is."""
    if dataset != "mosi":
        return sentence
    kept = "".join(ch for ch in sentence if ch.isalnum() or ch.isspace())
    return " ".join(kept.upper().split())
