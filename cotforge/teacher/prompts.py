"""Versioned Jinja2 prompts: the DC teacher prompt (en, zh), its hint variant, the student system prompt.

The prompt version is a hash of the template sources, so it changes exactly when a prompt does;
it goes into every cache key and output row.
"""

from __future__ import annotations

import hashlib
from functools import cache

import jinja2

from cotforge.resources import resource_dir
from cotforge.types import SCALES, LabelScale

ANCHORS = {
    ("en", 3.0): [(-3, "strongly negative"), (-2, "negative"), (-1, "weakly negative"), (0, "neutral"),
                  (1, "weakly positive"), (2, "positive"), (3, "strongly positive")],
    ("en", 1.0): [(-1, "strongly negative"), (-0.5, "weakly negative"), (0, "neutral"), (0.5, "weakly positive"),
                  (1, "strongly positive")],
    ("zh", 3.0): [(-3, "强烈消极"), (-2, "消极"), (-1, "略微消极"), (0, "中性"), (1, "略微积极"), (2, "积极"), (3, "强烈积极")],
    ("zh", 1.0): [(-1, "强烈消极"), (-0.5, "略微消极"), (0, "中性"), (0.5, "略微积极"), (1, "强烈积极")],
}

HINT_ZH = {"positive": "积极（positive）", "negative": "消极（negative）", "neutral": "中性（neutral）"}


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("prompts"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def _language(language: str) -> str:
    return "zh" if language.startswith("zh") else "en"


@cache
def prompt_version(language: str) -> str:
    """Hash of the templates a teacher request in `language` is built from."""
    lang = _language(language)
    digest = hashlib.sha256()
    for name in (f"system.{lang}.j2", f"teacher_dc.{lang}.j2"):
        digest.update(name.encode())
        digest.update((resource_dir("prompts") / name).read_bytes())
    return f"dc-{lang}-{digest.hexdigest()[:12]}"


def scale_for(dataset: str) -> LabelScale:
    return SCALES.get(dataset, SCALES["mosi"])


def render_teacher(text: str, language: str, scale: LabelScale, hint: str | None = None) -> tuple[str, str]:
    """(system prompt, user instruction) for one clip; `hint` is the gold polarity on hinted re-asks."""
    lang = _language(language)
    anchors = ANCHORS[(lang, 3.0 if scale.high > 1 else 1.0)]
    if hint and lang == "zh":
        hint = HINT_ZH.get(hint, hint)
    system = _env().get_template(f"system.{lang}.j2").render().strip()
    user = _env().get_template(f"teacher_dc.{lang}.j2").render(text=text, scale=scale, anchors=anchors, hint=hint).strip()
    return system, user


def render_student_system(scale: LabelScale) -> str:
    return _env().get_template("student_system.j2").render(scale=scale).strip()
