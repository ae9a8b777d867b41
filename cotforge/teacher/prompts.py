"""Versioned Jinja2 prompts: the DC teacher prompt (en, zh), its hint variant, the student system prompt.

The prompt version is a hash of the template sources, so it changes exactly when a prompt does;
it goes into every cache key and output row.
"""

from __future__ import annotations

import hashlib
from functools import cache

import jinja2

from cotforge.resources import resource_dir
from cotforge.types import Scale

ANCHOR_WORDS = {
    ("en", 7): ("strongly negative", "negative", "weakly negative", "neutral", "weakly positive", "positive", "strongly positive"),
    ("en", 5): ("strongly negative", "weakly negative", "neutral", "weakly positive", "strongly positive"),
    ("zh", 7): ("强烈消极", "消极", "略微消极", "中性", "略微积极", "积极", "强烈积极"),
    ("zh", 5): ("强烈消极", "略微消极", "中性", "略微积极", "强烈积极"),
}
"""Anchor meanings spread evenly over the scale: 7 points on MOSI-like scales ([-3, 3] gives the
integers), 5 on SIMS-like ones ([-1, 1] gives steps of 0.5)."""


def anchors(scale: Scale, lang: str) -> list[tuple[float, str]]:
    words = ANCHOR_WORDS[(lang, 7 if scale.metrics == "mosi" else 5)]
    step = (scale.high - scale.low) / (len(words) - 1)
    return [(round(scale.low + k * step, 3) + 0.0, word) for k, word in enumerate(words)]


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


def render_teacher(text: str, language: str, scale: Scale, hint: str | None = None) -> tuple[str, str]:
    """(system prompt, user instruction) for one clip; `hint` is the gold polarity on hinted re-asks."""
    lang = _language(language)
    if hint and lang == "zh":
        hint = HINT_ZH.get(hint, hint)
    system = _env().get_template(f"system.{lang}.j2").render().strip()
    user = _env().get_template(f"teacher_dc.{lang}.j2").render(text=text, scale=scale, anchors=anchors(scale, lang), hint=hint).strip()
    return system, user


def render_student_system(scale: Scale) -> str:
    return _env().get_template("student_system.j2").render(scale=scale).strip()
