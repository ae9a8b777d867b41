"""Encoding a conversation with the Omni processor, and merging encoded samples into a batch.

Each sample is encoded alone, because a clip's frame rate sets its video's time positions
(`video_second_per_grid`) and the processor takes one rate per call; samples are then merged:
token rows padded, audio features and video patches concatenated in sample order, which is
how Qwen2.5-Omni reads a batch. SFT, GRPO (generation and the loss forward) and eval all encode
through `encode_conversation`, so they see identical inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from cotforge.train.data import MediaSpec, decode_media, prompt_messages
from cotforge.types import Scale

MEDIA_KEYS = (
    "input_features", "feature_attention_mask", "pixel_values_videos", "video_grid_thw", "video_second_per_grid",
    "pixel_values", "image_grid_thw",
)
"""The processor outputs that carry media (everything but the token rows)."""


def video_fps(messages: list[dict[str, Any]]) -> float | None:
    for message in messages:
        if isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "video":
                    return block.get("fps")
    return None


def encode_conversation(processor: Any, messages: list[dict[str, Any]], *, generation_prompt: bool = False,
                        assistant_mask: bool = False) -> dict[str, torch.Tensor]:
    """One conversation through the processor's chat template, at its own video frame rate."""
    fps = video_fps(messages)
    kwargs = {"videos_kwargs": {"fps": fps}} if fps else {}
    out = processor.apply_chat_template(
        [messages], tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=generation_prompt,
        return_assistant_tokens_mask=assistant_mask, processor_kwargs=kwargs,
    )
    return dict(out)


def media_fields(encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in encoded.items() if key in MEDIA_KEYS}


def concat_media(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-sample media fields joined in sample order (a row without a modality adds nothing to it)."""
    keys = [key for key in MEDIA_KEYS if any(key in row for row in rows)]
    return {key: torch.cat([torch.as_tensor(row[key]) for row in rows if key in row]) for key in keys}


def pad_rows(rows: list[torch.Tensor], value: int, side: str) -> torch.Tensor:
    width = max(row.numel() for row in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        if side == "left":
            out[i, width - row.numel():] = row
        else:
            out[i, : row.numel()] = row
    return out


class OmniSFTCollator:
    """SFT batches for the Omni thinker: media decoded here, for this batch only; loss on the assistant turn only.

    Labels are the input ids where `return_assistant_tokens_mask` marks the assistant's tokens
    (the `{% generation %}` block of the training template: the DC text and its `<|im_end|>`),
    -100 elsewhere, so the system prompt, the transcript and the media placeholders are context.
    """

    def __init__(self, processor: Any, scale: Scale, spec: MediaSpec) -> None:
        self.processor = processor
        self.scale = scale
        self.spec = spec
        self.pad_id = processor.tokenizer.pad_token_id

    def encode(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        messages = prompt_messages(row, self.scale, decode_media(row, self.spec))
        messages.append({"role": "assistant", "content": row["target"]})
        out = encode_conversation(self.processor, messages, assistant_mask=True)
        mask = out.pop("assistant_masks").bool()
        if not mask.any():
            raise ValueError(
                "the chat template marked no assistant tokens: it needs {% generation %} around the assistant turn "
                "(prompts/qwen2_5_omni_train.j2)"
            )
        out["labels"] = out["input_ids"].masked_fill(~mask, -100)
        return out

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(row) for row in rows]
        batch = {
            "input_ids": pad_rows([e["input_ids"][0] for e in encoded], self.pad_id, "right"),
            "attention_mask": pad_rows([e["attention_mask"][0] for e in encoded], 0, "right"),
            "labels": pad_rows([e["labels"][0] for e in encoded], -100, "right"),
        }
        batch.update(concat_media([media_fields(e) for e in encoded]))
        return batch
