"""The DC rationale: schema, teacher parsing, student rendering and parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cotforge.dc import (
    MAX_FIELD_CHARS,
    SCHEMA_NAME,
    Calibration,
    Cues,
    Discrimination,
    Rationale,
    StudentError,
    format_score,
    load_schema,
    parse_student,
    parse_teacher,
    render_student,
)
from cotforge.resources import resource_dir
from cotforge.types import Polarity

GOOD: dict[str, Any] = {
    "discrimination": {
        "cues": {
            "text": "The speaker says the plot was 'really fun'.",
            "audio": "Bright, rising pitch and laughter.",
            "visual": "Smiling, leaning forward.",
        },
        "summary": "All three modalities point the same way.",
        "polarity": "positive",
    },
    "calibration": {"reasoning": "Clearly positive but not ecstatic; moderate intensity.", "score": 1.4},
}


def with_field(path: str, value: Any, base: dict[str, Any] = GOOD) -> dict[str, Any]:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed when value is ...)."""
    data = json.loads(json.dumps(base))
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return data


# --- schema -----------------------------------------------------------------------------------------


def walk_objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = [schema] if schema.get("type") == "object" else []
    for sub in schema.get("properties", {}).values():
        found += walk_objects(sub)
    return found


def test_schema_is_draft_2020_12_and_openai_strict_shaped() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # not in [dev] yet
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    objects = walk_objects(schema)
    assert len(objects) == 4
    for obj in objects:
        # OpenAI strict mode: every property required, nothing else allowed, no unsupported bounds.
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    score = schema["properties"]["calibration"]["properties"]["score"]
    assert score == {"type": "number"}


def test_schema_orders_reasoning_before_verdict() -> None:
    schema = load_schema()
    disc = schema["properties"]["discrimination"]["properties"]
    assert list(schema["properties"]) == ["discrimination", "calibration"]
    assert list(disc) == ["cues", "summary", "polarity"]
    assert list(disc["cues"]["properties"]) == ["text", "audio", "visual"]
    assert list(schema["properties"]["calibration"]["properties"]) == ["reasoning", "score"]
    assert disc["polarity"]["enum"] == [p.value for p in Polarity]


def normal_form(node: Any, defs: dict[str, Any]) -> Any:
    """A schema with $refs inlined, annotations dropped and properties as an ordered list."""
    if isinstance(node, list):
        return [normal_form(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return normal_form(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "description", "$schema", "$defs"):
            continue
        if key == "properties":
            out[key] = [(name, normal_form(sub, defs)) for name, sub in value.items()]
        else:
            out[key] = normal_form(value, defs)
    return out


def test_pydantic_models_match_the_schema_file() -> None:
    generated = Rationale.model_json_schema()
    assert normal_form(generated, generated.get("$defs", {})) == normal_form(load_schema(), {})


@pytest.mark.parametrize(
    "sample",
    [
        GOOD,
        with_field("calibration.score", 2),
        with_field("calibration.score", ...),
        with_field("calibration.score", "1.4"),
        with_field("calibration.score", True),
        with_field("discrimination.polarity", "Positive"),
        with_field("discrimination.cues.extra", "x"),
        with_field("extra", 1),
        with_field("discrimination.cues.text", 3),
        with_field("discrimination.summary", "x" * MAX_FIELD_CHARS),
        with_field("calibration.reasoning", "x" * (MAX_FIELD_CHARS + 1)),
    ],
)
def test_schema_and_models_accept_the_same_samples(sample: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    by_schema = jsonschema.Draft202012Validator(load_schema()).is_valid(sample)
    try:
        Rationale.model_validate(sample)
        by_model = True
    except ValidationError:
        by_model = False
    assert by_schema == by_model


def test_load_schema_reads_the_file() -> None:
    path = resource_dir("schemas") / f"{SCHEMA_NAME}.schema.json"
    assert load_schema() == json.loads(path.read_text(encoding="utf-8"))


# --- parse_teacher ----------------------------------------------------------------------------------

EXPECTED = Rationale.model_validate(GOOD)


def test_strict_json_is_not_lenient() -> None:
    result = parse_teacher(json.dumps(GOOD))
    assert result.rationale == EXPECTED
    assert (result.error, result.lenient) == (None, False)


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
        "Here is my analysis:\n" + json.dumps(GOOD) + "\nHope this helps {really}.",
        "Format {like this}, then: " + json.dumps(GOOD),
        str(GOOD),  # Python-style single quotes
        json.dumps(GOOD).replace("Bright,", "Bright,\n\t"),  # raw control chars inside a string
        "[" + json.dumps(GOOD) + "]",
    ],
    ids=["fence", "prose", "braces-in-prose", "python-dict", "control-chars", "in-list"],
)
def test_lenient_recovers_the_object(text: str) -> None:
    result = parse_teacher(text)
    assert result.error is None
    assert result.lenient is True
    assert result.rationale is not None
    assert result.rationale.calibration.score == 1.4


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("Positive", Polarity.POSITIVE),
        ("pos", Polarity.POSITIVE),
        ("NEG", Polarity.NEGATIVE),
        (" neutral. ", Polarity.NEUTRAL),
        ("积极", Polarity.POSITIVE),
    ],
)
def test_polarity_synonyms(word: str, expected: Polarity) -> None:
    result = parse_teacher(json.dumps(with_field("discrimination.polarity", word)))
    assert result.rationale is not None
    assert result.rationale.discrimination.polarity is expected
    assert result.lenient is True


@pytest.mark.parametrize(("text", "value"), [("1.4", 1.4), (" -2 ", -2.0), ("+.5", 0.5)])
def test_numeric_string_score(text: str, value: float) -> None:
    result = parse_teacher(json.dumps(with_field("calibration.score", text)))
    assert result.rationale is not None
    assert result.rationale.calibration.score == value
    assert result.lenient is True


NOT_A_NUMBER = "Input should be a valid number"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no JSON object found"),
        ("I cannot answer that.", "no JSON object found"),
        (json.dumps(GOOD)[:-30], "truncated JSON (unbalanced braces)"),
        ("{not json at all}", "invalid JSON: Expecting property name enclosed in double quotes (char 1)"),
        (json.dumps(with_field("calibration.score", ...)), "missing field calibration.score"),
        (json.dumps(with_field("discrimination.cues.smell", "x")), "unexpected field discrimination.cues.smell"),
        (json.dumps(with_field("calibration.score", "high")), f"invalid field calibration.score: {NOT_A_NUMBER}"),
        (json.dumps(with_field("calibration.score", "nan")), f"invalid field calibration.score: {NOT_A_NUMBER}"),
        (
            json.dumps(with_field("discrimination.polarity", "happy")),
            "invalid field discrimination.polarity: Input should be 'negative', 'neutral' or 'positive'",
        ),
    ],
)
def test_parse_errors_are_specific(text: str, error: str) -> None:
    result = parse_teacher(text)
    assert result.rationale is None
    assert result.error == error
    assert result.lenient is False


def test_truncation_wins_over_an_earlier_stray_object() -> None:
    text = 'Schema: {"score": 1}\n' + json.dumps(GOOD)[:-5]
    assert parse_teacher(text).error == "truncated JSON (unbalanced braces)"


def test_the_last_valid_object_wins() -> None:
    """A placeholder or draft before the answer must not pass for it: the answer comes last."""
    placeholder = with_field("calibration.score", -2.0)
    text = '{"draft": true} ' + json.dumps(placeholder) + " Here is my answer: " + json.dumps(GOOD)
    result = parse_teacher(text)
    assert result.rationale == EXPECTED


def test_a_truncated_object_after_the_answer_does_not_hide_it() -> None:
    text = json.dumps(GOOD) + "\n" + json.dumps(with_field("calibration.score", -2.0))[:60]
    assert parse_teacher(text).rationale == EXPECTED


@pytest.mark.parametrize("cue", ["", "   ", "\n\t"])
def test_an_empty_cue_is_not_an_answer(cue: str) -> None:
    result = parse_teacher(json.dumps(with_field("discrimination.cues.audio", cue)))
    assert result.rationale is None and "discrimination.cues.audio" in result.error
    assert "empty cue" in result.error or "at least 1 character" in result.error


def test_the_schema_asks_for_non_empty_cues() -> None:
    cues = load_schema()["properties"]["discrimination"]["properties"]["cues"]["properties"]
    assert all(spec["minLength"] == 1 for spec in cues.values())


# --- render / parse student ------------------------------------------------------------------------


def test_render_student_exact() -> None:
    assert render_student(EXPECTED) == (
        "<think>\n"
        "<discrimination>Text: The speaker says the plot was 'really fun'.\n"
        "Audio: Bright, rising pitch and laughter.\n"
        "Visual: Smiling, leaning forward.\n"
        "All three modalities point the same way. Polarity: positive</discrimination>\n"
        "<calibration>Clearly positive but not ecstatic; moderate intensity.</calibration>\n"
        "</think>\n"
        "<answer>1.4</answer>"
    )


@pytest.mark.parametrize(
    ("score", "text"),
    [
        (1.4, "1.4"),
        (-2.0, "-2"),
        (0.25, "0.25"),
        (1.23456, "1.235"),
        (-0.0001, "0"),
        (0.0, "0"),
        (100.0, "100"),
        (-2.5, "-2.5"),
    ],
)
def test_format_score(score: float, text: str) -> None:
    assert format_score(score) == text


def test_parse_student_reads_the_rendered_target() -> None:
    parsed = parse_student(render_student(EXPECTED))
    assert parsed.format_ok and parsed.error is None
    assert parsed.polarity is Polarity.POSITIVE
    assert parsed.score == 1.4
    assert parsed.cues == EXPECTED.discrimination.cues
    assert parsed.summary == EXPECTED.discrimination.summary
    assert parsed.calibration == EXPECTED.calibration.reasoning


def test_parse_student_tolerates_whitespace_and_case() -> None:
    text = (
        "\n  <think>\r\n\n<discrimination>\n  Text:  words\n\n  Audio: flat\n Visual: still \n\n"
        "Mixed.\n polarity :  Negative.  </discrimination>\n\n<calibration>\n mild \n</calibration></think>"
        "\n<answer> -0.60 </answer>\n"
    )
    parsed = parse_student(text)
    assert parsed.format_ok, parsed.error
    assert parsed.polarity is Polarity.NEGATIVE
    assert parsed.score == -0.6
    assert parsed.cues == Cues(text="words", audio="flat", visual="still")
    assert (parsed.summary, parsed.calibration) == ("Mixed.", "mild")


def test_free_prose_discrimination_is_in_format_without_cues() -> None:
    text = (
        "<think><discrimination>All good. Polarity: neutral</discrimination>"
        "<calibration>c</calibration></think><answer>0</answer>"
    )
    parsed = parse_student(text)
    assert parsed.format_ok
    assert (parsed.polarity, parsed.score, parsed.discrimination) == (Polarity.NEUTRAL, 0.0, "All good.")
    assert parsed.cues is None and parsed.summary is None


TARGET = render_student(EXPECTED)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", StudentError.MISSING_THINK),
        (TARGET.replace("<think>\n", ""), StudentError.MISSING_THINK),
        (TARGET.replace("</discrimination>", ""), StudentError.MISSING_DISCRIMINATION),
        (TARGET.replace("<calibration>", ""), StudentError.MISSING_CALIBRATION),
        (TARGET.replace("</answer>", ""), StudentError.MISSING_ANSWER),
        (TARGET + "<answer>2</answer>", StudentError.REPEATED_TAG),
        (TARGET + " trailing words", StudentError.BAD_LAYOUT),
        ("Sure! " + TARGET, StudentError.BAD_LAYOUT),
        (
            "<think><calibration>c</calibration><discrimination>d Polarity: positive</discrimination></think>"
            "<answer>1</answer>",
            StudentError.BAD_LAYOUT,
        ),
        (TARGET.replace(" Polarity: positive", ""), StudentError.MISSING_POLARITY),
        (TARGET.replace("Polarity: positive", "Polarity: upbeat"), StudentError.BAD_POLARITY),
        (TARGET.replace("<answer>1.4<", "<answer>about 1.4<"), StudentError.BAD_ANSWER),
        (TARGET.replace("<answer>1.4<", "<answer>nan<"), StudentError.BAD_ANSWER),
        (TARGET.replace("<answer>1.4<", "<answer>1e999<"), StudentError.BAD_ANSWER),
    ],
)
def test_parse_student_errors(text: str, error: StudentError) -> None:
    parsed = parse_student(text)
    assert not parsed.format_ok
    assert parsed.error is error


def test_parse_student_salvages_what_it_can() -> None:
    parsed = parse_student("I think it is positive. <answer>2.2</answer>")
    assert parsed.error is StudentError.MISSING_THINK
    assert parsed.score == 2.2
    broken = parse_student(TARGET.replace("<think>\n", ""))
    assert (broken.polarity, broken.score) == (Polarity.POSITIVE, 1.4)


# --- properties ------------------------------------------------------------------------------------

# Fields may hold any text but the tag brackets; whitespace of every kind included.
prose = st.text(st.characters(exclude_characters="<>", exclude_categories=["Cs"]), max_size=80)
cue = prose.filter(str.strip)
rationales = st.builds(
    Rationale,
    discrimination=st.builds(
        Discrimination,
        cues=st.builds(Cues, text=cue, audio=cue, visual=cue),
        summary=prose,
        polarity=st.sampled_from(Polarity),
    ),
    calibration=st.builds(
        Calibration, reasoning=prose, score=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    ),
)


@settings(max_examples=200, deadline=None)
@given(rationales)
def test_render_then_parse_is_the_identity(r: Rationale) -> None:
    parsed = parse_student(render_student(r))
    d = r.discrimination
    assert parsed.format_ok, parsed.error
    assert parsed.polarity is d.polarity
    assert parsed.score == round(r.calibration.score, 3)
    assert parsed.cues == Cues(**{name: " ".join(value.split()) for name, value in d.cues.model_dump().items()})
    assert parsed.summary == d.summary.strip()
    assert parsed.calibration == r.calibration.reasoning.strip()


# Fragments that reach the parsers' inner branches more often than uniform text does.
fragments = st.lists(
    st.sampled_from(
        [
            "{", "}", "[", "]", '"', "'", ":", ",", "\\", "\n", " ", "1.4", "-", "nan", "1e999", "true",
            '"discrimination"', '"calibration"', '"cues"', '"polarity"', '"score"', '"pos"', "```json",
            "<think>", "</think>", "<discrimination>", "</discrimination>", "<calibration>",
            "</calibration>", "<answer>", "</answer>", "Polarity:", "positive", "Text:", "Audio:", "Visual:",
        ]
    )
    | st.text(max_size=5),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.text() | fragments)
def test_parsers_never_raise(text: str) -> None:
    teacher = parse_teacher(text)
    assert (teacher.rationale is None) != (teacher.error is None)
    student = parse_student(text)
    assert student.format_ok == (student.error is None)


@settings(max_examples=100, deadline=None)
@given(rationales, st.integers(0, 400))
def test_truncated_teacher_json_never_raises(r: Rationale, cut: int) -> None:
    text = r.model_dump_json()
    result = parse_teacher(text[: max(0, len(text) - cut)])
    assert result.rationale is not None or result.error


placeholders = st.sampled_from([
    '{"discrimination": {"cues": {"text": "...", "audio": "...", "visual": "..."}, "summary": "...", "polarity": "neutral"},'
    ' "calibration": {"reasoning": "...", "score": 0.0}}',
    '{"example": true}',
    "```json\n{}\n```",
])
separators = st.sampled_from(["", " ", "\n", "\nFinal answer:\n", "```json\n"])


@settings(max_examples=150, deadline=None)
@given(placeholders, separators, rationales, st.one_of(st.none(), st.integers(1, 200)), st.sampled_from(["", "\n```", " Done."]))
def test_the_answer_after_placeholders_and_before_a_truncated_tail_is_found(
    placeholder: str, separator: str, answer: Rationale, cut: int | None, tail: str
) -> None:
    """Concatenated outputs: whatever comes before the answer, and a cut-off object after it, the answer is read."""
    text = placeholder + separator + answer.model_dump_json() + tail
    if cut is not None:
        cut_object = answer.model_copy(update={"calibration": answer.calibration.model_copy(update={"score": 0.5})}).model_dump_json()
        text += "\n" + cut_object[: max(1, len(cut_object) - cut)]
    result = parse_teacher(text)
    assert result.rationale == answer, result.error
