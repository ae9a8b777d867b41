"""`cotforge merge`: the N run folders of a `--shard i/N` split joined into one run, with one manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cotforge.cli.common import out
from cotforge.cli.main import app
from cotforge.cli.stages import stage_exits


@app.command()
def merge(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_1 ... RUN_N", help="The run folders of all N shards (--shard 0/N ... N-1/N).")],
    out_dir: Annotated[Path, typer.Option("--out", help="The merged run folder to write (new, or empty).")],
    check_source: Annotated[bool, typer.Option("--check-source/--no-check-source", help="Check that the shards together hold every clip of the source (reads the label file).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was merged as JSON.")] = False,
) -> None:
    """Union the ledgers, caches and bundles of shard runs by key; shards, eval sets and one manifest in --out.

    Refused: runs made with different configs or prompt versions, a shard missing or given twice, and shards that together miss clips of the source. The shard folders are only read.
    """
    from cotforge.steps.merge import describe, merge_runs

    with stage_exits("the shard folders are untouched; fix the cause and merge again into an empty --out."):
        result = merge_runs(runs, out_dir, check_source=check_source)
    summary = describe(result)
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"merged into {out_dir}: {result.clips} clips")
    table.add_column("run")
    table.add_column("shard")
    table.add_column("clips", justify="right")
    for run in summary["runs"]:
        table.add_row(run["run"], run["shard"], str(run["clips"]))
    out.print(table)
    states = ", ".join(f"{state} {n}" for state, n in summary["states"].items())
    rows = ", ".join(f"{split} {n}" for split, n in sorted(summary["shard_rows"].items())) or "none"
    out.print(f"states: {states}\nshards: {rows} rows in {out_dir}/shards; manifest {out_dir}/manifest.json")
