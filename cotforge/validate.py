"""Rules that accept or reject a teacher's rationale against the gold label.

Each rule is a small pure function returning a `RuleResult` under a stable name: the names appear in
the ledger, the shards and the reports. `validate` runs every rule and lists every outcome, so that
a report can count all the reasons a clip failed, not only the first one met.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cotforge.dc import ParseResult, Rationale
from cotforge.types import DATASETS, Polarity, Scale

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


TOLERANCE_SHARE = {"mosi": 1.0 / 6.0, "sims": 0.2}
"""Default tolerance as a share of the label range: 1.0 on MOSI's [-3, 3], 0.4 on SIMS's [-1, 1]."""


class ValidateConfig(BaseModel):
    """Validator settings. The scale (range, polarity buckets, language) is the run's one Scale, so
    the validator cannot disagree with the prompt, the shards, the rewards or the metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: Scale = Field(description="the corpus's label scale: range, MMSA polarity buckets, language")
    tolerance: float = Field(ge=0, description="largest accepted |score - gold|")
    min_chars: int = Field(default=40, ge=0, description="fewest characters over all prose fields")
    max_chars: int = Field(default=4000, ge=1, description="most characters over all prose fields")
    check_language: bool = Field(default=True, description="apply the language_matches rule")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self

    @property
    def score_range(self) -> tuple[float, float]:
        return (self.scale.low, self.scale.high)

    @property
    def language(self) -> str:
        return self.scale.language

    @classmethod
    def for_scale(cls, scale: Scale, **overrides: Any) -> ValidateConfig:
        """The default rules for a scale (tolerance 1.0 on [-3, 3], 0.4 on [-1, 1]), then `overrides`."""
        tolerance = round((scale.high - scale.low) * TOLERANCE_SHARE[scale.metrics], 6)
        return cls(**{"scale": scale, "tolerance": tolerance, **overrides})

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> ValidateConfig:
        """The default rules of a known dataset (see `for_scale`)."""
        if dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)}); for another corpus use "
                "ValidateConfig.for_scale(scale_for_range(low, high, language))"
            )
        return cls.for_scale(DATASETS[dataset].scale, **overrides)


def _result(name: str, passed: bool, reason: str) -> RuleResult:
    return RuleResult(name, passed, None if passed else reason)


def _chars(r: Rationale) -> int:
    return sum(len(text) for text in r.texts())


def well_formed(parse: ParseResult) -> RuleResult:
    return _result("well_formed", parse.rationale is not None, parse.error or "no rationale")


def polarity_agrees(r: Rationale, gold: float, cfg: ValidateConfig) -> RuleResult:
    """The stated polarity is the gold label's MMSA 3-class bucket."""
    stated = r.discrimination.polarity
    expected = cfg.scale.polarity(gold)
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

    A positive or negative score may still lie inside the neutral bucket (a weak opinion); a neutral
    polarity needs the score inside it.
    """
    stated, score = r.discrimination.polarity, r.calibration.score
    if stated is Polarity.POSITIVE:
        passed = score > 0
    elif stated is Polarity.NEGATIVE:
        passed = score < 0
    else:
        passed = cfg.scale.polarity(score) is Polarity.NEUTRAL
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


_ASCII_LETTERS = re.compile(r"[A-Za-z]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _letter_counts(text: str) -> tuple[int, int, int]:
    """(letters, ASCII letters, CJK letters) of `text`, letters as str.isalpha counts them. The ASCII
    ones (str.isalpha's only ASCII letters are A-Z and a-z) are counted by a regex and only the other
    characters one by one: every sample of every answer passes here, in the teacher's event loop."""
    ascii_letters = sum(map(len, _ASCII_LETTERS.findall(text)))
    others = [ch for ch in _NON_ASCII.findall(text) if ch.isalpha()]
    return ascii_letters + len(others), ascii_letters, sum(map(_is_cjk, others))


def language_matches(r: Rationale, cfg: ValidateConfig) -> RuleResult:
    """A cheap script test, not language identification: among the letters of the prose (str.isalpha,
    which counts ideographs), zh needs a CJK share >= ZH_MIN_CJK_SHARE and en an ASCII share >=
    EN_MIN_ASCII_SHARE. It catches a teacher answering a Chinese clip in English and the reverse,
    which is the failure seen in practice; other languages are not checked."""
    if not cfg.check_language:
        return RuleResult("language_matches", True, "not applied: check_language is off")
    if cfg.language not in ("zh", "en"):
        return RuleResult("language_matches", True, f"not applied: no check for language {cfg.language!r}")
    letters, ascii_letters, cjk = _letter_counts("".join(r.texts()))
    if cfg.language == "zh":
        share = cjk / letters if letters else 0.0
        minimum, script = ZH_MIN_CJK_SHARE, "CJK"
    else:
        share = ascii_letters / letters if letters else 0.0
        minimum, script = EN_MIN_ASCII_SHARE, "ASCII"
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
def no_label_leak(r: Rationale, hinted: bool) -> RuleResult:
    """A hinted rationale must not refer to a label, a ground truth or the hint it was given.

    Only phrases count. A number equal to the gold score is not a leak: the hint carries the
    polarity alone, so a teacher that states the gold score has calibrated well, not copied it.
    """
    if not hinted:
        return RuleResult("no_label_leak", True, "not applied: not hinted")
    text = unicodedata.normalize("NFKC", "\n".join(r.texts()))
    phrase = _LEAK_PHRASES.search(text)
    if phrase:
        return RuleResult("no_label_leak", False, f"mentions {phrase.group(0)!r}")
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
        no_label_leak(r, hinted),
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
