"""Random models built from a config in code, with a tokenizer trained on the spot: nothing is downloaded.

Tests, `bench/hint_grpo.py` and `cotforge train tiny` use them. `omni_thinker_config("tiny")` is a
0.24 M-parameter Qwen2.5-Omni thinker that runs forward, backward and generate on a CPU in
milliseconds; `omni_thinker_config("7b")` has the released Qwen2.5-Omni-7B thinker's shapes (for
memory arithmetic on the meta device, or a bf16 step on a GPU). Their tokenizer knows the Omni
special tokens and is trained on whatever texts are given (the corpus's targets, say), so short
runs see short sequences.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperFeatureExtractor,
)

from cotforge.train.processor import OmniProcessor, build_omni_processor, omni_chat_template

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>",
)
# The attribute names Qwen2_5OmniProcessor reads from its tokenizer (processing_qwen2_5_omni.py).
NAMED_TOKENS = {
    "image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with the Omni special tokens and the training chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens=dict(NAMED_TOKENS),
        chat_template=omni_chat_template(),
    )


def omni_thinker_config(tokenizer: PreTrainedTokenizerFast, shape: Literal["tiny", "7b"] = "tiny") -> Qwen2_5OmniThinkerConfig:
    """A thinker config whose special-token ids come from `tokenizer`; `shape` picks tiny or 7B sizes."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in NAMED_TOKENS.items()}
    if shape == "tiny":
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "fullatt_block_indexes": [1]}
        audio = {"num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                 "d_model": 32, "output_dim": 64}
    else:
        # Qwen2.5-Omni-7B's thinker (its config.json): a Qwen2.5-7B LLM, a 32-block ViT of width 1280
        # as in Qwen2.5-VL-7B, and a Whisper-large-v3-sized audio encoder.
        text = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                "num_key_value_heads": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
        vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
                  "fullatt_block_indexes": [7, 15, 23, 31]}
        audio = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                 "d_model": 1280, "output_dim": 3584}
    # The 7B vocabulary holds every id of a small tokenizer, so the same tokenizer drives both shapes.
    text["vocab_size"] = len(tokenizer) if shape == "tiny" else 152064
    config = Qwen2_5OmniThinkerConfig(
        text_config=text, vision_config=vision, audio_config=audio,
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"], video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"], audio_end_token_id=ids["audio_eos_token"],
    )
    # get_rope_index reads it, the config class does not declare it (modeling_qwen2_5_omni.py).
    config.vision_start_token_id = ids["vision_bos_token"]
    return config


def tiny_omni(texts: Iterable[str], chunk_seconds: int = 4, seed: int = 0) -> tuple[Qwen2_5OmniThinkerForConditionalGeneration, OmniProcessor]:
    """A random 0.24 M-parameter Qwen2.5-Omni thinker and its processor."""
    import torch

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts)
    config = omni_thinker_config(tokenizer)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    _set_generation_ids(model, tokenizer)
    processor = build_omni_processor(tokenizer, WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_seconds), config.vision_config)
    return model, processor


def tiny_text_lm(texts: Iterable[str], hidden: int = 128, layers: int = 2, seed: int = 0) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """A random small Qwen2 causal LM and its tokenizer (ChatML template), for text-only runs."""
    import torch

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    _set_generation_ids(model, tokenizer)
    return model, tokenizer


def _set_generation_ids(model, tokenizer: PreTrainedTokenizerFast) -> None:
    for cfg in (model.config.get_text_config(), model.generation_config):
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.eos_token_id


# --- a probe for Hint-GRPO: a corpus with hard clips, and a policy that misses them unless hinted ---

PROBE_CLIPS = (
    ("probe/a/1", "the movie was fine", 1.5, False),
    ("probe/b/1", "the food arrived late", -1.5, True),
    ("probe/c/1", "we went on a trip", 1.5, False),
    ("probe/d/1", "the hotel room was small", -1.5, True),
    ("probe/e/1", "the game ended at nine", 1.5, False),
    ("probe/f/1", "my phone broke again", -1.5, True),
    ("probe/g/1", "the song played twice", 1.5, False),
    ("probe/h/1", "the class was cancelled", -1.5, True),
)
"""(key, transcript, gold label, hard). The probe policy says "positive" to every clip unless a hint
says "negative", and then it was taught either answer equally: the negative clips are the hard ones,
missed by every rollout until hinted. A policy this simple is learnt reliably by a tiny model in
about a minute on one core; one that had to read the transcript was not (tried). Every label is
+-1.5, so a rollout's reward depends on its polarity alone and a group that never changes its
polarity has zero reward variance."""


def probe_target(positive: bool) -> str:
    """The shortest answer in the DC format: the polarity and the score carry the whole decision."""
    from cotforge.dc import Rationale, render_student

    word = "positive" if positive else "negative"
    return render_student(Rationale.model_validate({
        "discrimination": {"cues": {"text": "-", "audio": "-", "visual": "-"}, "summary": "", "polarity": word},
        "calibration": {"reasoning": "-", "score": 1.5 if positive else -1.5},
    }))


def probe_rows(scale: Any) -> list[dict[str, Any]]:
    """Shard rows (CORPUS_SCHEMA) of the probe clips: text only, each target right for its clip."""
    return [{"id": f"{key}#0", "key": key, "sample": 0, "dataset": "mosi", "split": "train", "language": "en",
             "text": text, "label": label, "label_polarity": scale.polarity(label).value, "target": probe_target(label > 0),
             "teacher_score": label, "hinted": False} for key, text, label, _ in PROBE_CLIPS]


def probe_sft_examples(scale: Any, copies: int = 2) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows that teach the probe policy its rule (see PROBE_CLIPS)."""
    from cotforge.train.data import prompt_messages
    from cotforge.train.hint_grpo import with_hint
    from cotforge.train.prompts import render_hint

    examples = []

    def add(prompt: list[dict[str, Any]], positive: bool) -> None:
        examples.append({"prompt": prompt, "completion": [{"role": "assistant", "content": probe_target(positive)}]})

    for _ in range(copies):
        for _, text, _, _ in PROBE_CLIPS:
            prompt = prompt_messages({"text": text, "language": "en"}, scale, None)
            add(prompt, True)
            add(prompt, True)
            add(with_hint(prompt, render_hint("positive", "en")), True)
            negative = with_hint(prompt, render_hint("negative", "en"))
            add(negative, True)
            add(negative, False)
    return examples


def write_probe_shards(run: Path, scale: Any) -> Path:
    """RUN/shards/train/part-00000.parquet and RUN/manifest.json for the probe clips."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cotforge.store.shards import CORPUS_SCHEMA

    folder = run / "shards" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(probe_rows(scale), schema=CORPUS_SCHEMA), folder / "part-00000.parquet")
    (run / "manifest.json").write_text(json.dumps({"dataset": "mosi", "scale": scale.as_dict()}))
    return run / "shards"


def train_probe_policy(folder: Path, scale: Any, steps: int = 300, seed: int = 0) -> Path:
    """SFT a tiny text policy on `probe_sft_examples` and save it to `folder` (about a minute on one core).

    Seen here at temperature 0.5, 256 samples per prompt: the easy clips answered right 254-256
    times, the hard ones never, and hinted, the hard ones 14-22% of the time.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    from cotforge.train.config import SFTTrainConfig, load_train_config

    examples = probe_sft_examples(scale)
    model, tokenizer = tiny_text_lm([m["content"] for e in examples for m in (*e["prompt"], *e["completion"])], hidden=64, seed=seed)
    cfg = load_train_config(SFTTrainConfig, None, [
        f"max_steps={steps}", "per_device_train_batch_size=16", "learning_rate=3e-3", "lr_scheduler_type=cosine",
        "warmup_steps=10", f"seed={seed}", "report_to=none", "save_strategy=no", "gradient_checkpointing=false",
        "disable_tqdm=true", "logging_steps=50",
    ], output_dir=str(folder / "sft-run"))
    SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(examples), processing_class=tokenizer).train()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_student(shards: Path, out: Path, text_only: bool = False, seed: int = 0) -> Path:
    """A random tiny student saved like a checkpoint, its tokenizer trained on the corpus's texts and targets.

    For smoke runs of `cotforge train` and `cotforge eval` where nothing may be downloaded; it knows
    nothing until trained.
    """
    from cotforge.train.data import open_shards
    from cotforge.train.processor import save_omni_processor

    corpus = open_shards(shards, text_only=True)
    texts = list(corpus.dataset["target"]) + list(corpus.dataset["text"])
    out.mkdir(parents=True, exist_ok=True)
    if text_only:
        model, tokenizer = tiny_text_lm(texts, seed=seed)
        tokenizer.save_pretrained(out)
    else:
        model, processor = tiny_omni(texts, seed=seed)
        save_omni_processor(processor, out)
    model.save_pretrained(out)
    return out
