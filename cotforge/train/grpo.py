"""GRPO / Hint-GRPO on the shards: prompts with media, DC rewards against the gold label.

The dataset stays encoded; a `datasets` transform builds each batch's prompts (decoding each clip
once per batch even though the sampler repeats it G times). The gold label travels as the `label`
column, which TRL hands to the reward functions and Hint-GRPO reads for its trigger and hint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cotforge.train import require_train_extra
from cotforge.train.config import HintGRPOConfig
from cotforge.train.data import Corpus, MediaSpec, decode_media, prompt_messages
from cotforge.train.models import Student
from cotforge.train.sft import prepare, train_and_save
from cotforge.types import Scale

log = logging.getLogger(__name__)


class PromptTransform:
    """Columns of encoded rows -> {"prompt", "label", "key", "language"}, media decoded once per clip."""

    def __init__(self, scale: Scale, spec: MediaSpec, media: bool) -> None:
        self.scale = scale
        self.spec = spec
        self.media = media

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        decoded: dict[str, Any] = {}
        prompts = []
        for row in rows:
            media = None
            if self.media:
                if row["key"] not in decoded:
                    decoded[row["key"]] = decode_media(row, self.spec)
                media = decoded[row["key"]]
            prompts.append(prompt_messages(row, self.scale, media))
        return {"prompt": prompts, "label": [r["label"] for r in rows], "key": [r["key"] for r in rows],
                "language": [r.get("language") or "en" for r in rows]}


def grpo_dataset(corpus: Corpus, spec: MediaSpec, media: bool) -> Any:
    return corpus.dataset.with_transform(PromptTransform(corpus.scale, spec, media))


def build_grpo_trainer(cfg: HintGRPOConfig, student: Student | None = None, callbacks: list | None = None) -> tuple[Any, Student, Corpus, int | None]:
    require_train_extra()
    from cotforge.train.hint_grpo import HintGRPOTrainer
    from cotforge.train.rewards import dc_rewards

    corpus, student, chunk, peft = prepare(cfg, student)
    log.info("%s on %d %s rows of %s (%s student, G=%d)", "Hint-GRPO" if cfg.hint else "GRPO", len(corpus), corpus.split,
             corpus.source, "omni" if student.omni else "text-only", cfg.num_generations)
    trainer = HintGRPOTrainer(
        model=student.model, reward_funcs=dc_rewards(corpus.scale, cfg.reward_require_format), args=cfg,
        train_dataset=grpo_dataset(corpus, cfg.media_spec(student.meta.get("media")), student.omni), processing_class=student.processing_class,
        peft_config=peft, callbacks=callbacks, scale=corpus.scale,
    )
    return trainer, student, corpus, chunk


def run_grpo(cfg: HintGRPOConfig, student: Student | None = None) -> Path:
    return train_and_save("hint-grpo" if cfg.hint else "grpo", cfg, build_grpo_trainer(cfg, student))
