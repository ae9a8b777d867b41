"""Versioned Jinja2 prompts: the DC teacher prompt (en, zh), its hint variant, the student system prompt.

The prompt version is a hash of the template sources actually used, so it changes exactly when a
prompt does; it goes into every cache key and output row. `teacher.prompt_dir` lets a user put
their own templates (same names) in front of the packaged ones: what they override, and nothing
else, changes the version.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

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


def _folders(prompt_dir: Path | None) -> list[Path]:
    return [*([Path(prompt_dir)] if prompt_dir is not None else []), resource_dir("prompts")]


@cache
def _env(prompt_dir: Path | None = None) -> jinja2.Environment:
    # Templates are read once per process, as `prompt_version` hashes them once: a template edited during
    # a run must not be rendered under the version of the one it replaced (and jinja's auto-reload
    # stat()ed both files on every request).
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(folder) for folder in _folders(prompt_dir)]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
        auto_reload=False,
    )


def template_source(name: str, prompt_dir: Path | None = None) -> bytes:
    """The bytes of the template `name` as it will be used: the user's copy if prompt_dir has one."""
    return next(folder / name for folder in _folders(prompt_dir) if (folder / name).is_file()).read_bytes()


def _language(language: str) -> str:
    return "zh" if language.startswith("zh") else "en"


@cache
def prompt_version(language: str, prompt_dir: Path | None = None) -> str:
    """Hash of the templates a teacher request in `language` is built from."""
    lang = _language(language)
    digest = hashlib.sha256()
    for name in (f"system.{lang}.j2", f"teacher_dc.{lang}.j2"):
        digest.update(name.encode())
        digest.update(template_source(name, prompt_dir))
    return f"dc-{lang}-{digest.hexdigest()[:12]}"


def render_teacher(
    text: str, language: str, scale: Scale, hint: str | None = None, prompt_dir: Path | None = None
) -> tuple[str, str]:
    """(system prompt, user instruction) for one clip; `hint` is the gold polarity on hinted re-asks."""
    lang = _language(language)
    if hint and lang == "zh":
        hint = HINT_ZH.get(hint, hint)
    env = _env(prompt_dir)
    system = env.get_template(f"system.{lang}.j2").render().strip()
    user = env.get_template(f"teacher_dc.{lang}.j2").render(text=text, scale=scale, anchors=anchors(scale, lang), hint=hint).strip()
    return system, user


def render_student_system(scale: Scale) -> str:
    return _env().get_template("student_system.j2").render(scale=scale).strip()
