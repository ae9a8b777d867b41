"""The `cotforge` command line. Thin on purpose: it parses options, then calls the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cotforge import __version__

app = typer.Typer(
    name="cotforge",
    help="Turn multimodal sentiment datasets (CMU-MOSI, CMU-MOSEI, CH-SIMS) into Discrimination-Calibration "
    "chain-of-thought corpora.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

DATASETS = ["mosi", "mosei", "sims", "simsv2"]


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"cotforge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """cotforge: DC chain-of-thought corpora from multimodal sentiment datasets."""


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into (label.csv + Raw/).")],
    dataset: Annotated[str, typer.Option(help="Layout and language to imitate: mosi, mosei, sims or simsv2.")] = "mosi",
    clips: Annotated[int, typer.Option(min=1, help="Number of clips (label rows).")] = 24,
    corrupt: Annotated[int, typer.Option(min=0, help="How many clips to damage (truncated, no audio, no video, zero bytes, missing).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same dataset.")] = 0,
    full_videos: Annotated[bool, typer.Option("--full-videos", help="MOSEI only: full videos + segment times, as CMU ships them.")] = False,
    min_seconds: Annotated[float, typer.Option(min=0.5, help="Shortest clip, seconds.")] = 1.0,
    max_seconds: Annotated[float, typer.Option(min=0.5, help="Longest clip, seconds.")] = 15.0,
) -> None:
    """Write a small dataset in the real MMSA layout with generated H.264/AAC clips (no download)."""
    from cotforge.executors.progress import make_progress
    from cotforge.sources.demo import make_demo_dataset

    if dataset not in DATASETS:
        fail(f"--dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    with make_progress() as progress:
        task = progress.add_task("demo-data", total=clips, info=dataset)
        try:
            made = make_demo_dataset(
                out_dir, dataset, clips, corrupt=corrupt, seed=seed, full_videos=full_videos,
                min_seconds=min_seconds, max_seconds=max_seconds, progress=lambda n: progress.advance(task, n),
            )
        except ValueError as exc:
            fail(str(exc))
    broken = sum(1 for c in made.clips if c.corrupt)
    out.print(f"wrote {len(made.clips)} {dataset} clips ({broken} corrupt) to {made.root}; labels in {made.label_file.name}")


@app.command()
def bundle(
    run: Annotated[Path, typer.Option(help="Run directory (created if missing; re-running resumes).")],
    root: Annotated[Path, typer.Option(help="Dataset folder (label.csv + Raw/), or the manifest file.")],
    dataset: Annotated[str, typer.Option(help="mosi, mosei, sims, simsv2 or manifest.")] = "mosi",
    split: Annotated[Optional[list[str]], typer.Option(help="Split(s) to read: train, valid, test (repeatable).")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Frames sampled per second [2].")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="At most this many frames per clip [32].")] = None,
    size: Annotated[Optional[int], typer.Option(help="Long side of a frame, pixels [448].")] = None,
    sample_rate: Annotated[Optional[int], typer.Option(help="Audio sample rate, Hz [16000].")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decoding worker processes [2].")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Read at most N rows.")] = None,
    label_file: Annotated[Optional[str], typer.Option(help="Label file inside ROOT [label.csv; meta.csv for simsv2].")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Decode clips that failed in an earlier run again.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config field, e.g. --set media.jpeg_quality=85.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Decode every clip of a dataset into audio/frame/text bundles (RUN/bundles/part-*.parquet)."""
    from cotforge.config import BundleConfig, apply_overrides, format_validation_error
    from cotforge.executors.local import run_bundle
    from cotforge.sources import SourceError
    from cotforge.store.run import RunError

    data: dict = {"source": {"dataset": dataset, "root": str(root)}, "media": {}, "exec": {}}
    for section, name, value in [
        ("source", "splits", split), ("source", "limit", limit), ("source", "label_file", label_file),
        ("media", "fps", fps), ("media", "max_frames", max_frames), ("media", "size", size),
        ("media", "sample_rate", sample_rate), ("exec", "workers", workers),
    ]:
        if value is not None:
            data[section][name] = value
    try:
        cfg = BundleConfig.model_validate(apply_overrides(data, set_ or []))
    except ValidationError as exc:
        fail(format_validation_error(exc, "the command-line options"))
    except ValueError as exc:
        fail(str(exc))
    try:
        stats = run_bundle(cfg, run, retry_failed=retry_failed, quiet=quiet)
    except (SourceError, RunError) as exc:
        fail(str(exc))
    table = Table(title=f"bundle {run}", show_header=False)
    table.add_row("rows read", str(stats.read))
    table.add_row("bundled now", str(stats.bundled))
    table.add_row("failed now", str(stats.failed))
    table.add_row("already done (skipped)", str(stats.skipped))
    decoded = stats.bundled + sum(stats.reasons.values())
    if decoded:
        table.add_row("decode CPU s / clip", f"{stats.decode_cpu_seconds / max(decoded, 1):.3f}")
    table.add_row("wall time", f"{stats.wall_seconds:.1f} s")
    out.print(table)
    for reason, n in stats.reasons.most_common():
        out.print(f"  failed: {n:5d}  {reason}", highlight=False)
    out.print(f"details: cotforge status {run}")


@app.command()
def status(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    examples: Annotated[int, typer.Option(help="Example reasons shown per kind of failure.")] = 2,
) -> None:
    """Counts per state and split, and why clips failed or were rejected."""
    from cotforge.executors.local import reason_kind
    from cotforge.store.run import RunDir

    run_dir = RunDir(run)
    if not run_dir.exists():
        fail(f"{run} is not a run directory (no ledger.sqlite)")
    with run_dir.open_ledger() as ledger:
        counts = ledger.counts()
    kinds: dict[tuple[str, str], list] = {}
    for stage, reason, n in counts.reasons:
        entry = kinds.setdefault((stage, reason_kind(reason)), [0, []])
        entry[0] += n
        entry[1].append(reason)
    if as_json:
        payload = {
            "total": counts.total,
            "states": counts.by_state,
            "splits": counts.by_split,
            "reasons": [{"stage": s, "kind": k, "count": v[0], "examples": v[1][:examples]} for (s, k), v in kinds.items()],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{run}: {counts.total} clips")
    table.add_column("state")
    splits = sorted(counts.by_split)
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for state, n in counts.by_state.items():
        table.add_row(state, *[str(counts.by_split[s].get(state, 0)) for s in splits], str(n))
    out.print(table)
    if kinds:
        reasons = Table(title="failures and rejections")
        reasons.add_column("stage")
        reasons.add_column("reason")
        reasons.add_column("clips", justify="right")
        reasons.add_column("example")
        for (stage, kind), (n, texts) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
            reasons.add_row(stage, kind, str(n), "\n".join(texts[:examples]))
        out.print(reasons)


if __name__ == "__main__":
    app()
