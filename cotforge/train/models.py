"""Loading and saving the student: an Omni thinker with its processor, or any causal LM with its tokenizer.

A checkpoint folder holds the weights (`from_pretrained` reloads them), the tokenizer and audio
feature extractor, and `cotforge_train.json`: the stage, the scale, how media were given and the
Whisper window, so that the next stage and eval feed the student exactly as training did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotforge import __version__


TRAIN_META = "cotforge_train.json"
OMNI_MODEL_TYPES = ("qwen2_5_omni_thinker", "qwen2_5_omni")
PROJECTIONS = "(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
OMNI_LORA_TARGETS = rf".*language_model\..*\.{PROJECTIONS}"
TEXT_LORA_TARGETS = rf".*\.{PROJECTIONS}"


class StudentError(Exception):
    """The student model cannot be loaded as asked."""


@dataclass
class Student:
    model: Any
    processing_class: Any  # OmniProcessor, or a tokenizer in text-only mode
    omni: bool
    meta: dict[str, Any]


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / TRAIN_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def model_type(model_dir: str | Path) -> str | None:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir).model_type
    except (OSError, ValueError) as exc:
        raise StudentError(f"cannot read a model config from {model_dir}: {exc}") from None


def load_student(model_dir: str | Path, text_only: bool, init_kwargs: dict[str, Any] | None = None) -> Student:
    """The student of a folder or model id: the Omni thinker class, or AutoModelForCausalLM with --text-only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration
    from trl.trainer.utils import create_model_from_path

    from cotforge.train.processor import load_omni_processor

    kind = model_type(model_dir)
    kwargs = dict(init_kwargs or {})
    if text_only:
        if kind in OMNI_MODEL_TYPES:
            raise StudentError(f"{model_dir} is a Qwen2.5-Omni model; --text-only takes a causal LM (e.g. Qwen/Qwen2.5-7B-Instruct)")
        model = create_model_from_path(str(model_dir), architecture=AutoModelForCausalLM, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.chat_template is None:
            raise StudentError(f"the tokenizer of {model_dir} has no chat template; text-only training needs one")
        return Student(model, tokenizer, False, read_meta(model_dir))
    if kind not in OMNI_MODEL_TYPES:
        raise StudentError(
            f"{model_dir} is a {kind!r} model, not a Qwen2.5-Omni thinker; pass --text-only to train it on transcripts"
        )
    model = create_model_from_path(str(model_dir), architecture=Qwen2_5OmniThinkerForConditionalGeneration, **kwargs)
    processor = load_omni_processor(model_dir, model.config.vision_config)
    return Student(model, processor, True, read_meta(model_dir))


def lora_config(targets: str | None, omni: bool, r: int, alpha: int, dropout: float) -> Any:
    """LoRA on the language model's attention and MLP projections (the encoders stay frozen)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
        target_modules=targets or (OMNI_LORA_TARGETS if omni else TEXT_LORA_TARGETS),
    )


def save_student(model: Any, processing_class: Any, out: Path, omni: bool, meta: dict[str, Any]) -> Path:
    """Full weights that `from_pretrained` reloads (a LoRA adapter is merged in, and also kept in out/adapter)."""
    from cotforge.train.processor import save_omni_processor

    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out)
    if omni:
        save_omni_processor(processing_class, out)
    else:
        processing_class.save_pretrained(out)
    (out / TRAIN_META).write_text(json.dumps({"cotforge_version": __version__, **meta}, indent=2, ensure_ascii=False) + "\n")
    return out
