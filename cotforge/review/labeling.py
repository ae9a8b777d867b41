"""The review form, both ways: a shard row -> a task with the teacher's answer pre-filled, and a
reviewer's result list -> plain fields.

The form (`labeling_config.xml`, next to this file) uses only documented tags and attributes; its
control names are defined here once, for the pre-fill and for reading results back. The rationale
is shown and pre-filled in the student target's own layout (`Text:`/`Audio:`/`Visual:` lines, then
the summary), read from the target with `dc.parse_student`, so that an edited text goes back into a
`Rationale` through the same parser and `dc.render_student` renders the reviewed target.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from pydantic import ValidationError

from cotforge.dc import (
    Calibration,
    Cues,
    Discrimination,
    Rationale,
    format_score,
    parse_student,
)
from cotforge.types import Polarity, Scale

CONFIG_FILE = Path(__file__).with_name("labeling_config.xml")
MODEL_VERSION = "cotforge-teacher"
"""The pre-fill's model version; the project's must match, or Label Studio hides the pre-fill."""
VERDICTS = ("accept", "edit", "reject")
POLARITIES = tuple(p.value for p in Polarity)


@cache
def _template() -> jinja2.Template:
    return jinja2.Template(CONFIG_FILE.read_text(encoding="utf-8"), undefined=jinja2.StrictUndefined, autoescape=True)


def label_config(scale: Scale, show_gold: bool) -> str:
    """The form for a corpus: the Number control bounded by the corpus's label range."""
    step = 0.1 if scale.high - scale.low > 2 else 0.05
    return _template().render(low=format_score(scale.low), high=format_score(scale.high), step=step, show_gold=show_gold)


def config_shows_gold(config: str) -> bool:
    return "$gold_score" in config


def rationale_texts(target: str) -> tuple[str, str]:
    """(discrimination prose without its polarity clause, calibration reasoning) of a rendered target."""
    parsed = parse_student(target)
    return parsed.discrimination or "", parsed.calibration or ""


def row_hash(row: dict[str, Any]) -> str:
    """What a reviewer judges of a row: its target and gold label. A row re-exported with another
    answer under the same id gets another hash, so a re-push can tell it apart from a duplicate."""
    return hashlib.sha256(f"{row['target']}\x00{row['label']!r}".encode()).hexdigest()[:16]


def task(row: dict[str, Any], video: str, reason: str, show_gold: bool) -> dict[str, Any]:
    """One Label Studio task for a shard row, with the teacher's answer as the pre-fill."""
    disc, cal = rationale_texts(row["target"])
    data = {
        "row_id": row["id"], "row_hash": row_hash(row), "key": row["key"], "dataset": row["dataset"],
        "split": row["split"], "clip_id": row["clip_id"], "video": video, "transcript": row["text"],
        "rationale_discrimination": disc, "rationale_calibration": cal,
        "teacher_score": format_score(row["teacher_score"]), "teacher_polarity": row["teacher_polarity"],
        "pick_reason": reason,
    }
    if show_gold:
        data["gold_score"] = format_score(row["label"])
    return {"data": data, "predictions": [prefill(disc, cal, row["teacher_polarity"], row["teacher_score"])]}


def prefill(disc: str, cal: str, polarity: str, score: float) -> dict[str, Any]:
    """The teacher's answer in the form's controls; verdict and rating stay empty: the reviewer must set them."""
    return {
        "model_version": MODEL_VERSION,
        "result": [
            {"from_name": "edited_disc", "to_name": "disc", "type": "textarea", "value": {"text": [disc]}},
            {"from_name": "edited_cal", "to_name": "cal", "type": "textarea", "value": {"text": [cal]}},
            {"from_name": "polarity", "to_name": "transcript", "type": "choices", "value": {"choices": [polarity]}},
            {"from_name": "score", "to_name": "transcript", "type": "number", "value": {"number": score}},
        ],
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """A reviewer's answers as plain fields (None where a control was left empty)."""

    verdict: str | None = None
    discrimination: str | None = None
    calibration: str | None = None
    rating: int | None = None
    polarity: str | None = None
    score: float | None = None
    comment: str | None = None


def read_result(result: list[dict[str, Any]]) -> Answer:
    """An annotation's result list (Label Studio's export shape) -> Answer."""
    fields: dict[str, Any] = {}
    for item in result or []:
        name, value = item.get("from_name"), item.get("value") or {}
        if name in ("verdict", "polarity"):
            choices = value.get("choices") or []
            fields[name] = choices[0] if choices else None
        elif name in ("edited_disc", "edited_cal", "comment"):
            text = "\n".join(value.get("text") or [])
            fields[{"edited_disc": "discrimination", "edited_cal": "calibration"}.get(name, name)] = text
        elif name == "quality":
            fields["rating"] = value.get("rating")
        elif name == "score":
            fields["score"] = value.get("number")
    return Answer(**fields)


def edited_rationale(disc: str, cal: str, polarity: str, score: float) -> tuple[Rationale | None, str | None]:
    """A reviewer's edited texts with the corrected polarity and score as a Rationale, or why not.

    The texts are read by the student parser, the one definition of the target layout: the
    discrimination must keep its `Text:`, `Audio:` and `Visual:` lines, and no text may hold the tags.
    """
    text = (f"<think>\n<discrimination>{disc.strip()} Polarity: {polarity}</discrimination>\n"
            f"<calibration>{cal.strip()}</calibration>\n</think>\n<answer>{format_score(score)}</answer>")
    parsed = parse_student(text)
    if not parsed.format_ok:
        return None, f"edited text breaks the target format ({parsed.error.value if parsed.error else 'unreadable'})"
    if parsed.cues is None:
        return None, "edited discrimination lost its 'Text:', 'Audio:' and 'Visual:' lines"
    try:
        rationale = Rationale(
            discrimination=Discrimination(cues=Cues(text=parsed.cues.text, audio=parsed.cues.audio, visual=parsed.cues.visual),
                                          summary=parsed.summary or "", polarity=Polarity(polarity)),
            calibration=Calibration(reasoning=parsed.calibration or "", score=float(score)),
        )
    except ValidationError as exc:
        return None, f"edited rationale is not valid: {exc.errors()[0]['msg']}"
    return rationale, None
