"""The `cotforge` command line. Thin on purpose: it parses options, then calls the library."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Optional, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from rich.table import Table

from cotforge import __version__
from cotforge.cli.common import DATASETS, SetOption, err, fail, load_config, out
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
    except KeyboardInterrupt:
        fail("interrupted; finished bundle parts are kept; re-run the same command to resume.", code=130)
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
    from cotforge.store.ledger import reason_kind
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


def _teacher_options(url: str | None, model: str | None, concurrency: int | None) -> dict[str, object]:
    return {"teacher.url": url, "teacher.model": model, "teacher.concurrency": concurrency}


@app.command()
def synth(
    run: Annotated[Path, typer.Option(help="Run directory with bundles (from `cotforge bundle`).")],
    teacher_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible base URL, e.g. http://gpu-node:8000/v1.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Served model name, e.g. Qwen/Qwen3-Omni-30B-A3B-Instruct.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Requests in flight (about 1-2 x vLLM's --max-num-seqs).")] = None,
    pipeline: Annotated[Optional[Path], typer.Option(help="Take teacher/validation settings from this pipeline YAML.")] = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Ask the teacher for a DC rationale for every bundled clip, validate it, re-ask where needed."""
    from cotforge.executors.local import run_synth
    from cotforge.store.run import RunDir
    from cotforge.teacher.client import TeacherUnavailable

    cfg = load_config(pipeline, run, set_ or [], _teacher_options(teacher_url, model, concurrency))
    RunDir(run).save_config(cfg.public_dump())
    try:
        stats = run_synth(cfg, run, quiet=quiet)
    except TeacherUnavailable as exc:
        fail(str(exc), code=3)
    except KeyboardInterrupt:
        fail("interrupted; every answer received is cached; re-run the same command to resume.", code=130)
    _print_synth(stats)
    out.print(f"next: cotforge export --run {run}")


def _print_synth(stats) -> None:
    table = Table(title="teacher", show_header=False)
    for label, value in [
        ("clips judged", stats.clips), ("accepted", stats.accepted), ("  of them hinted", stats.hinted),
        ("rejected", stats.rejected), ("failed", stats.failed), ("requests sent", stats.requests),
        ("answers from cache", stats.cache_hits), ("retries", sum(stats.retries.values())),
        ("prompt tokens", f"{stats.prompt_tokens:,}"), ("completion tokens", f"{stats.completion_tokens:,}"),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    for reason, n in sorted(stats.reasons.items(), key=lambda kv: -kv[1]):
        out.print(f"  {n:5d}  {reason}", highlight=False)


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="Run directory.")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild shards made with another config.")] = False,
    set_: SetOption = None,
) -> None:
    """Rebuild RUN/shards and RUN/manifest.json from the ledger and cache (no teacher call)."""
    from cotforge.executors.export import run_export
    from cotforge.store.run import RunError
    from cotforge.store.shards import ExportError

    cfg = load_config(None, run, set_ or [])
    try:
        result = run_export(cfg, run, force=force)
    except (RunError, ExportError) as exc:
        fail(str(exc))
    _print_export(run, result)


def _print_export(run: Path, result) -> None:
    rows = ", ".join(f"{split} {n}" for split, n in sorted(result.rows.items())) or "none"
    state = "written" if result.rewritten else "unchanged (inputs identical; nothing rewritten)"
    out.print(f"shards {state}: {rows} rows in {run}/shards; manifest {run}/manifest.json")


@app.command("run")
def run_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (pipelines/mosi.yaml, mosei.yaml, sims.yaml, demo.yaml).")],
    run: Annotated[Optional[Path], typer.Option(help="Run directory [runs/<pipeline name>]; re-running resumes.")] = None,
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Use a run folder whose shards came from another config.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Decode -> teacher -> validate -> shards, all stages at once; resumes where it stopped."""
    cfg = load_config(pipeline, run, set_ or [])
    _run_pipeline(cfg, force, quiet)


def _run_pipeline(cfg, force: bool, quiet: bool):
    from cotforge.executors.local import run_pipeline
    from cotforge.report import write_report
    from cotforge.sources import SourceError
    from cotforge.store.run import RunDir, RunError
    from cotforge.store.shards import ExportError
    from cotforge.teacher.client import TeacherUnavailable

    run_dir = RunDir(cfg.run)
    try:
        result = run_pipeline(cfg, cfg.run, force=force, quiet=quiet)
    except (SourceError, RunError, ExportError) as exc:
        fail(str(exc))
    except TeacherUnavailable as exc:
        fail(f"{exc}\nwhat is done is kept; re-run the same command to resume.", code=3)
    except KeyboardInterrupt:
        fail("interrupted; what is done is kept (ledger, cache, bundle parts); re-run the same command to resume.", code=130)
    run_dir.save_config(cfg.public_dump())
    summary = write_report(cfg, cfg.run)
    _print_synth(result.synth)
    _print_export(cfg.run, result.export)
    out.print(f"report: {summary}")
    return result


@app.command()
def plan(
    run: Annotated[Path, typer.Option(help="Run directory with bundles.")],
    model: Annotated[Optional[str], typer.Option(help="Teacher model (sets the token rules: Qwen3-Omni or Qwen2.5-Omni).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Local folder of the teacher's tokenizer (needs transformers); else an estimate.")] = None,
    prefill_tps: Annotated[float, typer.Option(help="Server prompt throughput, tokens/s (measure with `vllm bench serve`).")] = 4000.0,
    decode_tps: Annotated[float, typer.Option(help="Server generation throughput, tokens/s, all sequences together.")] = 1000.0,
    set_: SetOption = None,
) -> None:
    """Estimate prompt/completion tokens and teacher time for a run before spending GPU hours."""
    from cotforge.executors.local import run_plan

    cfg = load_config(None, run, set_ or [], {"teacher.model": model})
    count = None
    if tokenizer is not None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            fail("--tokenizer needs transformers: pip install -e '.[train]'")
        tok = AutoTokenizer.from_pretrained(str(tokenizer))

        def count(text: str) -> int:
            return len(tok(text)["input_ids"])

    result = run_plan(cfg, run, count)
    if not result.clips:
        fail(f"{run} has no bundles; run `cotforge bundle` first")
    table = Table(title=f"plan for {run} ({cfg.teacher.model})")
    for column in ("split", "clips", "text tok", "audio tok", "video tok", "prompt tok / clip"):
        table.add_column(column, justify="right")
    splits = sorted({c.split for c in result.clips}) + ["all"]
    for split in splits:
        chosen = [c for c in result.clips if split in ("all", c.split)]
        total = sum(c.prompt_tokens for c in chosen)
        table.add_row(split, str(len(chosen)), f"{sum(c.text_tokens for c in chosen):,}", f"{sum(c.audio_tokens for c in chosen):,}",
                      f"{sum(c.video_tokens for c in chosen):,}", f"{total / max(len(chosen), 1):,.0f}")
    out.print(table)
    per_clip_prompt = result.prompt_tokens / len(result.clips)
    source = "observed average" if result.completion_observed else f"upper bound (max_tokens x {cfg.teacher.samples})"
    rows = []
    for label, requests in (("one request per clip", result.requests_low), ("every clip re-asked and hinted", result.requests_high)):
        prompt = per_clip_prompt * requests
        completion = result.completion_per_request * requests
        seconds = prompt / prefill_tps + completion / decode_tps
        rows.append((label, requests, prompt, completion, seconds))
    cost = Table(title=f"teacher cost (completion per request: {result.completion_per_request:,.0f} tokens, {source})")
    for column in ("case", "requests", "prompt tok", "completion tok", "GPU time"):
        cost.add_column(column, justify="right")
    for label, requests, prompt, completion, seconds in rows:
        cost.add_row(label, f"{requests:,}", f"{prompt:,.0f}", f"{completion:,.0f}", f"{seconds / 3600:.2f} h")
    out.print(cost)
    out.print(f"at {prefill_tps:,.0f} prompt tok/s and {decode_tps:,.0f} generated tok/s per server; divide by the number of replicas")


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
        _run_pipeline(cfg, force=False, quiet=quiet)
    out.print(
        f"\n[bold]demo done[/] (teacher: {sim_cfg.model}, a simulator, not a model)\n"
        f"  {run}/shards/{{train,valid,test}}/part-*.parquet  accepted DC chains (load with datasets, polars or pyarrow)\n"
        f"  {run}/manifest.json                     counts per state and split, config and prompt hashes\n"
        f"  {run}/report/summary.md + *.png         acceptance, teacher metrics, rejection reasons, plots\n"
        f"  cotforge status {run}                   every clip's state and why it failed or was rejected"
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
