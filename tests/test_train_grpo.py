"""GRPO with audio and video in the loss, and Hint-GRPO on a batch where some prompts are hard."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from train_fixtures import MEDIA_ARGS, TINY_ARGS, demo_run, logged, probe_policy, tiny_omni_dir  # noqa: F401

from cotforge.train.config import HintGRPOConfig, load_train_config
from cotforge.train.grpo import build_grpo_trainer
from cotforge.train.media_grpo import TRL_INTERNALS, TRLMismatch, check_trl_internals
from cotforge.train.tiny import PROBE_CLIPS, write_probe_shards
from cotforge.types import MOSI_SCALE

MEDIA_KEYS = ("input_features", "feature_attention_mask", "pixel_values_videos", "video_grid_thw")


def _grpo_config(tmp_path: Path, *sets: str, **options: Any) -> HintGRPOConfig:
    return load_train_config(HintGRPOConfig, None, [*TINY_ARGS, "seed=0", *sets], output_dir=str(tmp_path), **options)


# --- the TRL internals cotforge overrides -------------------------------------------------------------


def test_trl_internals_match_the_overrides() -> None:
    from trl import GRPOTrainer

    check_trl_internals()
    for name, expected in TRL_INTERNALS.items():
        assert tuple(inspect.signature(getattr(GRPOTrainer, name)).parameters)[: len(expected)] == expected


def test_a_changed_private_method_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from trl import GRPOTrainer

    def _generate(self, prompts, images=None):  # a TRL release that took images beside the prompts
        raise AssertionError

    monkeypatch.setattr(GRPOTrainer, "_generate", _generate, raising=True)
    monkeypatch.setattr(GRPOTrainer, "_tokenize_prompts", lambda self, batch: None, raising=True)
    with pytest.raises(TRLMismatch, match=r"_tokenize_prompts.*no longer starts with \('self', 'prompts'\).*pip install 'trl>=1.16,<1.17'"):
        check_trl_internals()


# --- audio and video in the loss forward --------------------------------------------------------------


class BackboneSpy:
    """Records the media kwargs of every call into the thinker's backbone, split by grad mode."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.training: list[dict[str, Any]] = []
        self.no_grad: list[dict[str, Any]] = []
        model.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        seen = {key: kwargs.get(key) for key in ("input_ids", *MEDIA_KEYS) if kwargs.get(key) is not None}
        # generate() runs the encoders once up front and hands their outputs in, instead of the pixels
        seen.update({f"encoded:{name}": True for name, value in (kwargs.get("mm_encoder_outputs") or {}).items() if value is not None})
        (self.training if torch.is_grad_enabled() else self.no_grad).append(seen)


def _omni_trainer(demo_run: Path, tiny_omni_dir: Path, tmp_path: Path, hint: bool, trainer_cls: Any = None):
    from cotforge.train.models import load_student

    student = load_student(tiny_omni_dir, text_only=False)
    spy = BackboneSpy(student.model)
    cfg = _grpo_config(tmp_path, *MEDIA_ARGS, "per_device_train_batch_size=4", "num_generations=2",
                       "max_completion_length=8", "learning_rate=1e-3", "log_completions=true",
                       shards=str(demo_run / "shards"), hint=hint, max_steps=1)
    trainer, *_ = build_grpo_trainer(cfg, student)
    return trainer, spy


@pytest.mark.parametrize("hint", [False, True], ids=["grpo", "hint-grpo"])
def test_the_loss_forward_receives_the_audio_and_video(demo_run: Path, tiny_omni_dir: Path, tmp_path: Path, hint: bool) -> None:
    trainer, spy = _omni_trainer(demo_run, tiny_omni_dir, tmp_path, hint)
    trainer.train()
    assert spy.training, "no training forward ran"
    for call in spy.training:
        assert set(MEDIA_KEYS) <= set(call), f"the loss forward got only {sorted(call)}"
        rows = call["input_ids"].shape[0]
        assert call["input_features"].shape[0] == rows and call["video_grid_thw"].shape[0] == rows
        assert call["pixel_values_videos"].shape[0] == int(call["video_grid_thw"].prod(dim=1).sum())
    generation = spy.no_grad[0]
    assert "input_features" in generation and ("pixel_values_videos" in generation or "encoded:video" in generation)
    if hint:  # a random model never writes the format: every group misses and is re-rolled with the hint
        assert logged(trainer, "hint/frac_groups_hinted") == [1.0]
        batch = trainer._buffered_inputs[0]  # the rows the loss saw carry the hinted prompt ids
        prompts = [trainer.processing_class.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])]
        assert all("Hint: the overall sentiment of this clip is" in prompt for prompt in prompts)
    assert logged(trainer, "loss"), "no loss was logged"
    completions = pq.read_table(tmp_path / "completions" / "completions_00001.parquet")  # media left out of the log
    assert completions.num_rows == 4 and "AUDIO" not in str(completions.column("prompt")[0])


def test_a_policy_that_prefers_media_tokens_never_samples_one(demo_run: Path, tiny_omni_dir: Path, tmp_path: Path) -> None:
    """A sampled audio or vision start token sends the Omni rope index looking for media that is not there and the
    loss forward fails (seen in CI: `ValueError: 3 is not in list`, from a random policy's 8-token rollouts). TRL
    suppresses only the image token; MediaGRPOTrainer suppresses every media token. Here every one of them is
    the policy's favourite by a margin of 100 logits, and one step still trains."""
    from cotforge.train.media_grpo import media_token_ids

    trainer, spy = _omni_trainer(demo_run, tiny_omni_dir, tmp_path, hint=False)
    config = trainer.model.config
    media = media_token_ids(config)
    named = {config.image_token_id, config.video_token_id, config.audio_token_id, config.vision_start_token_id,
             config.audio_start_token_id, config.audio_end_token_id}  # the tiny config names no vision end token
    assert set(media) == named and named <= set(trainer.generation_config.suppress_tokens)

    def prefer_media(module: torch.nn.Module, args: tuple, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[..., media] += 100.0
        return logits

    trainer.model.lm_head.register_forward_hook(prefer_media)
    trainer.train()
    completions = pq.read_table(tmp_path / "completions" / "completions_00001.parquet").column("completion").to_pylist()
    tokenizer = trainer.processing_class.tokenizer
    assert spy.training and logged(trainer, "loss")
    assert not any(tokenizer.convert_ids_to_tokens(i) in str(completions) for i in media), completions


def test_trl_alone_drops_the_media_from_the_loss(demo_run: Path, tiny_omni_dir: Path, tmp_path: Path) -> None:
    """The bug cotforge works around (trl#5373), seen by the same spy: generation has media, the loss has none."""
    from trl import GRPOTrainer

    from cotforge.train.data import open_shards
    from cotforge.train.grpo import grpo_dataset
    from cotforge.train.models import load_student
    from cotforge.train.processor import fit_chunk_length
    from cotforge.train.rewards import dc_rewards

    student = load_student(tiny_omni_dir, text_only=False)
    spy = BackboneSpy(student.model)
    cfg = _grpo_config(tmp_path, *MEDIA_ARGS, "per_device_train_batch_size=4", "num_generations=2", "max_completion_length=8",
                       max_steps=1)
    corpus = open_shards(demo_run / "shards")
    fit_chunk_length(student.processing_class.feature_extractor, 8)
    trainer = GRPOTrainer(model=student.model, reward_funcs=dc_rewards(MOSI_SCALE), args=cfg,
                          train_dataset=grpo_dataset(corpus, cfg.media_spec(), True), processing_class=student.processing_class)
    trainer.train()
    assert "input_features" in spy.no_grad[0] and "encoded:video" in spy.no_grad[0]
    assert spy.training and all(not set(MEDIA_KEYS) & set(call) for call in spy.training)


# --- Hint-GRPO on the probe: some prompts are hard ----------------------------------------------------
# The probe policy (cotforge.train.tiny: PROBE_CLIPS, train_probe_policy) is SFT'd to say "positive"
# unless a hint says "negative": the negative clips are hard. At temperature 0.5 it answered the easy
# clips right 254-256 times in 256 here, the hard ones never, and the hinted hard ones 14-22% of the
# time; with the seed fixed, one step's outcome is repeatable.

HARD = {text for _, text, _, hard in PROBE_CLIPS if hard}


def _probe_trainer(probe_policy: Path, tmp_path: Path, *sets: str):
    shards = write_probe_shards(tmp_path / "run", MOSI_SCALE)
    cfg = _grpo_config(tmp_path, "num_generations=8", "per_device_train_batch_size=64", "max_completion_length=80",
                       "temperature=0.5", "learning_rate=1e-4", *sets, shards=str(shards), text_only=True, max_steps=1,
                       model_name_or_path=str(probe_policy))
    trainer, *_ = build_grpo_trainer(cfg)
    return trainer


def _rows(trainer: Any) -> list[tuple[str, bool, float]]:
    """(transcript, prompt carries the hint, advantage) of every row the step trained on."""
    tokenizer = trainer.processing_class
    batch = trainer._buffered_inputs[0]
    rows = []
    for ids, mask, advantage in zip(batch["prompt_ids"], batch["prompt_mask"], batch["advantages"]):
        prompt = tokenizer.decode(ids[mask.bool()])
        transcript = prompt.split('Transcript: "', 1)[1].split('"', 1)[0]
        rows.append((transcript, "Hint: the overall sentiment" in prompt, float(advantage)))
    return rows


@pytest.mark.slow
def test_hints_fire_for_exactly_the_hard_groups_and_lower_zero_std(probe_policy: Path, tmp_path: Path) -> None:
    trainer = _probe_trainer(probe_policy, tmp_path)
    trainer.train()
    rows = _rows(trainer)
    assert len(rows) == 64
    hinted = {text for text, has_hint, _ in rows if has_hint}
    assert hinted == HARD
    assert all(has_hint == (text in HARD) for text, has_hint, _ in rows)  # whole groups, on-policy prompt ids
    assert logged(trainer, "hint/frac_groups_all_wrong") == [0.5]
    assert logged(trainer, "hint/frac_groups_hinted") == [0.5]
    before, after = logged(trainer, "hint/frac_reward_zero_std_before")[0], logged(trainer, "frac_reward_zero_std")[0]
    assert after < before, (before, after)
    assert logged(trainer, "hint/frac_groups_still_wrong_after_hint")[0] < 0.5
    for name in ("format", "polarity", "score", "consistency"):
        assert logged(trainer, f"rewards/{name}/mean"), name


@pytest.mark.slow
def test_original_prompt_ids_keep_the_hint_out_of_the_loss(probe_policy: Path, tmp_path: Path) -> None:
    trainer = _probe_trainer(probe_policy, tmp_path, "hint_prompt_ids=original")
    trainer.train()
    assert logged(trainer, "hint/frac_groups_hinted") == [0.5]
    assert not any(has_hint for _, has_hint, _ in _rows(trainer))


@pytest.mark.slow
def test_join_measures_hinted_rollouts_against_the_pooled_baseline(probe_policy: Path, tmp_path: Path) -> None:
    sums = {}
    for merge in ("replace", "join"):
        trainer = _probe_trainer(probe_policy, tmp_path / merge, f"hint_merge={merge}")
        trainer.train()
        sums[merge] = sum(advantage for _, has_hint, advantage in _rows(trainer) if has_hint)
    assert abs(sums["replace"]) < 1e-3  # group-normalised: a hinted group's advantages sum to zero
    assert sums["join"] > 1.0  # against the all-wrong originals, the hinted group is better than its baseline


@pytest.mark.slow
def test_hint_grpo_refuses_several_processes(probe_policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    with pytest.raises(ValueError, match="one process only.*world_size is 2.*--no-hint"):
        _probe_trainer(probe_policy, tmp_path)


def test_vllm_generation_is_refused_for_the_omni_student(demo_run: Path, tiny_omni_dir: Path, tmp_path: Path) -> None:
    from cotforge.train.models import load_student

    cfg = _grpo_config(tmp_path, *MEDIA_ARGS, "per_device_train_batch_size=4", "num_generations=2", "use_vllm=true",
                       shards=str(demo_run / "shards"), max_steps=1)
    with pytest.raises(ValueError, match="use_vllm with an Omni student.*without their audio and video"):
        build_grpo_trainer(cfg, load_student(tiny_omni_dir, text_only=False))
