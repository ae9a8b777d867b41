"""Training configs: TRL's SFTConfig / GRPOConfig plus cotforge's own fields, loadable from YAML and --set.

Every TRL and transformers knob keeps its name and default (`learning_rate`, `num_generations`,
`report_to`, ...); cotforge adds only what TRL cannot know: where the corpus is, how media is
given to the student, LoRA, the DC reward weights and the Hint-GRPO knobs. A YAML file is a flat
mapping of these fields (`examples/train/*.yaml`); `--set key=value` overrides any of them, the
value read as YAML (`--set learning_rate=1e-5`, `--set report_to=[tensorboard]`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from trl import GRPOConfig, SFTConfig

from cotforge.train import ConfigError
from cotforge.train.data import MediaSpec, ReviewPolicy

__all__ = ["ConfigError", "HintGRPOConfig", "SFTTrainConfig", "StudentFields", "load_train_config", "parse_sets"]



@dataclass
class StudentFields:
    """cotforge's fields, shared by the SFT and the GRPO config."""

    shards: str | None = field(default=None, metadata={"help": "RUN/shards (or RUN): the exported corpus"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "student: model id or checkpoint folder"})
    split: str = field(default="train", metadata={"help": "shard split to train on"})
    text_only: bool = field(default=False, metadata={"help": "transcript only, for any causal LM (AutoModelForCausalLM)"})
    max_samples: int | None = field(default=None, metadata={"help": "use at most this many rows (smoke runs)"})
    review_edits: bool = field(default=True, metadata={"help": "a reviewer's edited target replaces the teacher's"})
    review_drop_rejected: bool = field(default=True, metadata={"help": "drop rows a reviewer rejected"})
    max_frames: int | None = field(
        default=None, metadata={"help": "frames per clip given to the student, evenly strided; None: the checkpoint's, else 16"}
    )
    frame_min_pixels: int | None = field(
        default=None, metadata={"help": "smallest frame area on the patch grid; None: the checkpoint's, else 56*56"}
    )
    frame_max_pixels: int | None = field(
        default=None, metadata={"help": "largest frame area; None: the checkpoint's, else 128*28*28 (128 merged patches)"}
    )
    audio_chunk_seconds: int | None = field(
        default=None, metadata={"help": "Whisper window, seconds; None: the longest clip of the data (longer audio is cut)"}
    )
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of all weights"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "regex of modules to adapt; None: the language model's attention and MLP projections"},
    )

    def media_spec(self, saved: dict[str, Any] | None = None) -> MediaSpec:
        """How media reach the student: this config's settings, else those the checkpoint was trained
        with (`saved`, from its cotforge_train.json), else MediaSpec's defaults; so GRPO and eval feed
        an SFT'd student the frames it learnt on unless told otherwise."""
        spec = {**MediaSpec().as_dict(), **(saved or {})}
        given = {"max_frames": self.max_frames, "min_pixels": self.frame_min_pixels, "max_pixels": self.frame_max_pixels}
        spec.update({key: value for key, value in given.items() if value is not None})
        return MediaSpec(**spec)

    def review_policy(self) -> ReviewPolicy:
        return ReviewPolicy(edits=self.review_edits, drop_rejected=self.review_drop_rejected)


@dataclass
class SFTTrainConfig(StudentFields, SFTConfig):
    """SFT cold start on the rendered DC targets: TRL's SFTConfig plus `StudentFields`."""


@dataclass
class HintGRPOConfig(StudentFields, GRPOConfig):
    """TRL's GRPOConfig plus the DC reward weights and the Hint-GRPO knobs.

    Rewards (cotforge.train.rewards) are weighted here by name rather than through TRL's positional
    `reward_weights`, which this config fills in. The hint re-rolls, once, every group of rollouts
    that missed the gold polarity (or, with `hint_trigger=zero_std`, every zero-variance group
    whose mean reward is below `hint_reward_below`) with the directional hint of `prompts/student_hint.j2`.

    `hint_prompt_ids="hinted"` (default) trains on the hinted prompt: the loss's log-probabilities
    are those of the policy that produced the rollouts, so the update stays on-policy (as in SAGE,
    arXiv 2602.03143). "original" trains the hinted completions under the unhinted prompt, the
    hint acting as privileged information; that is off-policy and TRL applies no correction for it.

    `hint_merge="replace"` (default): the hinted group replaces the original in the batch and in
    the advantage computation. "join": the hinted group still replaces the original in the batch
    (TRL's batch shapes are fixed), but its advantages are normalised against the pooled rewards of
    both groups (2G rollouts), so a hinted success is measured against what the policy did unhinted.
    """

    reward_format: float = field(default=0.5, metadata={"help": "weight of the DC format reward"})
    reward_polarity: float = field(default=1.0, metadata={"help": "weight of the polarity anchor reward"})
    reward_score: float = field(default=1.0, metadata={"help": "weight of the score reward (smooth in |y_hat - y|)"})
    reward_consistency: float = field(default=0.5, metadata={"help": "weight of answer-sign vs stated-polarity agreement"})
    reward_require_format: bool = field(
        default=True, metadata={"help": "content rewards are 0 unless the whole answer is in DC format"}
    )
    hint: bool = field(default=True, metadata={"help": "Hint-GRPO: re-roll all-wrong groups with a directional hint"})
    hint_trigger: Literal["all_wrong", "zero_std"] = field(
        default="all_wrong", metadata={"help": "all_wrong: every rollout misses the gold polarity; zero_std: no reward variance and mean below hint_reward_below"}
    )
    hint_reward_below: float = field(default=1.0, metadata={"help": "zero_std trigger: mean reward threshold"})
    hint_merge: Literal["replace", "join"] = field(default="replace", metadata={"help": "replace or join (pooled baseline)"})
    hint_prompt_ids: Literal["hinted", "original"] = field(
        default="hinted", metadata={"help": "prompt the loss sees for hinted rollouts: hinted (on-policy) or original"}
    )

    def __post_init__(self) -> None:
        for name, allowed in (("hint_trigger", ("all_wrong", "zero_std")), ("hint_merge", ("replace", "join")),
                              ("hint_prompt_ids", ("hinted", "original"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.reward_weights is not None:
            raise ValueError("set reward_format/reward_polarity/reward_score/reward_consistency, not reward_weights")
        self.reward_weights = [self.reward_format, self.reward_polarity, self.reward_score, self.reward_consistency]
        super().__post_init__()


Config = TypeVar("Config", SFTTrainConfig, HintGRPOConfig)


class _Loader(yaml.SafeLoader):
    """YAML as config files mean it: only true/false are booleans (`save_strategy: no` stays "no", a
    TrainingArguments value) and `1e-5` is a float (YAML 1.1 wants a dot)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """`key=value` strings -> a mapping, each value read as YAML (numbers, booleans, lists)."""
    parsed: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, not {item!r}")
        parsed[key.strip()] = _yaml(value) if value.strip() else None
    return parsed


def load_train_config(cls: type[Config], path: Path | None = None, sets: list[str] | None = None,
                      **options: Any) -> Config:
    """A config from a YAML file, then the command's options (None: not given), then --set.

    Without a CUDA device, bf16 is off and use_cpu on unless given: TRL's configs default to bf16
    and refuse it on a CPU-only machine.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = _yaml(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must be a mapping of config fields (see examples/train/)")
        data.update(loaded)
    data.update({key: value for key, value in options.items() if value is not None})
    data.update(parse_sets(sets or []))
    known = {f.name for f in fields(cls) if f.init}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{cls.__name__} has no field {key!r}{' (in ' + str(path) + ')' if path else ''}{hint}")
    _cpu_defaults(data)
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}{' from ' + str(path) if path else ''}: {exc}") from None


def _cpu_defaults(data: dict[str, Any]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    if data.get("bf16") is None:
        data["bf16"] = False
    data.setdefault("use_cpu", True)
