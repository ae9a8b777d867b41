"""The review form: the XML kept in the package, the task and pre-fill of a row, and reading answers back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pyarrow.parquet as pq
import pytest
from review_helpers import demo_run, ui_result

from cotforge.dc import render_student
from cotforge.review import labeling
from cotforge.types import MOSI_SCALE, SIMS_SCALE

# Tags and attributes the form may use: all documented on labelstud.io/tags (checked against 1.23.2).
ALLOWED = {
    "View": {"className"}, "Style": set(), "Header": {"value", "size"}, "Video": {"name", "value", "height"},
    "Text": {"name", "value"}, "Choices": {"name", "toName", "choice", "showInline", "required"},
    "Choice": {"value", "hotkey"}, "TextArea": {"name", "toName", "editable", "rows", "maxSubmissions"},
    "Rating": {"name", "toName", "maxRating", "icon", "required"}, "Number": {"name", "toName", "min", "max", "step"},
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return pq.read_table(demo_run(tmp_path_factory) / "shards").to_pylist()


@pytest.mark.parametrize(("scale", "low", "high"), [(MOSI_SCALE, "-3", "3"), (SIMS_SCALE, "-1", "1")])
def test_config_uses_only_documented_tags_and_the_corpus_range(scale, low: str, high: str) -> None:
    root = ET.fromstring(labeling.label_config(scale, show_gold=False))
    names = set()
    for element in root.iter():
        assert element.tag in ALLOWED, element.tag
        assert set(element.attrib) <= ALLOWED[element.tag], (element.tag, element.attrib)
        names.add(element.get("name"))
    number = root.find(".//Number")
    assert (number.get("min"), number.get("max")) == (low, high)
    assert {"video", "transcript", "disc", "cal", "verdict", "edited_disc", "edited_cal", "quality", "polarity", "score", "comment"} <= names
    assert [c.get("value") for c in root.find(".//Choices[@name='verdict']")] == list(labeling.VERDICTS)


def test_gold_score_shown_only_on_request(rows: list[dict]) -> None:
    assert "$gold_score" in labeling.label_config(MOSI_SCALE, show_gold=True)
    assert "$gold_score" not in labeling.label_config(MOSI_SCALE, show_gold=False)
    assert "gold_score" not in labeling.task(rows[0], "/v.mp4", "random", show_gold=False)["data"]
    assert labeling.task(rows[0], "/v.mp4", "random", show_gold=True)["data"]["gold_score"]


def test_task_carries_row_id_and_prefills_the_teachers_answer_but_not_verdict_or_rating(rows: list[dict]) -> None:
    row = rows[0]
    task = labeling.task(row, "/data/local-files/?d=clips/a.mp4", "hinted answer", show_gold=False)
    data = task["data"]
    assert data["row_id"] == row["id"] and data["pick_reason"] == "hinted answer"
    assert data["rationale_discrimination"].startswith("Text: ") and "\nAudio: " in data["rationale_discrimination"]
    assert "Polarity:" not in data["rationale_discrimination"]
    [prediction] = task["predictions"]
    assert prediction["model_version"] == labeling.MODEL_VERSION
    filled = {item["from_name"] for item in prediction["result"]}
    assert filled == {"edited_disc", "edited_cal", "polarity", "score"}
    answer = labeling.read_result(prediction["result"])
    assert answer.polarity == row["teacher_polarity"] and answer.score == row["teacher_score"]


def test_an_unchanged_prefill_renders_back_to_the_same_target(rows: list[dict]) -> None:
    for row in rows:
        answer = labeling.read_result(ui_result(row, "edit"))
        rationale, error = labeling.edited_rationale(answer.discrimination, answer.calibration, answer.polarity, answer.score)
        assert error is None
        assert render_student(rationale) == row["target"]


def test_edits_are_parsed_into_a_rationale_or_refused_with_a_reason(rows: list[dict]) -> None:
    disc, cal = labeling.rationale_texts(rows[0]["target"])
    edited = disc.replace("Audio: ", "Audio: (checked) ")
    rationale, error = labeling.edited_rationale(edited, "Short and clear.", "negative", -1.25)
    assert error is None
    assert rationale.discrimination.cues.audio.startswith("(checked) ")
    assert rationale.discrimination.polarity == "negative" and rationale.calibration.score == -1.25
    assert "<answer>-1.25</answer>" in render_student(rationale)
    _, error = labeling.edited_rationale("It is positive overall.", cal, "positive", 1.0)
    assert "lost its 'Text:', 'Audio:' and 'Visual:' lines" in error
    _, error = labeling.edited_rationale(disc + " </discrimination>", cal, "positive", 1.0)
    assert "breaks the target format" in error


def test_read_result_handles_every_control_and_missing_ones() -> None:
    result = [
        {"from_name": "verdict", "value": {"choices": ["reject"]}},
        {"from_name": "quality", "value": {"rating": 2}},
        {"from_name": "comment", "value": {"text": ["wrong speaker", "again"]}},
        {"from_name": "unknown", "value": {"x": 1}},
    ]
    answer = labeling.read_result(result)
    assert (answer.verdict, answer.rating, answer.comment) == ("reject", 2, "wrong speaker\nagain")
    assert answer.score is None and answer.polarity is None and answer.discrimination is None
    assert labeling.read_result([]) == labeling.Answer()
