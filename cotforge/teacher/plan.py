"""Token and time estimates before any GPU hour is spent (`cotforge plan`).

Prompt tokens of an Omni request = text + audio + video, by the processors' own rules
(transformers' Qwen2.5-Omni / Qwen3-Omni processors and `qwen_omni_utils`):

* audio: Qwen3-Omni's AuT encoder gives 13 tokens per second of 16 kHz audio (per 100 mel frames:
  13 tokens, plus a remainder term); Qwen2.5-Omni's Whisper-style encoder gives 25 per second.
* video: frames are grouped in pairs (temporal patch 2); each group is resized by `smart_resize`
  to a multiple of the cell size (32 px for Qwen3-Omni: patch 16 x merge 2; 28 px for
  Qwen2.5-Omni: patch 14 x merge 2) within [128, 768] cells of pixels, and costs
  (H / cell) x (W / cell) tokens. A 10 s 640x360 clip at 2 fps is 10 groups of 20 x 11 = 2,200
  tokens on Qwen3-Omni, 2,990 on Qwen2.5-Omni.
* text: the teacher's tokenizer when a local copy is given, else an estimate (4 characters per
  token for Latin script, one token per CJK character) plus the chat template's overhead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from cotforge.config import ReaskConfig, TeacherConfig
from cotforge.teacher.prompts import render_teacher
from cotforge.types import Scale

AUDIO_FRAMES_PER_S = 100  # mel frames per second (hop 160 at 16 kHz)
CHAT_OVERHEAD_TOKENS = 24  # role tags, vision/audio bos/eos of the chat template


@dataclass(frozen=True, slots=True)
class OmniRules:
    name: str
    cell: int
    min_cells: int = 128
    max_cells: int = 768
    temporal: int = 2

    def audio_tokens(self, seconds: float) -> int:
        frames = int(round(seconds * AUDIO_FRAMES_PER_S))
        if frames <= 0:
            return 0
        if self.name == "qwen3-omni":
            leave = frames % 100
            feat = (leave - 1) // 2 + 1
            return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (frames // 100) * 13
        after_conv = (frames - 1) // 2 + 1
        return (after_conv - 2) // 2 + 1

    def resized(self, width: int, height: int, min_cells: int | None = None, max_cells: int | None = None) -> tuple[int, int]:
        """`smart_resize`: the frame size the processor actually encodes (video budget unless given)."""
        f = self.cell
        h_bar, w_bar = max(f, round(height / f) * f), max(f, round(width / f) * f)
        low, high = (min_cells or self.min_cells) * f * f, (max_cells or self.max_cells) * f * f
        if h_bar * w_bar > high:
            beta = math.sqrt(height * width / high)
            h_bar, w_bar = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
        elif h_bar * w_bar < low:
            beta = math.sqrt(low / (height * width))
            h_bar, w_bar = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
        return w_bar, h_bar

    def frame_cells(self, width: int, height: int, min_cells: int | None = None, max_cells: int | None = None) -> int:
        """Merged tokens of one frame (or one temporal group of frames)."""
        w, h = self.resized(width, height, min_cells, max_cells)
        return (w // self.cell) * (h // self.cell)

    def video_tokens(self, frames: int, width: int, height: int) -> int:
        if frames <= 0 or width <= 0 or height <= 0:
            return 0
        return math.ceil(frames / self.temporal) * self.frame_cells(width, height)


QWEN3_OMNI = OmniRules("qwen3-omni", cell=32)
QWEN25_OMNI = OmniRules("qwen2.5-omni", cell=28)


def rules_for(model: str) -> OmniRules:
    return QWEN25_OMNI if "2.5" in model or "2_5" in model else QWEN3_OMNI


_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def estimate_text_tokens(text: str) -> int:
    """About 4 characters per token, except CJK characters, which are about one token each."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


@dataclass(slots=True)
class ClipPlan:
    key: str
    split: str
    text_tokens: int
    audio_tokens: int
    video_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.audio_tokens + self.video_tokens + CHAT_OVERHEAD_TOKENS


@dataclass
class PlanResult:
    clips: list[ClipPlan]
    completion_per_request: float
    completion_observed: bool
    requests_low: int
    requests_high: int

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.clips)


def plan_clip(row: dict, rules: OmniRules, scale: Scale, count: Callable[[str], int]) -> ClipPlan:
    """Prompt tokens of one bundle row's first request, by the processor's rules."""
    system, instruction = render_teacher(row["text"], row["language"], scale)
    seconds = row["audio_num_samples"] / row["audio_sample_rate"] if row["audio_sample_rate"] else 0.0
    return ClipPlan(
        row["key"], row["split"], count(system) + count(instruction), rules.audio_tokens(seconds),
        rules.video_tokens(len(row["frame_timestamps"]), row["frame_width"], row["frame_height"]),
    )


def plan_requests(
    clips: list[ClipPlan], teacher: TeacherConfig, reask: ReaskConfig, observed_completion: float | None
) -> PlanResult:
    """How many requests and completion tokens the clips may cost: one request each, or every clip re-asked and hinted."""
    per_request = observed_completion if observed_completion is not None else float(teacher.max_tokens * teacher.n)
    attempts = math.ceil(reask.samples / teacher.n) + int(reask.hint)
    return PlanResult(clips, per_request, observed_completion is not None, len(clips), len(clips) * attempts)
