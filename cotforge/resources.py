"""Where the versioned prompt templates and JSON Schemas are, in a checkout and in an installed wheel."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent


def resource_dir(kind: str) -> Path:
    """`prompts`, `schemas` or `pipelines`: the repository folder when running from a checkout, else the packaged copy."""
    local = _REPO / kind
    if local.is_dir():
        return local
    return Path(str(resources.files(f"cotforge._{kind}")))


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema from schemas/, e.g. load_schema("dc_rationale")."""
    return json.loads((resource_dir("schemas") / f"{name}.schema.json").read_text(encoding="utf-8"))
