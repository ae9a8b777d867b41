"""DC rewards: adversarial answers earn nothing they should not, and the anchor is the validator's rule."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cotforge.dc import Calibration, Cues, Discrimination, Rationale, parse_student, render_student
from cotforge.train.rewards import (
    REWARD_NAMES,
    completion_text,
    consistency_reward,
    dc_rewards,
    format_reward,
    misses_polarity,
    polarity_reward,
    score_reward,
)
from cotforge.types import MOSI_SCALE, SIMS_SCALE, Polarity, Scale
from cotforge.validate import ValidateConfig, polarity_agrees, sign_consistent

GOOD = (
    "<think>\n<discrimination>Text: upbeat words\nAudio: lively voice\nVisual: a smile\nAll positive. "
    "Polarity: positive</discrimination>\n<calibration>clear but not extreme</calibration>\n</think>\n<answer>1.4</answer>"
)


def rewards(text: str, gold: float, scale: Scale = MOSI_SCALE) -> dict[str, float]:
    """Every reward of one completion, through the functions TRL calls (conversational completions)."""
    completions = [[{"role": "assistant", "content": text}]]
    return {name: func(completions=completions, label=[gold])[0] for name, func in zip(REWARD_NAMES, dc_rewards(scale))}


def test_a_right_answer_earns_every_reward() -> None:
    got = rewards(GOOD, 1.5)
    assert got["format"] == got["polarity"] == got["consistency"] == 1.0
    assert math.isclose(got["score"], 1 - 0.1 / 6)


def test_score_reward_is_smooth_in_the_error_over_the_range() -> None:
    scores = [rewards(GOOD.replace("1.4", f"{y:g}"), 1.5)["score"] for y in (1.5, 1.0, 0.0, -1.5, -3.0)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == 1.0 and math.isclose(scores[3], 0.5) and math.isclose(scores[4], 0.25)
    assert math.isclose(rewards(GOOD.replace("1.4", "0.5"), 0.3, SIMS_SCALE)["score"], 0.9)


ADVERSARIAL = {
    "two answers": GOOD + "\n<answer>-2</answer>",
    "answer outside the tags": GOOD.replace("<answer>1.4</answer>", "The answer is 1.4"),
    "tags out of order": GOOD.replace("<calibration>clear but not extreme</calibration>\n", "").replace(
        "<discrimination>", "<calibration>clear</calibration><discrimination>"),
    "text after the answer": GOOD + " I hope this helps!",
    "huge number": GOOD.replace("1.4", "1" + "0" * 400),
    "exponent overflow": GOOD.replace("1.4", "1e400"),
    "nan": GOOD.replace("1.4", "nan"),
    "inf": GOOD.replace("1.4", "inf"),
    "empty": "",
    "only whitespace": " \n\t ",
    "no polarity": GOOD.replace(" Polarity: positive", ""),
    "unknown polarity word": GOOD.replace("Polarity: positive", "Polarity: upbeat"),
    "answer not a number": GOOD.replace("1.4", "very positive"),
    "full-width digits": GOOD.replace("1.4", "１.４"),
    "missing think": GOOD.replace("<think>\n", "").replace("\n</think>", ""),
}


def test_adversarial_answers_earn_no_content_reward() -> None:
    for name, text in ADVERSARIAL.items():
        got = rewards(text, 1.5)
        assert got == {"format": 0.0, "polarity": 0.0, "score": 0.0, "consistency": 0.0}, name


def test_without_the_format_gate_content_rewards_read_what_parses() -> None:
    parse = parse_student(ADVERSARIAL["two answers"])
    assert not parse.format_ok
    assert polarity_reward(parse, 1.5, MOSI_SCALE, require_format=False) == 1.0
    assert score_reward(parse, 1.5, MOSI_SCALE, require_format=False) > 0.9  # the first answer counts, not a hedge
    huge = parse_student(ADVERSARIAL["huge number"])
    assert score_reward(huge, 1.5, MOSI_SCALE, require_format=False) == 0.0


def test_an_answer_in_another_language_is_read_by_the_same_rules() -> None:
    chinese = GOOD.replace("Polarity: positive", "Polarity: 积极").replace("upbeat words", "语气积极").replace("1.4", "0.6")
    got = rewards(chinese, 0.8, SIMS_SCALE)
    assert got["format"] == got["polarity"] == got["consistency"] == 1.0
    assert rewards(GOOD.replace("Polarity: positive", "Polarity: 消极"), 1.5)["polarity"] == 0.0


def test_a_wrong_polarity_with_a_consistent_score_loses_only_the_anchor_and_score() -> None:
    wrong = GOOD.replace("Polarity: positive", "Polarity: negative").replace("1.4", "-1.4")
    got = rewards(wrong, 1.5)
    assert got["format"] == 1.0 and got["consistency"] == 1.0
    assert got["polarity"] == 0.0 and got["score"] < 0.55


def test_inconsistent_answer_loses_consistency() -> None:
    got = rewards(GOOD.replace("1.4", "-1.4"), 1.5)
    assert got["polarity"] == 1.0 and got["consistency"] == 0.0


def test_completion_text_reads_every_shape_trl_hands() -> None:
    assert completion_text(GOOD) == GOOD
    assert completion_text([{"role": "assistant", "content": GOOD}]) == GOOD
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]) == GOOD
    assert completion_text([]) == "" and completion_text(None) == ""


def _rationale(polarity: Polarity, score: float) -> Rationale:
    return Rationale(
        discrimination=Discrimination(cues=Cues(text="t", audio="a", visual="v"), summary="s", polarity=polarity),
        calibration=Calibration(reasoning="r", score=score),
    )


labels = st.floats(-3, 3, allow_nan=False).map(lambda x: round(x, 2))
sims_labels = st.floats(-1, 1, allow_nan=False).map(lambda x: round(x, 2))


@given(gold=labels, stated=st.sampled_from(list(Polarity)), score=labels, sims=st.booleans())
def test_polarity_and_consistency_rewards_agree_with_the_validator(gold: float, stated: Polarity, score: float, sims: bool) -> None:
    scale = SIMS_SCALE if sims else MOSI_SCALE
    if sims:
        gold, score = gold / 3, score / 3
    rationale = _rationale(stated, score)
    parse = parse_student(render_student(rationale))
    cfg = ValidateConfig.for_scale(scale)
    assert parse.format_ok
    assert (polarity_reward(parse, gold, scale) == 1.0) == polarity_agrees(rationale, gold, cfg).passed
    assert (consistency_reward(parse, scale) == 1.0) == sign_consistent(rationale, cfg).passed
    assert misses_polarity(render_student(rationale), gold, scale) == (not polarity_agrees(rationale, gold, cfg).passed)


def test_the_anchor_uses_the_neutral_band_edges_of_each_scale() -> None:
    neutral = parse_student(GOOD.replace("Polarity: positive", "Polarity: neutral").replace("1.4", "0"))
    assert polarity_reward(neutral, 0.5, MOSI_SCALE) == 1.0  # MOSI: |y| <= 0.5 is neutral
    assert polarity_reward(neutral, 0.51, MOSI_SCALE) == 0.0
    assert polarity_reward(neutral, 0.1, SIMS_SCALE) == 1.0  # SIMS: (-0.1, 0.1] is neutral
    assert polarity_reward(neutral, -0.1, SIMS_SCALE) == 0.0
    assert format_reward(neutral) == 1.0
