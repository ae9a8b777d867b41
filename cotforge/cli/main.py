"""The `cotforge` command line. Thin on purpose: it parses options, then calls the library."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Optional, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from cotforge import __version__
from cotforge.cli.common import DATASETS, err, fail, out
from cotforge.sim.config import SimConfig

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


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON ({exc}); give an object, e.g. '{{\"video\": 1}}'") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("give a JSON object, e.g. '{\"video\": 1}'")
    return value


def _model_options(model: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword option per field of `model`: `latency_ms` is `--latency-ms`, a bool reads `--flag/--no-flag`,
    a dict is given as JSON; help, default and help panel come from the field, and an option left out is None."""
    parameters = []
    for name, field in model.model_fields.items():
        flag = name.replace("_", "-")
        optional = get_args(field.annotation) if type(None) in get_args(field.annotation) else ()
        kind = next((arg for arg in optional if arg is not type(None)), field.annotation)
        as_json = get_origin(kind) is dict
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else json.dumps(default) if as_json else default
        if isinstance(default, float):
            shown = f"{default:g}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        # Escaped: rich would read the bracketed default as markup (click's show_default would add parentheses).
        option = typer.Option(
            f"--{flag}/--no-{flag}" if kind is bool else f"--{flag}", help=escape(f"{field.description} [default: {shown}]"),
            show_default=False, rich_help_panel=extra.get("panel"),
            **({"parser": _json_object, "metavar": "JSON"} if as_json else {}),
        )
        annotation = Annotated[Optional[kind], option]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return parameters


def teacher_sim(
    config: Annotated[Optional[str], typer.Option(
        "--config", "--json-config", metavar="FILE|JSON",
        help="These settings as a YAML/JSON file or an inline JSON object; flags override it.",
    )] = None,
    **options: object,
) -> None:
    """OpenAI-compatible teacher simulator on 127.0.0.1 for tests, demos and load tests; never a model (names start sim/).

    Checks requests as vLLM does, answers DC JSON around the gold label, takes a GPU server's time, fails as servers fail.
    """
    from cotforge.config import format_validation_error, load_yaml
    from cotforge.sim.server import serve

    try:
        inline = config is not None and config.lstrip().startswith("{")
        data = _json_object(config) if inline else load_yaml(Path(config)) if config is not None else {}
        cfg = SimConfig.model_validate({**data, **{name: value for name, value in options.items() if value is not None}})
    except ValidationError as exc:
        fail(format_validation_error(exc, "--config and the command-line options" if config else "the command-line options"))
    except typer.BadParameter as exc:
        fail(f"--config: {exc}")
    except (OSError, ValueError) as exc:
        fail(str(exc))
    serve(cfg)


teacher_sim.__signature__ = inspect.Signature(
    [inspect.signature(teacher_sim, eval_str=True).parameters["config"], *_model_options(SimConfig)]
)
app.command("teacher-sim")(teacher_sim)
