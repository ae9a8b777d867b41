"""Token and time estimates before any GPU hour is spent (`cotforge plan`).

Prompt tokens of an Omni request = the chat-templated text + the video's and the audio's embedding
positions, counted the way vLLM counts them (`usage.prompt_tokens`). Checked against a real vLLM
serving a Qwen2.5-Omni model (tests/test_vllm_cpu.py), where a `PromptCounter` with the model's
tokenizer is exact for every request shape cotforge sends:

* text: the request's messages through the model's own chat template (media parts become the
  template's `<|vision_bos|><|VIDEO|><|vision_eos|>` / `<|audio_bos|><|AUDIO|><|audio_eos|>`
  markers), tokenized; each media placeholder token is then replaced by the media's embeddings, and
  with `use_audio_in_video` the interleaved block adds an `<|audio_bos|>`/`<|audio_eos|>` pair.
  Without a tokenizer: about 4 characters per token for Latin script, one per CJK character, plus
  the template's overhead (an estimate).
* video: vLLM's loader keeps min(frames, floor(frames / container fps x requested fps)) frames, at most
  `num_frames` (32 unless the request sets it); the processor groups them in pairs (temporal patch 2),
  dropping an odd last frame, and a single frame cannot be served at all. Each group is resized by
  `smart_resize` to a multiple of the cell size (32 px for Qwen3-Omni: patch 16 x merge 2; 28 px for
  Qwen2.5-Omni: patch 14 x merge 2) within [128, 768] cells of pixels and costs (H / cell) x (W / cell)
  tokens. A 10 s 640x360 clip at 2 fps is 10 groups of 20 x 11 = 2,200 tokens on Qwen3-Omni, 2,990 on
  Qwen2.5-Omni.
* audio: 16 kHz samples -> ceil(samples / 160) mel frames (no 30 s cut) -> tokens: Qwen2.5-Omni's
  Whisper-style encoder gives 25 per second; Qwen3-Omni's AuT encoder 13 per 100 mel frames plus a
  remainder term. The server counts the samples it decodes: an H.264 MP4 carries AAC, which decodes
  to whole 1024-sample frames; FLAC (MJPEG MP4) and the WAV part are exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotforge.config import ReaskConfig, TeacherConfig
from cotforge.teacher.media import container_rate

AUDIO_FRAMES_PER_S = 100  # mel frames per second (hop 160 at 16 kHz)
SERVED_SAMPLE_RATE = 16000  # the Omni feature extractors' rate; vLLM resamples to it
AAC_FRAME_SAMPLES = 1024
SERVER_NUM_FRAMES = 32  # vLLM's VideoMediaIO default when a request sets fps but not num_frames
CHAT_OVERHEAD_TOKENS = 24  # estimate only: role tags, vision/audio bos/eos of the chat template


@dataclass(frozen=True, slots=True)
class OmniRules:
    name: str
    cell: int
    min_cells: int = 128
    max_cells: int = 768
    temporal: int = 2

    def audio_tokens_from_mel(self, frames: int) -> int:
        if frames <= 0:
            return 0
        if self.name == "qwen3-omni":
            leave = frames % 100
            feat = (leave - 1) // 2 + 1
            return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (frames // 100) * 13
        after_conv = (frames - 1) // 2 + 1
        return (after_conv - 2) // 2 + 1

    def audio_tokens(self, seconds: float) -> int:
        return self.audio_tokens_from_mel(int(round(seconds * AUDIO_FRAMES_PER_S)))

    def audio_tokens_from_samples(self, samples: int) -> int:
        """Tokens of `samples` at 16 kHz: the feature extractor's mask marks ceil(samples / hop) mel frames."""
        return self.audio_tokens_from_mel(-(-samples // (SERVED_SAMPLE_RATE // AUDIO_FRAMES_PER_S)))

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
        """Tokens of `frames` frames as the processor gets them: whole pairs only (an odd last frame is dropped)."""
        if frames <= 0 or width <= 0 or height <= 0:
            return 0
        return frames // self.temporal * self.frame_cells(width, height)


QWEN3_OMNI = OmniRules("qwen3-omni", cell=32)
QWEN25_OMNI = OmniRules("qwen2.5-omni", cell=28)


def rules_for(model: str) -> OmniRules:
    return QWEN25_OMNI if "2.5" in model or "2_5" in model else QWEN3_OMNI


_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def estimate_text_tokens(text: str) -> int:
    """About 4 characters per token, except CJK characters, which are about one token each."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def loaded_frames(frames: int, fps: float, video_io: Mapping[str, Any] | None) -> int:
    """Frames vLLM's video loader keeps of an MP4 cotforge muxed (`frames` at `fps`), given the request's
    `media_io_kwargs["video"]` (None: the server's defaults, assumed to keep every frame)."""
    if frames <= 0 or not video_io:
        return max(frames, 0)
    cap = int(video_io.get("num_frames", SERVER_NUM_FRAMES))
    keep = min(frames, cap) if cap > 0 else frames
    requested = float(video_io.get("fps", -1))
    if requested > 0:
        container = float(container_rate(fps))  # what OpenCV reports for mux_mp4's stream rate
        keep = min(keep, math.floor(frames / container * requested))
    return max(1, keep)


def served_audio_samples(samples: int, sample_rate: int, aac: bool) -> int:
    """Samples at 16 kHz the server decodes from what cotforge sent (AAC pads to whole frames)."""
    if aac:
        samples = -(-samples // AAC_FRAME_SAMPLES) * AAC_FRAME_SAMPLES
    if sample_rate and sample_rate != SERVED_SAMPLE_RATE:
        samples = math.ceil(samples * SERVED_SAMPLE_RATE / sample_rate)
    return samples


@dataclass(slots=True)
class ClipPlan:
    key: str
    split: str
    text_tokens: int
    audio_tokens: int
    video_tokens: int
    exact: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.audio_tokens + self.video_tokens


def _template_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages as vLLM hands them to the chat template: each media part becomes a bare `{"type": modality}`."""
    kinds = {"video_url": "video", "input_audio": "audio", "audio_url": "audio", "image_url": "image"}
    messages = []
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": kinds[p["type"]]} if p["type"] in kinds else p for p in content]
        messages.append({"role": message["role"], "content": content})
    return messages


class PromptCounter:
    """Prompt tokens of one request, as the server will count them.

    With the teacher's tokenizer (a local model folder with its chat template) the text is counted
    exactly; without one it is estimated. Media are counted by the model's rules in both cases.
    """

    def __init__(self, rules: OmniRules, count_template: Callable[[list[dict[str, Any]], dict[str, Any]], int] | None = None) -> None:
        self.rules = rules
        self._count_template = count_template

    @property
    def exact(self) -> bool:
        return self._count_template is not None

    @classmethod
    def load(cls, model: str, tokenizer_dir: Path | None = None) -> PromptCounter:
        """Counter for `model`'s rules; `tokenizer_dir` (the model folder) makes the text count exact (needs transformers)."""
        if tokenizer_dir is None:
            return cls(rules_for(model))
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportError("counting with the teacher's tokenizer needs transformers: pip install -e '.[train]'") from None
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if not tokenizer.chat_template:
            raise ValueError(f"{tokenizer_dir} has no chat template; give the teacher model's own folder")

        def count(messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> int:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
            return len(tokenizer.encode(text, add_special_tokens=False))

        return cls(rules_for(model), count)

    def clip(self, row: Mapping[str, Any], body: Mapping[str, Any], codec: str) -> ClipPlan:
        """Plan of one bundle row (store.bundles) asked with `body` (build_request's canonical body) and MP4 `codec`."""
        parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
        videos = sum(p["type"] == "video_url" for p in parts)
        separate_audio = sum(p["type"] == "input_audio" for p in parts)
        # without the request's use_audio_in_video the MP4's track is not heard (a server-wide flag fails in vLLM 0.32)
        audio_in_video = bool((body.get("mm_processor_kwargs") or {}).get("use_audio_in_video"))
        video_io = (body.get("media_io_kwargs") or {}).get("video")

        frames = loaded_frames(len(row["frame_timestamps"]), float(row["frame_fps"]), video_io)
        video = videos * self.rules.video_tokens(frames, row["frame_width"], row["frame_height"])
        audio_items = separate_audio + (videos if audio_in_video else 0)
        samples = served_audio_samples(row["audio_num_samples"], row["audio_sample_rate"], aac=audio_in_video and codec == "h264")
        audio = audio_items * self.rules.audio_tokens_from_samples(samples)

        if self._count_template is not None:
            placeholders = videos + separate_audio
            counted = self._count_template(_template_messages(body), body.get("chat_template_kwargs") or {})
            text = counted - placeholders + (2 * videos if audio_in_video else 0)
        else:
            texts = [m["content"] for m in body["messages"] if isinstance(m["content"], str)]
            texts += [p["text"] for p in parts if p["type"] == "text"]
            text = sum(estimate_text_tokens(t) for t in texts) + CHAT_OVERHEAD_TOKENS
        return ClipPlan(row["key"], row["split"], text, audio, video, exact=self.exact)


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


def plan_requests(
    clips: list[ClipPlan], teacher: TeacherConfig, reask: ReaskConfig, observed_completion: float | None
) -> PlanResult:
    """How many requests and completion tokens the clips may cost: one request each, or every clip re-asked and hinted."""
    per_request = observed_completion if observed_completion is not None else float(teacher.max_tokens * teacher.n)
    attempts = math.ceil(reask.samples / teacher.n) + int(reask.hint)
    return PlanResult(clips, per_request, observed_completion is not None, len(clips), len(clips) * attempts)
