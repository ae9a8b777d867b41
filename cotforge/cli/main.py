"""The `cotforge` command line. Thin on purpose: it parses options, then calls the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotforge import __version__
from cotforge.cli.common import DATASETS, err, fail, out

app = typer.Typer(
    name="cotforge",
    help="Turn multimodal sentiment datasets (CMU-MOSI, CMU-MOSEI, CH-SIMS) into Discrimination-Calibration "
    "chain-of-thought corpora.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
    from cotforge.demo.writer import make_demo_dataset

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
def demo(
    clips: Annotated[int, typer.Option(min=3, help="Number of generated clips.")] = 24,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo data, run and report.")] = Path("demo"),
    dataset: Annotated[str, typer.Option(help="Layout/language: mosi, mosei, sims or simsv2.")] = "mosi",
    corrupt: Annotated[int, typer.Option(min=0, help="Damaged clips, to show the failure paths.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the data and of the simulated teacher.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """The whole pipeline on generated clips against the built-in teacher simulator, in about a minute."""
    from cotforge.config import load_pipeline
    from cotforge.resources import resource_dir
    from cotforge.demo.writer import make_demo_dataset
    from cotforge.cli.stages import run_and_report
    from cotforge.sim.server import SimConfig, SimProcess

    if dataset not in DATASETS:
        fail(f"--dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    data = out_dir / "data"
    run = out_dir / "run"
    if not (data / "demo.json").is_file():
        err.print(f"generating {clips} {dataset} clips in {data} ...")
        try:
            make_demo_dataset(data, dataset, clips, corrupt=corrupt, seed=seed, max_seconds=8.0)
        except ValueError as exc:
            fail(str(exc))
    sim_cfg = SimConfig(port=0, seed=seed, latency_ms=150, capacity=8, noise=0.35, flip_rate=0.1, hard_share=0.1,
                        rate_429=0.03, rate_500=0.02, log_path=out_dir / "teacher-sim.log")
    with SimProcess(sim_cfg) as sim:
        cfg = load_pipeline(resource_dir("pipelines") / "demo.yaml", [
            f"source.root={data}", f"source.dataset={dataset}", f"teacher.url={sim.url}", f"teacher.model={sim_cfg.model}",
            "teacher.backoff_s=0.05",
        ])
        cfg.run = run
        run_and_report(cfg, force=False, quiet=quiet)
    out.print(
        f"\n[bold]demo done[/] (teacher: {sim_cfg.model}, a simulator, not a model)\n"
        f"  {run}/shards/{{train,valid}}/part-*.parquet  accepted DC chains (load with datasets, polars or pyarrow)\n"
        f"  {run}/eval/{{valid,test}}/part-*.parquet     every clip of the split, unfiltered: evaluate here\n"
        f"  {run}/manifest.json                     counts per state and split, config and prompt hashes\n"
        f"  {run}/report/summary.md + *.png         acceptance, teacher metrics, rejection reasons, plots\n"
        f"  cotforge status --run {run}             every clip's state and why it failed or was rejected"
    )


@app.command(
    "teacher-sim",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def teacher_sim(ctx: typer.Context) -> None:
    """OpenAI-compatible teacher simulator on 127.0.0.1 for tests, demos and load tests (`teacher-sim --help`).

    It checks requests have the shape vLLM accepts, answers DC JSON around the gold label with a
    noise model, models a GPU server (capacity, latency, queueing) and injects faults. Its model
    names start with sim/: what it writes is never presented as a model's.
    """
    from cotforge.sim.server import main as sim_main

    sim_main(list(ctx.args))

