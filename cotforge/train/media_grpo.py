"""GRPO whose loss forward sees the same audio and video as generation did.

TRL's GRPOTrainer hands audio and video to generation (through the processor) but builds the loss
forward's media kwargs for images only, so an Omni student is silently trained on placeholder
embeddings (huggingface/trl#5373; notes: rl.md §5). `MediaGRPOTrainer` fixes that with three
overrides of private methods (TRL 1.16, guarded by `check_trl_internals`):

- `_tokenize_prompts`: each prompt is encoded once by `collate.encode_conversation`, at its own
  frame rate, and cached for the batch; generation gets these ids and media tensors.
- `_generate_and_score_completions`: the per-rollout media (the same tensors) ride along in the
  output as `mm_rows`, a list that TRL's shuffle and split keep aligned with the rows.
- `_get_per_token_logps_and_entropies`: every chunk of the loss forward (and of the old/ref
  log-prob passes) gets its rows' media concatenated back into the model's batch layout.

Generation never samples a media token (`MEDIA_TOKENS`): TRL suppresses the image token only, but a
completion holding an audio or vision start token makes the Omni rope index look for media that is not
there, and the loss forward fails (`ValueError: <id> is not in list`) whenever a young policy samples one.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
from packaging.version import Version
from transformers import ProcessorMixin
from trl import GRPOTrainer

from cotforge.train import TRL_RANGE, ConfigError, TRLMismatch
from cotforge.train.collate import concat_media, encode_conversation, media_fields

TRL_INTERNALS = {
    "_tokenize_prompts": ("self", "prompts"),
    "_generate": ("self", "prompts"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_compute_loss": ("self", "model", "inputs"),
    "_get_per_token_logps_and_entropies": (
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
        "compute_aux_loss",
    ),
}
"""The private GRPOTrainer methods cotforge overrides or calls, with their leading parameters."""

MEDIA_TOKENS = (
    "image_token_id", "video_token_id", "audio_token_id", "vision_start_token_id", "vision_end_token_id",
    "audio_start_token_id", "audio_end_token_id",
)
"""Thinker config attributes naming the tokens that mark media in a prompt (those a config has)."""


def media_token_ids(config: Any) -> list[int]:
    """The ids of `MEDIA_TOKENS` in a model config; none for a text-only model."""
    return sorted({value for name in MEDIA_TOKENS if isinstance(value := getattr(config, name, None), int)})


def check_trl_internals() -> None:
    """Fail loudly, before any training, if TRL's private methods changed under cotforge's overrides."""
    installed = Version(version("trl"))
    low, high = (Version(bound.lstrip("<>=")) for bound in TRL_RANGE)
    problems = [] if low <= installed < high else [f"trl {installed} is outside {','.join(TRL_RANGE)}"]
    for name, expected in TRL_INTERNALS.items():
        method = getattr(GRPOTrainer, name, None)
        if method is None:
            problems.append(f"GRPOTrainer.{name} is gone")
            continue
        params = tuple(inspect.signature(method).parameters)[: len(expected)]
        if params != expected:
            problems.append(f"GRPOTrainer.{name}{params} no longer starts with {expected}")
    if problems:
        raise TRLMismatch(
            "cotforge's GRPO overrides TRL internals that changed: " + "; ".join(problems)
            + f". Install trl{','.join(TRL_RANGE)} (pip install 'trl{','.join(TRL_RANGE)}')."
        )


def _media_digest(prompt: list[dict[str, Any]]) -> bytes:
    digest = hashlib.sha1()
    for message in prompt:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            for name in ("audio", "video", "image"):
                value = block.get(name) if isinstance(block, dict) else None
                if isinstance(value, np.ndarray):
                    digest.update(f"{name}{value.shape}{block.get('fps')}".encode())
                    digest.update(np.ascontiguousarray(value).data)
    return digest.digest()


def _without_media(prompt: Any) -> Any:
    """A logged prompt with its decoded audio and frames replaced by placeholders, as TRL does for images,
    and every content as a list of blocks: the completions table (`log_completions`) stays serialisable
    to Parquet and holds no media arrays."""
    if not isinstance(prompt, list):
        return prompt
    stripped = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            content = [{"type": block["type"]} if block.get("type") in ("audio", "video") else block for block in content]
        stripped.append({**message, "content": content})
    return stripped


class _WithMedia:
    """The model, called with a chunk's media added to the text-only kwargs TRL builds."""

    def __init__(self, model: Any, media: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.media = media

    def __call__(self, **kwargs: Any) -> Any:
        return self.model(**kwargs, **self.media)


class MediaGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the prompt's audio and video in the loss forward, not only in generation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_trl_internals()
        config, processing = kwargs.get("args"), kwargs.get("processing_class")
        if config is not None and config.use_vllm and isinstance(processing, ProcessorMixin):
            raise ConfigError(
                "use_vllm with an Omni student is not supported: TRL hands vLLM images only, so the rollouts would be "
                "generated without their audio and video. Keep use_vllm false (transformers generation), or train --text-only."
            )
        super().__init__(*args, **kwargs)
        if self._is_vlm and not self.use_vllm:
            suppressed = sorted(set(self.generation_config.suppress_tokens or []) | set(media_token_ids(self.model.config)))
            self.generation_config.suppress_tokens = suppressed
            self.generation_kwargs["suppress_tokens"] = suppressed
        self._encoded: dict[bytes, tuple[list[int], dict[str, torch.Tensor]]] = {}
        self._media_rows: list[dict[str, torch.Tensor]] | None = None

    def _encode_prompt(self, prompt: list[dict[str, Any]]) -> tuple[list[int], dict[str, torch.Tensor]]:
        text = self.processing_class.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        key = hashlib.sha1(text.encode()).digest() + _media_digest(prompt)
        if key not in self._encoded:
            out = encode_conversation(self.processing_class, prompt, generation_prompt=True)
            self._encoded[key] = (out["input_ids"][0].tolist(), media_fields(out))
        return self._encoded[key]

    def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict[str, torch.Tensor]]:
        if not self._is_vlm:
            return super()._tokenize_prompts(prompts)
        encoded = [self._encode_prompt(prompt) for prompt in prompts]
        return [ids for ids, _ in encoded], None, concat_media([media for _, media in encoded])

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._encoded.clear()
        rows = [self._encode_prompt(x["prompt"])[1] for x in inputs] if self._is_vlm else None
        self._media_rows = rows
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._media_rows = None
        if rows and any(rows):
            output["mm_rows"] = rows
            logged = self._logs["prompt"]
            for index in range(max(0, len(logged) - len(inputs)), len(logged)):
                logged[index] = _without_media(logged[index])
        return output

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._media_rows = inputs.get("mm_rows")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._media_rows = None

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, batch_size: int | None = None, **kwargs: Any):
        rows = self._media_rows
        if not rows or not any(rows):
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size=batch_size, **kwargs)
        if len(rows) != input_ids.size(0):
            raise RuntimeError(f"{len(rows)} rows of media for a batch of {input_ids.size(0)} sequences")
        size = batch_size or input_ids.size(0)
        parts = []
        for start in range(0, input_ids.size(0), size):
            end = min(start + size, input_ids.size(0))
            media = {key: value.to(input_ids.device) for key, value in concat_media(rows[start:end]).items()}
            parts.append(super()._get_per_token_logps_and_entropies(
                _WithMedia(model, media), input_ids[start:end], attention_mask[start:end], logits_to_keep,
                batch_size=end - start, **kwargs,
            ))
        logps = torch.cat([p[0] for p in parts])
        entropies = torch.cat([p[1] for p in parts]) if parts[0][1] is not None else None
        aux = torch.stack([p[2] for p in parts]).mean() if parts[0][2] is not None else None
        return logps, entropies, aux
