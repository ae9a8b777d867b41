"""The student's prompts: system (`student_system.j2`), user turn (`student_user.j2`) and hint (`student_hint.j2`).

The system prompt comes from `cotforge.teacher.prompts`, which owns it for the teacher side too;
the user turn and the hint exist only for training and eval, so they are rendered here.
"""

from __future__ import annotations

from functools import cache

import jinja2

from cotforge.resources import resource_dir
from cotforge.teacher.prompts import render_student_system
from cotforge.types import Polarity, Scale

__all__ = ["render_hint", "render_student_system", "render_user"]


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("prompts"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render_user(text: str, language: str) -> str:
    """The text part of the user turn: the transcript, led the way the teacher prompt leads it."""
    return _env().get_template("student_user.j2").render(text=text, language=language or "en").strip()


def render_hint(polarity: Polarity | str, language: str) -> str:
    """The directional hint for Hint-GRPO: the gold polarity in words, never a score."""
    return _env().get_template("student_hint.j2").render(polarity=Polarity(polarity).value, language=language or "en").strip()


def system_prompt(scale: Scale) -> str:
    return render_student_system(scale)
