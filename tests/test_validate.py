"""Validator rules, their reasons, the verdict and the choice among candidates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cotforge.dc import ParseResult, Polarity, Rationale, parse_teacher
from cotforge.types import DATASETS, MOSI_SCALE, SIMS_SCALE, scale_for_range
from cotforge.validate import (
    NOT_CHECKED,
    _is_cjk,
    _letter_counts,
    RULE_NAMES,
    RuleResult,
    ValidateConfig,
    Verdict,
    language_matches,
    length_bounds,
    no_label_leak,
    pick_best,
    polarity_agrees,
    score_close,
    score_in_range,
    sign_consistent,
    validate,
    well_formed,
)

MOSI = ValidateConfig.for_dataset("mosi")
SIMS = ValidateConfig.for_dataset("sims")

EN_TEXT = "The speaker sounds pleased and smiles while describing the film."
ZH_TEXT = "说话人语气轻松，面带微笑，评价这部电影很好看。"


def make(
    polarity: Polarity = Polarity.POSITIVE, score: float = 1.4, prose: str = EN_TEXT, reasoning: str | None = None
) -> Rationale:
    return Rationale.model_validate(
        {
            "discrimination": {
                "cues": {"text": prose, "audio": prose, "visual": prose},
                "summary": prose,
                "polarity": polarity,
            },
            "calibration": {"reasoning": prose if reasoning is None else reasoning, "score": score},
        }
    )


def parsed(r: Rationale, lenient: bool = False) -> ParseResult:
    return ParseResult(r, None, lenient)


# --- config -----------------------------------------------------------------------------------------


def test_dataset_defaults() -> None:
    assert (MOSI.scale, MOSI.tolerance) == (MOSI_SCALE, 1.0)
    assert (MOSI.score_range, MOSI.language) == ((-3.0, 3.0), "en")
    assert (SIMS.scale, SIMS.tolerance) == (SIMS_SCALE, 0.4)
    assert (SIMS.score_range, SIMS.language) == ((-1.0, 1.0), "zh")
    assert ValidateConfig.for_dataset("mosei") == MOSI
    assert ValidateConfig.for_dataset("simsv2") == SIMS
    assert all(ValidateConfig.for_dataset(name) for name in DATASETS)


def test_overrides_are_validated() -> None:
    cfg = ValidateConfig.for_dataset("sims", tolerance=0.6, check_language=False)
    assert (cfg.tolerance, cfg.check_language, cfg.scale) == (0.6, False, SIMS_SCALE)
    with pytest.raises(ValidationError, match="tolerence"):
        ValidateConfig.for_dataset("mosi", tolerence=0.5)
    with pytest.raises(ValueError, match="low < high"):
        ValidateConfig.for_scale(scale_for_range(3, -3, "en"))
    with pytest.raises(ValidationError, match="min_chars"):
        ValidateConfig.for_dataset("mosi", min_chars=500, max_chars=100)
    with pytest.raises(ValueError, match="unknown dataset 'iemocap'"):
        ValidateConfig.for_dataset("iemocap")


def test_corpus_specific_rules_have_no_silent_default() -> None:
    with pytest.raises(ValidationError):
        ValidateConfig()  # type: ignore[call-arg]


# --- rules ------------------------------------------------------------------------------------------


def test_well_formed_carries_the_parse_error() -> None:
    assert well_formed(parse_teacher("no json")) == RuleResult("well_formed", False, "no JSON object found")
    assert well_formed(parsed(make())) == RuleResult("well_formed", True)


@pytest.mark.parametrize(
    ("cfg", "polarity", "gold", "passed"),
    [
        (MOSI, Polarity.NEUTRAL, 0.4, True),
        (MOSI, Polarity.POSITIVE, 0.4, False),
        (MOSI, Polarity.POSITIVE, 0.6, True),
        (MOSI, Polarity.NEUTRAL, -0.5, True),  # MMSA: round(-0.5) is -0, neutral
        (MOSI, Polarity.NEGATIVE, -0.5, False),
        (MOSI, Polarity.POSITIVE, 0.5, False),
        (MOSI, Polarity.POSITIVE, 0.51, True),
        (MOSI, Polarity.NEUTRAL, 0.0, True),
        (SIMS, Polarity.NEUTRAL, 0.1, True),  # MMSA: (-0.1, 0.1] is neutral
        (SIMS, Polarity.NEGATIVE, -0.1, True),
        (SIMS, Polarity.NEUTRAL, -0.1, False),
        (SIMS, Polarity.POSITIVE, 0.2, True),
        (SIMS, Polarity.NEGATIVE, 0.2, False),
    ],
)
def test_polarity_agrees(cfg: ValidateConfig, polarity: Polarity, gold: float, passed: bool) -> None:
    assert polarity_agrees(make(polarity, 0.0), gold, cfg).passed is passed


def test_polarity_reason() -> None:
    assert polarity_agrees(make(Polarity.POSITIVE), -1.2, MOSI).reason == "stated positive, gold -1.2 is negative"


@pytest.mark.parametrize(
    ("cfg", "score", "gold", "passed"),
    [
        (MOSI, 2.2, 1.2, True),  # |2.2 - 1.2| is 1.0000000000000002 in floats: exactly the tolerance
        (MOSI, 2.3, 1.2, False),
        (MOSI, -1.0, 0.0, True),
        (SIMS, 0.6, 0.2, True),
        (SIMS, 0.8, 0.2, False),
    ],
)
def test_score_close(cfg: ValidateConfig, score: float, gold: float, passed: bool) -> None:
    result = score_close(make(score=score), gold, cfg)
    assert result.passed is passed
    assert (result.reason is None) is passed


@pytest.mark.parametrize(
    ("cfg", "polarity", "score", "passed"),
    [
        (MOSI, Polarity.POSITIVE, 0.3, True),  # weak but positive
        (MOSI, Polarity.POSITIVE, 0.0, False),
        (MOSI, Polarity.NEGATIVE, -0.2, True),
        (MOSI, Polarity.NEGATIVE, 0.0, False),
        (MOSI, Polarity.NEUTRAL, 0.4, True),
        (MOSI, Polarity.NEUTRAL, 0.5, True),
        (MOSI, Polarity.NEUTRAL, 0.6, False),
        (MOSI, Polarity.NEUTRAL, -0.6, False),
        (SIMS, Polarity.NEUTRAL, 0.1, True),
        (SIMS, Polarity.NEUTRAL, -0.2, False),
    ],
)
def test_sign_consistent(cfg: ValidateConfig, polarity: Polarity, score: float, passed: bool) -> None:
    assert sign_consistent(make(polarity, score), cfg).passed is passed


def test_score_in_range() -> None:
    assert score_in_range(make(score=3.0), MOSI).passed
    assert score_in_range(make(score=-1.0), SIMS).passed
    assert score_in_range(make(score=1.2), SIMS) == RuleResult("score_in_range", False, "score 1.2 outside [-1, 1]")


def test_length_bounds_counts_all_prose_fields() -> None:
    r = make(prose="abcd", reasoning="efghij")  # 4 * 4 + 6 = 22 chars
    assert length_bounds(r, MOSI.model_copy(update={"min_chars": 22})).passed
    assert length_bounds(r, MOSI.model_copy(update={"min_chars": 23})).reason == "22 chars outside [23, 4000]"
    assert not length_bounds(r, MOSI.model_copy(update={"min_chars": 0, "max_chars": 21})).passed


@pytest.mark.parametrize(
    ("cfg", "prose", "passed"),
    [
        (SIMS, ZH_TEXT, True),
        (SIMS, "说话人提到 Marvel 电影和 IMAX 画面，语气兴奋。", True),  # English names inside Chinese
        (SIMS, EN_TEXT, False),
        (MOSI, EN_TEXT, True),
        (MOSI, "The speaker says 'très bien' and smiles.", True),
        (MOSI, ZH_TEXT, False),
        (MOSI, "1.4 !!! ... 2.0", False),  # no letters at all
    ],
)
def test_language_matches(cfg: ValidateConfig, prose: str, passed: bool) -> None:
    assert language_matches(make(prose=prose), cfg).passed is passed


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=300)
       | st.text(alphabet="aZ é日本語の\u3400\U00020001\uf900½²٣_-", max_size=300))
def test_letter_counts_are_str_isalpha_character_by_character(text: str) -> None:
    """The rule counts letters with regexes over ASCII and a loop over the rest only; the definition is
    str.isalpha on every character (ideographs count, digits and numeric signs do not)."""
    letters = [ch for ch in text if ch.isalpha()]
    assert _letter_counts(text) == (len(letters), sum(ch.isascii() for ch in letters), sum(map(_is_cjk, letters)))


def test_language_check_can_be_off_or_unknown() -> None:
    off = language_matches(make(prose=EN_TEXT), SIMS.model_copy(update={"check_language": False}))
    assert off == RuleResult("language_matches", True, "not applied: check_language is off")
    other = language_matches(make(prose=ZH_TEXT), ValidateConfig.for_scale(scale_for_range(-3, 3, "fr")))
    assert other.passed and other.reason == "not applied: no check for language 'fr'"
    assert language_matches(make(prose=EN_TEXT), SIMS).reason == "CJK share of letters 0.00 < 0.3 for zh"


@pytest.mark.parametrize(
    ("reasoning", "leaks"),
    [
        ("The gold label says negative.", True),
        ("As the hint says, it is negative.", True),
        ("The label is negative, so the voice must be sad.", True),
        ("根据提示，情感为负面。", True),
        ("There is a hint of sarcasm; her voice hints at anger. Negative.", False),
        # the hint carries the polarity only: a teacher that names the gold score calibrated well, it did not copy
        ("The intensity is about -1.2 overall.", False),
        ("强度约为－１.２。", False),
        ("Strongly, +2 on the scale.", False),
    ],
)
def test_no_label_leak_when_hinted(reasoning: str, leaks: bool) -> None:
    result = no_label_leak(make(Polarity.NEGATIVE, -1.0, reasoning=reasoning), hinted=True)
    assert result.passed is not leaks


def test_no_label_leak_reasons_and_unhinted() -> None:
    r = make(reasoning="The gold label is -1.2.")
    assert no_label_leak(r, hinted=False) == RuleResult("no_label_leak", True, "not applied: not hinted")
    assert no_label_leak(r, hinted=True).reason == "mentions 'gold label'"


def test_a_hinted_answer_that_states_the_gold_score_is_accepted() -> None:
    """The hint names the polarity, never the score: a calibration equal to gold is no leak."""
    verdict = validate(parsed(make(Polarity.NEGATIVE, -1.2, reasoning="I settle on -1.2, clearly negative.")), -1.2, MOSI, hinted=True)
    assert verdict.passed, verdict.results


# --- validate ---------------------------------------------------------------------------------------


def test_validate_lists_every_rule_in_order() -> None:
    verdict = validate(parsed(make(Polarity.POSITIVE, 1.4)), 1.0, MOSI)
    assert [result.name for result in verdict.results] == list(RULE_NAMES)
    assert verdict.passed
    assert verdict.error == pytest.approx(0.4)


def test_validate_reports_every_failure_not_only_the_first() -> None:
    verdict = validate(parsed(make(Polarity.POSITIVE, -3.5, prose="ok")), 1.0, MOSI, hinted=True)
    failed = {result.name for result in verdict.results if not result.passed}
    assert failed == {"score_close", "sign_consistent", "score_in_range", "length_bounds"}
    assert not verdict.passed
    assert verdict.error == 4.5


def test_validate_parse_failure_lists_the_other_rules_as_not_checked() -> None:
    verdict = validate(parse_teacher('{"discrimination": {'), 1.0, MOSI)
    assert verdict == Verdict(
        False,
        [RuleResult("well_formed", False, "truncated JSON (unbalanced braces)")]
        + [RuleResult(name, False, NOT_CHECKED) for name in RULE_NAMES[1:]],
        None,
    )


def test_hinted_leak_fails_the_verdict() -> None:
    r = make(Polarity.NEGATIVE, -1.2, reasoning="Given the hint, the speaker is negative: -1.2.")
    assert validate(parsed(r), -1.2, MOSI, hinted=False).passed
    assert not validate(parsed(r), -1.2, MOSI, hinted=True).passed


# --- pick_best --------------------------------------------------------------------------------------


def candidate(
    score: float, gold: float = 1.0, lenient: bool = False, prose: str = EN_TEXT
) -> tuple[ParseResult, Verdict]:
    parse = parsed(make(Polarity.POSITIVE, score, prose=prose), lenient)
    return parse, validate(parse, gold, MOSI)


def test_pick_best_prefers_the_smallest_error() -> None:
    assert pick_best([candidate(1.8), candidate(1.1), candidate(0.8)]) == 1


def test_pick_best_ignores_failing_candidates() -> None:
    failing = candidate(-2.0)
    assert not failing[1].passed
    assert pick_best([failing, candidate(1.5)]) == 1
    assert pick_best([failing, (parse_teacher("nothing"), validate(parse_teacher("nothing"), 1.0, MOSI))]) is None
    assert pick_best([]) is None


def test_pick_best_ties_strict_then_longer_then_first() -> None:
    assert pick_best([candidate(1.2, lenient=True), candidate(1.2)]) == 1
    assert pick_best([candidate(1.2), candidate(1.2, prose=EN_TEXT + " More detail.")]) == 1
    assert pick_best([candidate(1.2), candidate(1.2)]) == 0
