"""What every command shares: the consoles, the error exit, and loading a config from YAML, RUN and --set."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape

from cotforge.config import PipelineConfig, SourceKind

out = Console()
err = Console(stderr=True)

from cotforge.types import DATASET_NAMES as DATASETS  # noqa: E402

DatasetChoice = enum.Enum("DatasetChoice", {name: name for name in SourceKind.__args__}, type=str)
"""`--dataset` as a choice: the registry's datasets plus `manifest` (config.SourceKind)."""

CONFIG_OPTIONS: dict[str, str] = {}
"""Every option made by `config_option`: flag -> config path (a test checks them against the models)."""


def config_field(path: str):  # noqa: ANN201 - a pydantic FieldInfo
    """The pydantic field of a dotted config path, e.g. "media.fps"."""
    model: type[BaseModel] = PipelineConfig
    *sections, name = path.split(".")
    for section in sections:
        model = model.model_fields[section if section != "validate" else "validate_"].annotation
    return model.model_fields[name]


def field_default(path: str) -> Any:
    info = config_field(path)
    if info.default_factory is not None:
        return info.default_factory()
    return None if info.default is PydanticUndefined else info.default


def config_option(path: str, flag: str) -> Any:
    """A typer option that sets a config field; its help is the field's description and its default."""
    info = config_field(path)
    default = field_default(path)
    shown = f" [{', '.join(map(str, default)) if isinstance(default, list) else default}]" if default is not None else ""
    CONFIG_OPTIONS[flag] = path
    return typer.Option(flag, help=escape(f"{(info.description or path).rstrip('.')}{shown}. Sets {path}."), show_default=False)


def overrides(options: dict[str, object], sets: list[str]) -> dict[str, Any]:
    """A nested config dict from `{path: value}` options (None = not given), then `--set` assignments."""
    from cotforge.config import apply_overrides

    data: dict[str, Any] = {}
    for path, value in options.items():
        if value is None:
            continue
        node = data
        *sections, name = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value.value if isinstance(value, enum.Enum) else value
    try:
        return apply_overrides(data, sets)
    except ValueError as exc:
        fail(str(exc))
        raise

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: --set teacher.concurrency=64.")]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_config(
    pipeline: Path | None, run: Path | None, sets: list[str], options: dict[str, object] | None = None
):
    """A PipelineConfig from a YAML file, or from RUN/config.yaml, plus options and --set overrides."""
    from cotforge.config import apply_overrides, format_validation_error, load_pipeline
    from cotforge.store.run import RunDir

    assignments = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (options or {}).items() if v is not None]
    assignments += list(sets)
    try:
        if pipeline is not None:
            cfg = load_pipeline(pipeline, assignments)
        else:
            saved = RunDir(run).load_config() if run is not None else {}
            if not saved:
                fail(f"{run} has no config.yaml; give a pipeline file (PIPELINE.yaml) or run `cotforge bundle` first")
            saved.pop("run", None)
            cfg = PipelineConfig.model_validate(apply_overrides(saved, assignments))
    except ValidationError as exc:
        fail(format_validation_error(exc, f"{run}/config.yaml"))
    except ValueError as exc:
        fail(str(exc))
    if run is not None:
        cfg.run = run
    if cfg.run is None:
        cfg.run = Path("runs") / cfg.name
    return cfg


