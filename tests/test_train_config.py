"""Training configs: TRL's dataclasses plus cotforge's fields, from YAML, options and --set; the extra check."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_fixtures import TINY_ARGS  # noqa: F401 - skips the module without the [train] extra

from cotforge.train import TrainExtraMissing, require_train_extra
from cotforge.train.config import ConfigError, HintGRPOConfig, SFTTrainConfig, load_train_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "train"
CPU = ["bf16=false", "use_cpu=true", "report_to=none"]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_config_loads(name: str, tmp_path: Path) -> None:
    cls = HintGRPOConfig if name.startswith("grpo") else SFTTrainConfig
    cfg = load_train_config(cls, EXAMPLES / name, CPU, output_dir=str(tmp_path))
    assert cfg.output_dir == str(tmp_path)
    assert isinstance(cfg.learning_rate, float)


def test_yaml_then_options_then_set(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("learning_rate: 1e-5\nmax_frames: 8\nsave_strategy: no\nlora: true\n")
    cfg = load_train_config(SFTTrainConfig, path, ["max_frames=4", "report_to=[none]"], output_dir=str(tmp_path),
                            max_frames=6, lora=None, shards="RUN/shards")
    assert cfg.learning_rate == 1e-5  # YAML 1.1 would have read "1e-5" as a string
    assert cfg.save_strategy == "no"  # ... and "no" as False
    assert cfg.max_frames == 4  # --set wins over the option, which wins over the file
    assert cfg.lora is True  # an option left out does not override the file
    assert cfg.shards == "RUN/shards" and cfg.media_spec().max_frames == 4


def test_unknown_fields_are_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no field 'learnig_rate'.*learning_rate"):
        load_train_config(SFTTrainConfig, None, ["learnig_rate=1e-5"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="key=value"):
        load_train_config(SFTTrainConfig, None, ["learning_rate"], output_dir=str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(SFTTrainConfig, bad, [], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="hint_merge"):
        load_train_config(HintGRPOConfig, None, ["hint_merge=merge"], output_dir=str(tmp_path))


def test_grpo_reward_weights_come_from_named_fields(tmp_path: Path) -> None:
    cfg = load_train_config(HintGRPOConfig, None, ["reward_score=2", "num_generations=4"], output_dir=str(tmp_path),
                            per_device_train_batch_size=8)
    assert cfg.reward_weights == [0.5, 1.0, 2.0, 0.5]
    assert cfg.hint and cfg.hint_merge == "replace" and cfg.hint_prompt_ids == "hinted"
    with pytest.raises(ConfigError, match="not reward_weights"):
        load_train_config(HintGRPOConfig, None, ["reward_weights=[1,1,1,1]"], output_dir=str(tmp_path))


def test_cpu_machines_get_fp32_on_cpu_unless_told(tmp_path: Path) -> None:
    cfg = load_train_config(SFTTrainConfig, None, [], output_dir=str(tmp_path))
    assert cfg.bf16 is False and cfg.use_cpu is True


def test_a_missing_train_package_fails_with_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(TrainExtraMissing, match=r"missing: trl.*pip install torch==2.13.0 && pip install 'cotforge\[train\]'"):
        require_train_extra()
