"""The Discrimination-Calibration (DC) rationale: parse teacher output, render and parse student text.

A teacher answers in JSON (`schemas/dc_rationale.schema.json`): a macro judgement (cues per modality,
a summary, a polarity), then a fine-grained calibration (reasoning, an intensity score). The student
is trained on a tagged rendering of it, and the same `parse_student` reads student outputs for SFT
checks, RL rewards and eval, so teacher data, targets and rewards share one definition.

Both parsers return values, never raise: a clip whose output cannot be read is recorded with the
reason, and one bad sample must not stop a run or an RL step.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cotforge import resources
from cotforge.types import Polarity

MAX_FIELD_CHARS = 2000
"""Cap on every string field, in the schema too: it stops a runaway generation, not a long answer."""


FieldText = Annotated[str, Field(max_length=MAX_FIELD_CHARS)]
CueText = Annotated[str, Field(min_length=1, max_length=MAX_FIELD_CHARS)]


class _SchemaModel(BaseModel):
    # extra="forbid" is the schema's additionalProperties: false.
    model_config = ConfigDict(extra="forbid", frozen=True)


NO_CUE = "no clear cue"
"""What the prompt asks a teacher to write for a modality that shows nothing: a cue is never empty."""


class Cues(_SchemaModel):
    """What each modality shows, written before any verdict; an empty cue is not an answer."""

    text: CueText
    audio: CueText
    visual: CueText

    @field_validator("text", "audio", "visual")
    @classmethod
    def _said_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"empty cue (the prompt asks for {NO_CUE!r} when a modality shows none)")
        return value


class Discrimination(_SchemaModel):
    """The macro judgement; field order is the decoding order (reasoning first, polarity last)."""

    cues: Cues
    summary: FieldText
    polarity: Polarity


class Calibration(_SchemaModel):
    """The fine-grained intensity; the score's range depends on the dataset and is checked by validate."""

    reasoning: FieldText
    # strict: a JSON string "1.4" or a bool is not a score; parse_teacher converts strings leniently
    # and says so, instead of pydantic coercing them silently.
    score: float = Field(strict=True, allow_inf_nan=False)


class Rationale(_SchemaModel):
    discrimination: Discrimination
    calibration: Calibration

    def texts(self) -> tuple[str, ...]:
        """Every prose field, in decoding order: what length and language checks look at."""
        d = self.discrimination
        return (d.cues.text, d.cues.audio, d.cues.visual, d.summary, self.calibration.reasoning)


SCHEMA_NAME = "dc_rationale"


def load_schema() -> dict[str, Any]:
    """The teacher's JSON Schema (`schemas/dc_rationale.schema.json`, found in a checkout or in the
    installed package by `cotforge.resources`). Shared and cached: copy it before editing."""
    return resources.load_schema(SCHEMA_NAME)


_POLARITY_WORDS: dict[str, Polarity] = {
    **dict.fromkeys(("positive", "pos", "积极", "正面", "正向"), Polarity.POSITIVE),
    **dict.fromkeys(("negative", "neg", "消极", "负面", "负向"), Polarity.NEGATIVE),
    **dict.fromkeys(("neutral", "neu", "中性", "中立"), Polarity.NEUTRAL),
}
"""Spellings seen from unconstrained teachers and students (the zh ones from Chinese prompts)."""


def _polarity_word(word: str) -> Polarity | None:
    return _POLARITY_WORDS.get(word.strip().rstrip(".").lower())


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _number(text: str) -> float | None:
    """A finite number written in plain ASCII decimal, or None (no 'nan', no '1_000', no digits of other scripts)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def format_score(score: float) -> str:
    """A score as the student writes it: at most 3 decimals, no trailing zeros, never '-0'."""
    text = f"{score:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# --- teacher output -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A teacher answer read into a Rationale, or the reason it could not be.

    `lenient` is True when the rationale was only recovered by the lenient rules (prose around the
    JSON, code fences, Python-style quotes, raw control characters, polarity synonyms, numeric
    strings); validation prefers candidates that needed none of them.
    """

    rationale: Rationale | None
    error: str | None
    lenient: bool


def _validation_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        message = f"missing field {where}"
    elif first["type"] == "extra_forbidden":
        message = f"unexpected field {where}"
    else:
        message = f"invalid field {where}: {first['msg']}"
    return message if len(errors) == 1 else f"{message} (and {len(errors) - 1} more)"


def _rationale(obj: dict[str, Any]) -> tuple[Rationale | None, str | None]:
    try:
        return Rationale.model_validate(obj), None
    except ValidationError as exc:
        return None, _validation_error(exc)


def _object_spans(text: str) -> tuple[list[str], bool]:
    """The top-level `{...}` spans of a text, and whether the last `{` never closed.

    Braces inside quoted strings (either quote, since Python-style dicts are accepted) do not count.
    Quotes only matter inside a span, so apostrophes in the prose around the JSON are harmless.
    """
    spans: list[str] = []
    depth, start, quote, escaped = 0, 0, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif depth == 0:
            continue
        elif ch in "\"'":
            quote = ch
        elif ch == "}":
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans, depth > 0


def _load_object(span: str) -> tuple[dict[str, Any] | None, str | None]:
    """A span read as JSON (raw control characters allowed), else as a Python literal."""
    try:
        value = json.loads(span, strict=False)
    except (ValueError, RecursionError) as exc:
        # ValueError beyond JSONDecodeError: e.g. an integer longer than Python's digit limit.
        detail = f"{exc.msg} (char {exc.pos})" if isinstance(exc, json.JSONDecodeError) else str(exc)
        try:
            value = ast.literal_eval(span)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None, f"invalid JSON: {detail}"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None


def _normalise(obj: dict[str, Any]) -> dict[str, Any]:
    """Polarity synonyms and numeric-string scores turned into schema values; a new dict."""
    disc, cal = obj.get("discrimination"), obj.get("calibration")
    if isinstance(disc, dict) and isinstance(disc.get("polarity"), str):
        polarity = _polarity_word(disc["polarity"])
        if polarity is not None:
            obj = {**obj, "discrimination": {**disc, "polarity": polarity.value}}
    if isinstance(cal, dict) and isinstance(cal.get("score"), str):
        score = _number(cal["score"])
        if score is not None:
            obj = {**obj, "calibration": {**cal, "score": score}}
    return obj


def parse_teacher(text: str) -> ParseResult:
    """Read a teacher answer; never raises.

    Strict first (the whole text is the JSON the schema describes). Otherwise every top-level object
    in the text is read leniently, and the LAST one that makes a valid Rationale wins: a teacher that
    writes an example or a draft before its answer ends with the answer, so a placeholder first
    object must not pass for it. A truncated object after a complete one does not count (the last
    complete answer stands). When none is valid, the error names the most telling problem: a
    truncated object (a token limit cut the answer), else the first invalid field of an object that
    did read, else the first JSON error.
    """
    try:
        strict = json.loads(text)
    except (ValueError, RecursionError):
        strict = None
    if isinstance(strict, dict):
        rationale, _ = _rationale(strict)
        if rationale is not None:
            return ParseResult(rationale, None, lenient=False)

    spans, truncated = _object_spans(text)
    field_error: str | None = None
    json_error: str | None = None
    for span in reversed(spans):
        obj, load_error = _load_object(span)
        if obj is None:
            json_error = load_error
            continue
        rationale, invalid = _rationale(_normalise(obj))
        if rationale is not None:
            return ParseResult(rationale, None, lenient=True)
        field_error = invalid
    if truncated:
        return ParseResult(None, "truncated JSON (unbalanced braces)", lenient=False)
    return ParseResult(None, field_error or json_error or "no JSON object found", lenient=False)


# --- student text ---------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    # A cue is one line of the rendered target, so that the parser can split the cues on newlines.
    return " ".join(text.split())


def render_student(r: Rationale) -> str:
    """The student's target text for a rationale.

    Cues are folded onto one line each and the other fields stripped; `parse_student` recovers every
    field in that form, the polarity and the score (to 3 decimals), as long as no field contains the
    tags themselves.
    """
    d, c = r.discrimination, r.calibration
    prose = (
        f"Text: {_one_line(d.cues.text)}\nAudio: {_one_line(d.cues.audio)}\n"
        f"Visual: {_one_line(d.cues.visual)}\n{d.summary.strip()}"
    )
    return (
        f"<think>\n<discrimination>{prose} Polarity: {d.polarity.value}</discrimination>\n"
        f"<calibration>{c.reasoning.strip()}</calibration>\n</think>\n"
        f"<answer>{format_score(c.score)}</answer>"
    )


class StudentError(StrEnum):
    """Why a student text is not in the DC format; a fixed set, so that RL and eval can count them."""

    MISSING_THINK = "missing <think> block"
    MISSING_DISCRIMINATION = "missing <discrimination> block"
    MISSING_CALIBRATION = "missing <calibration> block"
    MISSING_ANSWER = "missing <answer> block"
    REPEATED_TAG = "a tag appears more than once"
    BAD_LAYOUT = "blocks out of order or text outside them"
    MISSING_POLARITY = "no 'Polarity: ...' in <discrimination>"
    BAD_POLARITY = "unknown polarity word"
    BAD_ANSWER = "answer is not a number"


_TAG_ERRORS = {
    "think": StudentError.MISSING_THINK,
    "discrimination": StudentError.MISSING_DISCRIMINATION,
    "calibration": StudentError.MISSING_CALIBRATION,
    "answer": StudentError.MISSING_ANSWER,
}
_LAYOUT = re.compile(
    r"\s*<think>\s*<discrimination>.*</discrimination>\s*<calibration>.*</calibration>\s*</think>"
    r"\s*<answer>.*</answer>\s*",
    re.S,
)
# Greedy prefix: the last "Polarity:" wins, so a summary that quotes one does not shadow the verdict.
_POLARITY_CLAUSE = re.compile(r"(?s:.*)(?P<clause>Polarity\s*[:：]\s*(?P<word>\w+)\.?)", re.I)
_CUE_LINES = re.compile(
    r"Text:[ \t]*(?P<text>[^\n]*?)[ \t]*\n\s*Audio:[ \t]*(?P<audio>[^\n]*?)[ \t]*\n"
    r"\s*Visual:[ \t]*(?P<visual>[^\n]*?)[ \t]*(?:\n\s*(?P<summary>.*))?",
    re.S,
)


@dataclass(frozen=True, slots=True)
class StudentParse:
    """What could be read from a student text.

    Fields are filled whenever their block is readable, even when the whole is not in format (`error`
    says why), so that a reward or an eval policy can still use a score written after a broken think.
    `cues` and `summary` are None when the discrimination is not in the rendered
    `Text:/Audio:/Visual:` layout; that alone is not a format error.
    """

    format_ok: bool
    error: StudentError | None
    polarity: Polarity | None
    score: float | None
    discrimination: str | None
    calibration: str | None
    cues: Cues | None
    summary: str | None


def _tag_error(text: str) -> StudentError | None:
    for tag, missing in _TAG_ERRORS.items():
        opened, closed = text.count(f"<{tag}>"), text.count(f"</{tag}>")
        if opened == 0 or closed == 0:
            return missing
        if opened > 1 or closed > 1:
            return StudentError.REPEATED_TAG
    return None if _LAYOUT.fullmatch(text) else StudentError.BAD_LAYOUT


def _block(text: str, tag: str) -> str | None:
    """The first `<tag>...</tag>` content; str.find keeps it linear on texts full of stray tags."""
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>", start)
    if start < 0 or end < 0:
        return None
    return text[start + len(tag) + 2 : end].strip()


def _split_polarity(disc: str) -> tuple[str, Polarity | None, StudentError | None]:
    """The discrimination without its polarity clause, the polarity, and what is wrong with it."""
    clause = _POLARITY_CLAUSE.match(disc)
    if clause is None:
        return disc, None, StudentError.MISSING_POLARITY
    polarity = _polarity_word(clause["word"])
    prose = (disc[: clause.start("clause")] + disc[clause.end("clause") :]).strip()
    return prose, polarity, None if polarity else StudentError.BAD_POLARITY


def _split_cues(prose: str) -> tuple[Cues | None, str | None]:
    lines = _CUE_LINES.fullmatch(prose)
    if lines is None:
        return None, None
    # model_construct: a student's cues are not bound by the teacher schema's length caps.
    cues = Cues.model_construct(text=lines["text"], audio=lines["audio"], visual=lines["visual"])
    return cues, (lines["summary"] or "").strip()


def parse_student(text: str) -> StudentParse:
    """Read a student text in the `render_student` format; never raises. Whitespace between and
    inside blocks is free; tags must each appear once, in order, with nothing outside them."""
    disc, cal, answer = (_block(text, tag) for tag in ("discrimination", "calibration", "answer"))
    prose: str | None = None
    polarity: Polarity | None = None
    polarity_error: StudentError | None = None
    cues: Cues | None = None
    summary: str | None = None
    if disc is not None:
        prose, polarity, polarity_error = _split_polarity(disc)
        cues, summary = _split_cues(prose)
    score = None if answer is None else _number(answer)
    answer_error = StudentError.BAD_ANSWER if answer is not None and score is None else None
    error = _tag_error(text) or polarity_error or answer_error
    return StudentParse(
        format_ok=error is None,
        error=error,
        polarity=polarity,
        score=score,
        discrimination=prose,
        calibration=cal,
        cues=cues,
        summary=summary,
    )
