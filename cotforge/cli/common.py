"""What every command shares: the consoles, the error exit, and loading a config from YAML, RUN and --set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

out = Console()
err = Console(stderr=True)

from cotforge.types import DATASET_NAMES as DATASETS  # noqa: E402

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: --set teacher.concurrency=64.")]


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_config(
    pipeline: Path | None, run: Path | None, sets: list[str], options: dict[str, object] | None = None
):
    """A PipelineConfig from a YAML file, or from RUN/config.yaml, plus options and --set overrides."""
    from cotforge.config import PipelineConfig, apply_overrides, format_validation_error, load_pipeline
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


