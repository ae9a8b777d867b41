"""SFT cold start: the student learns to write DC rationales from the shards' rendered targets.

TRL's SFTTrainer does the training. For the Omni thinker it runs in the recipe that works with
audio and video (notes: rl.md §3): cotforge's collator (media decoded per batch, loss on the
assistant turn only), `skip_prepare_dataset` (TRL's own preparation only knows images) and
`remove_unused_columns=False` (the collator needs the media columns). Text-only, it gets
conversational prompt/completion rows and TRL masks the prompt itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cotforge.train import ConfigError, require_train_extra
from cotforge.train.config import SFTTrainConfig
from cotforge.train.data import Corpus, open_shards, text_sft_dataset
from cotforge.train.models import Student, load_student, lora_config, save_student

log = logging.getLogger(__name__)


def fit_audio_window(student: Student, corpus: Corpus, seconds: int | None) -> int | None:
    """Set the Whisper window from the data (or `seconds`) and say so: longer audio would be cut silently."""
    from cotforge.train.data import audio_chunk_seconds
    from cotforge.train.processor import fit_chunk_length

    if not student.omni:
        return None
    longest = corpus.max_audio_seconds()
    chunk = seconds or audio_chunk_seconds(longest)
    old = fit_chunk_length(student.processing_class.feature_extractor, chunk)
    log.info("audio: longest clip %.2f s; Whisper chunk_length set to %d s (was %d s)", longest, chunk, old)
    if longest > chunk:
        log.warning("audio_chunk_seconds=%d cuts clips longer than that (the longest is %.2f s)", chunk, longest)
    return chunk


def run_meta(stage: str, cfg: Any, corpus: Corpus, student: Student, chunk: int | None) -> dict[str, Any]:
    return {
        "stage": stage, "text_only": not student.omni, "scale": corpus.scale.as_dict(),
        "media": cfg.media_spec(student.meta.get("media")).as_dict(),
        "audio_chunk_seconds": chunk, "corpus": str(corpus.source), "rows": len(corpus), "review": vars(corpus.review),
        "base_model": cfg.model_name_or_path, "lora": cfg.lora,
    }


def prepare(cfg: Any, student: Student | None) -> tuple[Corpus, Student, int | None, Any]:
    """What every trainer starts from: the corpus, the student (given, or loaded from the config), the audio
    window fitted to the data, and the LoRA config when asked."""
    if not cfg.shards:
        raise ConfigError("no corpus: set shards (--shards RUN/shards)")
    corpus = open_shards(Path(cfg.shards), cfg.split, cfg.review_policy(), cfg.text_only, cfg.max_samples)
    if student is None:
        if not cfg.model_name_or_path:
            raise ConfigError("no student: set model_name_or_path (--model)")
        student = load_student(cfg.model_name_or_path, cfg.text_only, cfg.model_init_kwargs)
    chunk = fit_audio_window(student, corpus, cfg.audio_chunk_seconds)
    peft = lora_config(cfg.lora_target_modules, student.omni, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) if cfg.lora else None
    return corpus, student, chunk, peft


def build_sft_trainer(cfg: SFTTrainConfig, student: Student | None = None) -> tuple[Any, Student, Corpus, int | None]:
    """The SFTTrainer for a config (a student given in code is used as is, else loaded from the config)."""
    require_train_extra()
    from trl import SFTTrainer

    from cotforge.train.collate import OmniSFTCollator

    corpus, student, chunk, peft = prepare(cfg, student)
    log.info("SFT on %d %s rows of %s (%s student)", len(corpus), corpus.split, corpus.source, "omni" if student.omni else "text-only")
    if student.omni:
        cfg.dataset_kwargs = {**(cfg.dataset_kwargs or {}), "skip_prepare_dataset": True}
        cfg.remove_unused_columns = False
        trainer = SFTTrainer(
            model=student.model, args=cfg, train_dataset=corpus.dataset, processing_class=student.processing_class,
            data_collator=OmniSFTCollator(student.processing_class, corpus.scale, cfg.media_spec(student.meta.get("media"))), peft_config=peft,
        )
    else:
        trainer = SFTTrainer(model=student.model, args=cfg, train_dataset=text_sft_dataset(corpus),
                             processing_class=student.processing_class, peft_config=peft)
    return trainer, student, corpus, chunk


def train_and_save(stage: str, cfg: Any, built: tuple[Any, Student, Corpus, int | None]) -> Path:
    """Train a built trainer, then save a checkpoint with the run's metadata (both stages end so)."""
    trainer, student, corpus, chunk = built
    trainer.train()
    trainer.save_state()
    return save_student(trainer.model, student.processing_class, Path(cfg.output_dir), student.omni,
                        run_meta(stage, cfg, corpus, student, chunk))


def run_sft(cfg: SFTTrainConfig, student: Student | None = None) -> Path:
    """Train, then save a checkpoint that `cotforge train grpo --model` and `cotforge eval --model` take."""
    return train_and_save("sft", cfg, build_sft_trainer(cfg, student))
