"""Rules that accept or reject a teacher's rationale against the gold label.

Each rule is a small pure function returning a `RuleResult` under a stable name: the names appear in
the ledger, the shards and the reports. `validate` runs every rule and lists every outcome, so that
a report can count all the reasons a clip failed, not only the first one met.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cotforge.dc import ParseResult, Polarity, Rationale, polarity_of
from cotforge.types import SCALES

RULE_NAMES = (
    "well_formed",
    "polarity_agrees",
    "score_close",
    "sign_consistent",
    "score_in_range",
    "length_bounds",
    "language_matches",
    "no_label_leak",
)
NOT_CHECKED = "not checked: not well-formed"

# Scores and labels are decimals held in binary floats: |2.2 - 1.2| is 1.0000000000000002, and a
# score exactly one tolerance away must pass.
_FLOAT_SLACK = 1e-9

ZH_MIN_CJK_SHARE = 0.3
"""A Chinese rationale: at least this share of its letters are CJK ideographs (English terms and
names in a Chinese text are letters too, hence a low bar)."""
EN_MIN_ASCII_SHARE = 0.8
"""An English rationale: at least this share of its letters are ASCII letters."""


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's outcome. `reason` says why it failed, or why a rule was not applied."""

    name: str
    passed: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Every rule's outcome for one candidate; `error` is |score - gold| when the answer parsed."""

    passed: bool
    results: list[RuleResult]
    error: float | None


_MOSI_RULES: Mapping[str, Any] = MappingProxyType({"neutral_band": 0.5, "neutral_inclusive": False, "tolerance": 1.0})
_SIMS_RULES: Mapping[str, Any] = MappingProxyType({"neutral_band": 0.1, "neutral_inclusive": True, "tolerance": 0.4})
_DATASET_RULES = {"mosi": _MOSI_RULES, "mosei": _MOSI_RULES, "sims": _SIMS_RULES, "simsv2": _SIMS_RULES}


class ValidateConfig(BaseModel):
    """Validator settings. The dataset-dependent ones have no default, so that no corpus silently
    gets another's rules: use `for_dataset`, or give them all for a corpus of your own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    neutral_band: float = Field(ge=0, description="gold |y| below this (or equal, if inclusive) is neutral")
    neutral_inclusive: bool = Field(description="whether |y| == neutral_band is neutral (SIMS: yes)")
    tolerance: float = Field(ge=0, description="largest accepted |score - gold|")
    score_range: tuple[float, float] = Field(description="the dataset's label range; scores outside fail")
    language: str = Field(description="language the rationale must be written in: en | zh (others: not checked)")
    min_chars: int = Field(default=40, ge=0, description="fewest characters over all prose fields")
    max_chars: int = Field(default=4000, ge=1, description="most characters over all prose fields")
    check_language: bool = Field(default=True, description="apply the language_matches rule")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateConfig:
        low, high = self.score_range
        if not low < high:
            raise ValueError(f"score_range must be (low, high) with low < high, got {self.score_range}")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> ValidateConfig:
        """The default rules for a known dataset (MOSI/MOSEI: neutral |y| < 0.5, tolerance 1.0;
        SIMS: neutral |y| <= 0.1, tolerance 0.4), with its range and language, then `overrides`."""
        if dataset not in _DATASET_RULES:
            known = ", ".join(_DATASET_RULES)
            raise ValueError(
                f"unknown dataset {dataset!r} (known: {known}); for another corpus build "
                "ValidateConfig(...) with neutral_band, neutral_inclusive, tolerance, score_range, language"
            )
        scale = SCALES[dataset]
        defaults = {**_DATASET_RULES[dataset], "score_range": (scale.low, scale.high), "language": scale.language}
        return cls(**{**defaults, **overrides})


def _result(name: str, passed: bool, reason: str) -> RuleResult:
    return RuleResult(name, passed, None if passed else reason)


def _chars(r: Rationale) -> int:
    return sum(len(text) for text in r.texts())


def well_formed(parse: ParseResult) -> RuleResult:
    return _result("well_formed", parse.rationale is not None, parse.error or "no rationale")


def polarity_agrees(r: Rationale, gold: float, cfg: ValidateConfig) -> RuleResult:
    """The stated polarity is the gold label's, read through the neutral band."""
    stated = r.discrimination.polarity
    expected = polarity_of(gold, cfg.neutral_band, cfg.neutral_inclusive)
    return _result("polarity_agrees", stated == expected, f"stated {stated}, gold {gold:g} is {expected}")


def score_close(r: Rationale, gold: float, cfg: ValidateConfig) -> RuleResult:
    error = abs(r.calibration.score - gold)
    return _result(
        "score_close",
        error <= cfg.tolerance + _FLOAT_SLACK,
        f"|score - gold| = {error:.3g} > tolerance {cfg.tolerance:g}",
    )


def sign_consistent(r: Rationale, cfg: ValidateConfig) -> RuleResult:
    """The score points where the stated polarity does: the two halves of one answer must agree.

    A positive or negative score may still lie inside the neutral band (a weak opinion); a neutral
    polarity needs the score inside it.
    """
    stated, score = r.discrimination.polarity, r.calibration.score
    if stated is Polarity.POSITIVE:
        passed = score > 0
    elif stated is Polarity.NEGATIVE:
        passed = score < 0
    else:
        passed = polarity_of(score, cfg.neutral_band, cfg.neutral_inclusive) is Polarity.NEUTRAL
    return _result("sign_consistent", passed, f"polarity {stated} but score {score:g}")


def score_in_range(r: Rationale, cfg: ValidateConfig) -> RuleResult:
    low, high = cfg.score_range
    score = r.calibration.score
    return _result("score_in_range", low <= score <= high, f"score {score:g} outside [{low:g}, {high:g}]")


def length_bounds(r: Rationale, cfg: ValidateConfig) -> RuleResult:
    """All prose fields together, in characters: too short says nothing, too long rambles."""
    n = _chars(r)
    return _result(
        "length_bounds", cfg.min_chars <= n <= cfg.max_chars, f"{n} chars outside [{cfg.min_chars}, {cfg.max_chars}]"
    )


def _is_cjk(ch: str) -> bool:
    return (
        "\u4e00" <= ch <= "\u9fff"
        or "\u3400" <= ch <= "\u4dbf"
        or "\uf900" <= ch <= "\ufaff"
        or "\U00020000" <= ch <= "\U0002ffff"
    )


def language_matches(r: Rationale, cfg: ValidateConfig) -> RuleResult:
    """A cheap script test, not language identification: among the letters of the prose (str.isalpha,
    which counts ideographs), zh needs a CJK share >= ZH_MIN_CJK_SHARE and en an ASCII share >=
    EN_MIN_ASCII_SHARE. It catches a teacher answering a Chinese clip in English and the reverse,
    which is the failure seen in practice; other languages are not checked."""
    if not cfg.check_language:
        return RuleResult("language_matches", True, "not applied: check_language is off")
    letters = [ch for ch in "".join(r.texts()) if ch.isalpha()]
    if cfg.language == "zh":
        share = sum(map(_is_cjk, letters)) / len(letters) if letters else 0.0
        minimum, script = ZH_MIN_CJK_SHARE, "CJK"
    elif cfg.language == "en":
        share = sum(ch.isascii() for ch in letters) / len(letters) if letters else 0.0
        minimum, script = EN_MIN_ASCII_SHARE, "ASCII"
    else:
        return RuleResult("language_matches", True, f"not applied: no check for language {cfg.language!r}")
    return _result(
        "language_matches",
        share >= minimum,
        f"{script} share of letters {share:.2f} < {minimum:g} for {cfg.language}",
    )


# A hinted teacher was told the gold polarity; these say it leaned on that instead of the clip.
# "a hint of" / "hints at" are ordinary sentiment prose and are not counted.
_LEAK_PHRASES = re.compile(
    r"\bgold(?:en)?[ -](?:label|score|standard|answer)"
    r"|\bground[ -]truth"
    r"|\bthe (?:(?:true|correct|given|actual|reference) label|label (?:is|was|says))\b"
    r"|\b(?:the|this|given|provided) hint\b(?! of)"
    r"|\bas hinted\b"
    r"|标签|真实值|参考答案|提示信息|根据提示",
    re.I,
)
# ASCII-only lookbehind: Chinese writes numbers right after ideographs ("约为-1.2"), which \w would refuse.
_NUMBER_TOKEN = re.compile(r"(?<![0-9A-Za-z_.])(?P<sign>[+-]?)\d+(?P<decimals>\.\d+)?(?![0-9]|\.\d)", re.ASCII)


def no_label_leak(r: Rationale, gold: float, hinted: bool) -> RuleResult:
    """A hinted rationale must not quote the gold score or refer to a label or hint.

    Numbers are compared after NFKC and with U+2212 read as '-' (so '−1.2' and fullwidth digits
    count), to 3 decimals. A bare unsigned integer ('2', '0') is not counted: it is too common in
    prose (counts, 'from -3 to 3') to be evidence of a leak, while '2.0' or '+2' is.
    """
    if not hinted:
        return RuleResult("no_label_leak", True, "not applied: not hinted")
    text = unicodedata.normalize("NFKC", "\n".join(r.texts())).replace("\u2212", "-")
    phrase = _LEAK_PHRASES.search(text)
    if phrase:
        return RuleResult("no_label_leak", False, f"mentions {phrase.group(0)!r}")
    target = round(gold, 3)
    for token in _NUMBER_TOKEN.finditer(text):
        if (token["sign"] or token["decimals"]) and round(float(token.group(0)), 3) == target:
            return RuleResult("no_label_leak", False, f"quotes the gold score as {token.group(0)!r}")
    return RuleResult("no_label_leak", True)


def validate(parse: ParseResult, gold: float, cfg: ValidateConfig, hinted: bool = False) -> Verdict:
    """Every rule's outcome for one parsed answer. A parse failure still lists all rules, the others
    as failed and not checked, so that every verdict has the same rows."""
    formed = well_formed(parse)
    r = parse.rationale
    if r is None:
        skipped = [RuleResult(name, False, NOT_CHECKED) for name in RULE_NAMES[1:]]
        return Verdict(False, [formed, *skipped], None)
    results = [
        formed,
        polarity_agrees(r, gold, cfg),
        score_close(r, gold, cfg),
        sign_consistent(r, cfg),
        score_in_range(r, cfg),
        length_bounds(r, cfg),
        language_matches(r, cfg),
        no_label_leak(r, gold, hinted),
    ]
    return Verdict(all(result.passed for result in results), results, abs(r.calibration.score - gold))


def pick_best(candidates: list[tuple[ParseResult, Verdict]]) -> int | None:
    """Index of the best passing candidate: smallest error, then a strict parse over a lenient one,
    then the longer rationale (more reasoning to learn from), then the earliest; None if none passes."""
    ranked = [
        (verdict.error, parse.lenient, -_chars(parse.rationale), index)
        for index, (parse, verdict) in enumerate(candidates)
        if verdict.passed and verdict.error is not None and parse.rationale is not None
    ]
    return min(ranked)[-1] if ranked else None
