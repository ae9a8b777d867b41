"""RL rewards for DC answers: pure functions of the completion text and the gold label.

Every reward reads the text with `dc.parse_student`, the parser eval and the SFT checks use, and
the gold polarity with `Scale.polarity`, the rule the validator, the shards and the metrics use,
so a reward can never disagree with how the answer will be scored. Values are in [0, 1]:

- format: 1 when the whole text is in the DC layout (`<think><discrimination>... Polarity: x
  </discrimination><calibration>...</calibration></think><answer>y</answer>`), else 0;
- polarity (the verifiable anchor): 1 when the stated polarity is the gold label's bucket;
- score: 1 - |y_hat - y| / (high - low), so smooth in the error and 0 only at a full range off;
- consistency: 1 when the answer's sign agrees with the stated polarity, by the validator's rule
  (`validate.sign_consistent`): positive needs a score above 0, negative below 0 (a weak opinion
  may sit inside the neutral band), neutral needs a score inside the band.

With `require_format` (the default) the three content rewards are 0 for a text that is not in
format: a half-formed answer earns nothing, so the policy cannot collect the anchor while
dropping the reasoning, and the format reward alone carries the signal back to the format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from cotforge.dc import StudentParse, parse_student
from cotforge.types import Polarity, Scale

RewardFunc = Callable[..., list[float]]
REWARD_NAMES = ("format", "polarity", "score", "consistency")
"""The order of `dc_rewards`, and of HintGRPOConfig's reward weights."""


def completion_text(completion: Any) -> str:
    """TRL hands a conversational completion as [{"role": "assistant", "content": ...}], else a string."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(block.get("text", "") for block in content if isinstance(block, dict))
        return content or ""
    return ""


def format_reward(parse: StudentParse) -> float:
    return 1.0 if parse.format_ok else 0.0


def polarity_reward(parse: StudentParse, gold: float, scale: Scale, require_format: bool = True) -> float:
    if require_format and not parse.format_ok:
        return 0.0
    return 1.0 if parse.polarity is not None and parse.polarity == scale.polarity(gold) else 0.0


def score_reward(parse: StudentParse, gold: float, scale: Scale, require_format: bool = True) -> float:
    if (require_format and not parse.format_ok) or parse.score is None or not math.isfinite(parse.score):
        return 0.0
    return max(0.0, 1.0 - abs(parse.score - gold) / (scale.high - scale.low))


def consistency_reward(parse: StudentParse, scale: Scale, require_format: bool = True) -> float:
    if (require_format and not parse.format_ok) or parse.score is None or parse.polarity is None:
        return 0.0
    if parse.polarity is Polarity.POSITIVE:
        agrees = parse.score > 0
    elif parse.polarity is Polarity.NEGATIVE:
        agrees = parse.score < 0
    else:
        agrees = scale.polarity(parse.score) is Polarity.NEUTRAL
    return 1.0 if agrees else 0.0


def dc_rewards(scale: Scale, require_format: bool = True) -> list[RewardFunc]:
    """TRL reward functions, in REWARD_NAMES order, bound to a run's scale.

    TRL calls each with the completions and every dataset column as a keyword argument; the gold
    label arrives as `label` (one value per rollout). Their `__name__` gives TRL's metric names
    (`rewards/polarity/mean`, ...).
    """

    def parses(completions: Sequence[Any]) -> list[StudentParse]:
        return [parse_student(completion_text(c)) for c in completions]

    def format(completions: Sequence[Any], **_: Any) -> list[float]:  # noqa: A001 - TRL names the metric after it
        return [format_reward(p) for p in parses(completions)]

    def polarity(completions: Sequence[Any], label: Sequence[float], **_: Any) -> list[float]:
        return [polarity_reward(p, y, scale, require_format) for p, y in zip(parses(completions), label, strict=True)]

    def score(completions: Sequence[Any], label: Sequence[float], **_: Any) -> list[float]:
        return [score_reward(p, y, scale, require_format) for p, y in zip(parses(completions), label, strict=True)]

    def consistency(completions: Sequence[Any], **_: Any) -> list[float]:
        return [consistency_reward(p, scale, require_format) for p in parses(completions)]

    return [format, polarity, score, consistency]


def misses_polarity(completion: Any, gold: float, scale: Scale, require_format: bool = True) -> bool:
    """Whether a rollout earns no polarity reward: Hint-GRPO's trigger, defined by the reward itself."""
    return polarity_reward(parse_student(completion_text(completion)), gold, scale, require_format) == 0.0
