"""Training on the exported shards: SFT cold start, Hint-GRPO with audio+video in the loss, and eval.

Each module has one job: `config` (TRL config dataclasses plus cotforge's fields, YAML + --set),
`data` (shards and eval sets -> chat samples, media decoded per batch), `processor` (the Omni
processor built from its parts, no torchvision), `collate` (SFT batches, assistant-only labels),
`rewards` (pure reward functions over `dc.parse_student`), `media_grpo` (audio/video in the GRPO loss
forward), `hint_grpo` (the Hint-GRPO re-roll), `sft` / `grpo` (the runs), `evaluate` (metrics on
the unfiltered split), `tiny` (random tiny models built in code, for tests and benches).

Everything here needs the `[train]` extra; `require_train_extra` fails early with the pip line
instead of a deep ImportError.
"""

from __future__ import annotations

import importlib.util

TRAIN_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")
INSTALL_HINT = "pip install torch==2.13.0 && pip install 'cotforge[train]'"
TRL_RANGE = (">=1.16", "<1.17")
"""The TRL releases whose private GRPOTrainer methods `media_grpo` and `hint_grpo` override."""


class TrainExtraMissing(ImportError):
    """A package of the `[train]` extra is not installed."""


class ConfigError(ValueError):
    """A training run cannot be set up as configured: unknown field, bad value, a combination refused."""


class TRLMismatch(RuntimeError):
    """The installed TRL is not the one cotforge's GRPO overrides were written for."""


def require_train_extra() -> None:
    """Raise TrainExtraMissing naming every missing package and the install line."""
    missing = [name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise TrainExtraMissing(
            f"training needs the [train] extra; missing: {', '.join(missing)}. Install it with: {INSTALL_HINT} "
            "(torch first, so that no CUDA build is pulled in on a CPU machine)"
        )
