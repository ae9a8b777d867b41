"""Pipeline commands: run, bundle, plan, synth, export, status, report.

Options that set a config field take their help text and bracketed default from the pydantic
field itself (`config_option`), so the two cannot drift; everything else is `--set key=value`.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cotforge.cli.common import DatasetChoice, SetOption, config_option, err, fail, load_config, out, overrides
from cotforge.cli.main import app

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
RunOption = Annotated[Path, typer.Option("--run", help="Run directory (created if missing; re-running resumes).")]
RESUME = "what is done is kept (ledger, cache, bundle parts); re-run the same command to resume."
ExecutorOption = Annotated[Optional[str], config_option("exec.executor", "--executor")]
RayAddress = Annotated[Optional[str], config_option("exec.ray_address", "--ray-address")]
ShardOption = Annotated[Optional[str], config_option("exec.shard", "--shard")]


def _exec_options(executor: str | None, ray_address: str | None, shard: str | None) -> dict[str, object]:
    return {"exec.executor": executor, "exec.ray_address": ray_address, "exec.shard": shard}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run drains, records what it did, and exits 143 with the resume hint."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def stage_exits(interrupted: str = RESUME) -> Iterator[None]:
    """Every way a stage command can stop, as one clear line and an exit code: 2 bad input, 3 teacher
    unavailable, 4 budget reached, 130 Ctrl-C, 143 SIGTERM; what is done is always kept."""
    import sqlite3

    from cotforge.sources import SourceError
    from cotforge.store.run import RunError
    from cotforge.store.shards import ExportError
    from cotforge.teacher.client import TeacherBudgetReached, TeacherUnavailable

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except (SourceError, RunError, ExportError) as exc:
        fail(str(exc))
    except TeacherUnavailable as exc:
        fail(f"{exc}\n{RESUME}", code=3)
    except TeacherBudgetReached as exc:
        fail(f"budget reached: {exc}; {RESUME} (raise the budget to go on)", code=4)
    except Terminated:
        fail(f"terminated (SIGTERM); {interrupted}", code=143)
    except KeyboardInterrupt:
        fail(f"interrupted; {interrupted}", code=130)
    except (sqlite3.OperationalError, OSError) as exc:
        where = getattr(exc, "filename", None) or "the run folder"
        fail(f"cannot write {where}: {exc}. Free disk space or make the run folder writable, then re-run the same "
             "command: finished work is kept and nothing half-written is used")
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def bundle(
    run: RunOption,
    root: Annotated[Path, config_option("source.root", "--root")],
    dataset: Annotated[DatasetChoice, config_option("source.dataset", "--dataset")] = DatasetChoice.mosi,
    split: Annotated[Optional[list[str]], config_option("source.splits", "--split")] = None,
    fps: Annotated[Optional[float], config_option("media.fps", "--fps")] = None,
    max_frames: Annotated[Optional[int], config_option("media.max_frames", "--max-frames")] = None,
    size: Annotated[Optional[int], config_option("media.size", "--size")] = None,
    sample_rate: Annotated[Optional[int], config_option("media.sample_rate", "--sample-rate")] = None,
    workers: Annotated[Optional[int], config_option("exec.workers", "--workers")] = None,
    limit: Annotated[Optional[int], config_option("source.limit", "--limit")] = None,
    label_file: Annotated[Optional[str], config_option("source.label_file", "--label-file")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--no-retry-failed", help="Decode clips that failed in an earlier run again.")] = False,
    executor: ExecutorOption = None,
    ray_address: RayAddress = None,
    shard: ShardOption = None,
    set_: SetOption = None,
    quiet: Quiet = False,
) -> None:
    """Decode every clip of a dataset into audio/frame/text bundles (RUN/bundles/part-*.parquet)."""
    from cotforge.config import BundleConfig, format_validation_error
    from cotforge.executors.local import run_bundle
    from pydantic import ValidationError

    data = overrides({
        "source.dataset": dataset.value, "source.root": str(root), "source.splits": split, "source.limit": limit,
        "source.label_file": label_file, "media.fps": fps, "media.max_frames": max_frames, "media.size": size,
        "media.sample_rate": sample_rate, "exec.workers": workers, **_exec_options(executor, ray_address, shard),
    }, set_ or [])
    try:
        cfg = BundleConfig.model_validate(data)
    except ValidationError as exc:
        fail(format_validation_error(exc, "the command-line options"))
    except ValueError as exc:
        fail(str(exc))
    with stage_exits("finished bundle parts are kept; re-run the same command to resume."):
        stats = run_bundle(cfg, run, retry_failed=retry_failed, quiet=quiet)
    table = Table(title=f"bundle {run}", show_header=False)
    table.add_row("rows read", str(stats["rows"]))
    table.add_row("bundled now", str(stats["bundled"]))
    table.add_row("failed now", str(stats["failed"]))
    table.add_row("already done (skipped)", str(stats["skipped"]))
    if stats["removed"]:
        table.add_row("removed from the label file", str(stats["removed"]))
    decoded = stats["bundled"] + stats["failed"]
    if decoded:
        table.add_row("decode CPU s / clip", f"{stats.seconds.get('decode_cpu', 0.0) / decoded:.3f}")
    out.print(table)
    for reason, n in sorted(stats.group("reasons").items(), key=lambda kv: -kv[1]):
        out.print(f"  failed: {n:5d}  {reason}", highlight=False)
    out.print(f"details: cotforge status --run {run}")


@app.command()
def status(
    run_arg: Annotated[Optional[Path], typer.Argument(metavar="[RUN]", help="Run directory (same as --run).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Run directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    examples: Annotated[int, typer.Option(help="Example reasons shown per kind of failure.")] = 2,
) -> None:
    """Counts per state and split, why clips failed or were rejected, and the teacher's retries by kind."""
    from cotforge.store.run import RunDir, RunError
    from cotforge.types import reason_kind

    path = run or run_arg
    if path is None:
        fail("give the run directory: cotforge status --run RUN")
    run_dir = RunDir(path)
    try:
        with run_dir.open_ledger(read_only=True) as ledger:
            counts = ledger.counts()
    except RunError as exc:
        fail(str(exc))
    teacher, client = run_dir.totals("teacher"), run_dir.totals("client")
    retries, failures = client.group("retries"), client.group("failures")
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
            "teacher": {"requests": teacher["requests"], "cache_hits": teacher["cache_hits"], "retries": retries, "failures": failures},
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{path}: {counts.total} clips")
    table.add_column("state")
    splits = sorted(counts.by_split)
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for state, n in counts.by_state.items():
        if n or state in ("accepted", "rejected", "failed"):
            table.add_row(state, *[str(counts.by_split[s].get(state, 0)) for s in splits], str(n))
    out.print(table)
    if teacher["requests"] or retries:
        line = ", ".join(f"{kind} {n}" for kind, n in sorted(retries.items())) or "none"
        out.print(f"teacher: {teacher['requests']} requests, {teacher['cache_hits']} answers from cache; retries: {line}")
    if kinds:
        reasons = Table(title="failures and rejections")
        reasons.add_column("stage")
        reasons.add_column("reason")
        reasons.add_column("clips", justify="right")
        reasons.add_column("example")
        for (stage, kind), (n, texts) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
            reasons.add_row(stage, kind, str(n), "\n".join(texts[:examples]))
        out.print(reasons)


def _urls(urls: list[str] | None) -> dict[str, object]:
    """`--teacher-url` once: that server alone (teacher.url, no endpoints); repeated: the replicas (teacher.endpoints)."""
    if not urls:
        return {}
    if len(urls) == 1:
        return {"teacher.url": urls[0], "teacher.endpoints": []}
    return {"teacher.endpoints": list(urls)}


def _teacher_options(urls: list[str] | None, model: str | None, concurrency: int | None) -> dict[str, object]:
    return {**_urls(urls), "teacher.model": model, "teacher.concurrency": concurrency}


TeacherUrl = Annotated[
    Optional[list[str]],
    typer.Option("--teacher-url", metavar="URL", help="OpenAI-compatible base URL of the teacher (sets teacher.url); repeat it for "
                 "several replicas of the same model (sets teacher.endpoints)."),
]
TeacherModel = Annotated[Optional[str], config_option("teacher.model", "--model")]
Concurrency = Annotated[Optional[int], config_option("teacher.concurrency", "--concurrency")]


@app.command()
def synth(
    run: Annotated[Path, typer.Option("--run", help="Run directory with bundles (from `cotforge bundle`).")],
    teacher_url: TeacherUrl = None,
    model: TeacherModel = None,
    concurrency: Concurrency = None,
    pipeline: Annotated[Optional[Path], typer.Option(help="Take teacher/validation settings from this pipeline YAML.")] = None,
    force: Annotated[bool, typer.Option("--force/--no-force", help="Ask again with teacher settings other than the run's.")] = False,
    dry_run: Annotated[Optional[int], typer.Option("--dry-run", metavar="N", help="Write the exact request bodies of N clips (media elided) to RUN/requests/ and send nothing.")] = None,
    executor: ExecutorOption = None,
    ray_address: RayAddress = None,
    shard: ShardOption = None,
    set_: SetOption = None,
    quiet: Quiet = False,
) -> None:
    """Ask the teacher for a DC rationale for every bundled clip, validate it, re-ask where needed.

    Clips judged under other validation or re-asking settings, or whose labels changed on disk,
    are judged again from the cache: only what the new settings add is asked.
    """
    from cotforge.executors import executor_for

    cfg = load_config(pipeline, run, set_ or [], {**_teacher_options(teacher_url, model, concurrency),
                                                  **_exec_options(executor, ray_address, shard)})
    if dry_run is not None:
        _dry_run(cfg, run, dry_run)
        return
    with stage_exits("every answer received is cached; re-run the same command to resume."):
        result = executor_for(cfg)(cfg, "synth", quiet).synth(force)
    print_teacher(result.synth, result.events)
    out.print(f"next: cotforge export --run {run}")


def _dry_run(cfg, run: Path, limit: int) -> None:  # noqa: ANN001 - a PipelineConfig
    from cotforge.steps.plan import preview_requests
    from cotforge.store.run import RunError

    try:
        previews = preview_requests(cfg, run, limit)
    except RunError as exc:
        fail(str(exc))
    folder = run / "requests"
    folder.mkdir(parents=True, exist_ok=True)
    for preview in previews:
        path = folder / (preview["key"].replace("/", "__") + ".json")
        path.write_text(json.dumps(preview, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.print(f"wrote {len(previews)} request bodies (media elided, nothing sent) to {folder}")


def print_teacher(stats, events: list[str] | tuple[str, ...] = ()) -> None:  # noqa: ANN001 - a Stats
    table = Table(title="teacher", show_header=False)
    retries = stats.group("retries")
    for label, value in [
        ("clips judged", stats["clips"]), ("accepted", stats["accepted"]), ("  of them hinted", stats["hinted"]),
        ("rejected", stats["rejected"]), ("failed", stats["failed"]), ("requests sent", stats["requests"]),
        ("answers from cache", stats["cache_hits"]),
        ("retries", ", ".join(f"{k} {n}" for k, n in sorted(retries.items())) or "0"),
        ("prompt tokens", f"{stats['prompt_tokens']:,}"), ("completion tokens", f"{stats['completion_tokens']:,}"),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    for reason, n in sorted(stats.group("reasons").items(), key=lambda kv: -kv[1]):
        out.print(f"  {n:5d}  {reason}", highlight=False)
    for line in events:  # a replica lost is said, even when the others finished the run
        out.print(f"teacher: {line}", highlight=False)


@app.command()
def export(
    run: Annotated[Path, typer.Option("--run", help="Run directory.")],
    set_: SetOption = None,
) -> None:
    """Rebuild RUN/shards, RUN/eval and RUN/manifest.json from the ledger and cache (no teacher call)."""
    from cotforge.executors.local import run_export

    cfg = load_config(None, run, set_ or [])
    with stage_exits():
        stats = run_export(cfg, run)
    print_export(run, stats)


def print_export(run: Path, stats) -> None:  # noqa: ANN001 - a Stats
    rows = ", ".join(f"{split} {n}" for split, n in sorted(stats.group("rows").items())) or "none"
    evals = ", ".join(f"{split} {n}" for split, n in sorted(stats.group("eval_rows").items())) or "none"
    state = "written" if stats["rewritten"] else "unchanged (inputs identical; nothing rewritten)"
    out.print(f"shards {state}: {rows} rows in {run}/shards; eval sets (unfiltered): {evals} in {run}/eval; "
              f"manifest {run}/manifest.json")


@app.command("run")
def run_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (pipelines/mosi.yaml, mosei.yaml, sims.yaml, demo.yaml).")],
    run: Annotated[Optional[Path], typer.Option("--run", help="Run directory [runs/<pipeline name>]; re-running resumes.")] = None,
    teacher_url: TeacherUrl = None,
    executor: ExecutorOption = None,
    ray_address: RayAddress = None,
    shard: ShardOption = None,
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force/--no-force", help="Ask again with teacher settings other than the run's.")] = False,
    quiet: Quiet = False,
) -> None:
    """Decode -> teacher -> validate -> shards, all stages at once; resumes where it stopped."""
    cfg = load_config(pipeline, run, set_ or [], {**_urls(teacher_url), **_exec_options(executor, ray_address, shard)})
    run_and_report(cfg, force, quiet)


def run_and_report(cfg, force: bool, quiet: bool):  # noqa: ANN001, ANN201 - PipelineConfig -> PipelineResult
    """`run` and `demo`: every stage, then the report."""
    from cotforge.executors.local import run_pipeline
    from cotforge.report import write_report

    with stage_exits():
        result = run_pipeline(cfg, cfg.run, force=force, quiet=quiet)
    summary = write_report(cfg, cfg.run)
    print_teacher(result.synth, result.events)
    print_export(cfg.run, result.export)
    out.print(f"report: {summary}")
    return result


@app.command()
def report(
    run: Annotated[Path, typer.Option("--run", help="Run directory.")],
    set_: SetOption = None,
) -> None:
    """Write RUN/report/ (summary.md + plots) for any run, whichever commands made it."""
    from cotforge.report import write_report

    cfg = load_config(None, run, set_ or [])
    with stage_exits():
        summary = write_report(cfg, run)
    out.print(f"report: {summary}")


@app.command()
def plan(
    run: Annotated[Path, typer.Option("--run", help="Run directory with bundles.")],
    model: Annotated[Optional[str], config_option("teacher.model", "--model")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="The teacher model's local folder (tokenizer + chat template; needs transformers): exact prompt tokens; else an estimate.")] = None,
    max_model_len: Annotated[Optional[int], config_option("teacher.max_model_len", "--max-model-len")] = None,
    prefill_tps: Annotated[float, typer.Option(help="Server prompt throughput, tokens/s (measure with `vllm bench serve`).")] = 4000.0,
    decode_tps: Annotated[float, typer.Option(help="Server generation throughput, tokens/s, all sequences together.")] = 1000.0,
    set_: SetOption = None,
) -> None:
    """Estimate prompt/completion tokens and teacher time for a run before spending GPU hours."""
    from cotforge.steps.plan import run_plan
    from cotforge.store.run import RunError

    from cotforge.teacher.plan import PromptCounter

    cfg = load_config(None, run, set_ or [], {"teacher.model": model, "teacher.max_model_len": max_model_len})
    try:
        counter = PromptCounter.load(cfg.teacher.model, tokenizer)
    except (ImportError, ValueError, OSError) as exc:
        fail(f"--tokenizer: {exc}")
    try:
        result = run_plan(cfg, run, counter)
    except RunError as exc:
        fail(str(exc))
    if not result.clips:
        fail(f"{run} has no bundles of the teacher's splits ({', '.join(cfg.teacher.splits)}); run `cotforge bundle` first")
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
    source = "observed average" if result.completion_observed else f"upper bound (max_tokens x {cfg.teacher.n})"
    cost = Table(title=f"teacher cost (completion per request: {result.completion_per_request:,.0f} tokens, {source})")
    for column in ("case", "requests", "prompt tok", "completion tok", "GPU time"):
        cost.add_column(column, justify="right")
    for label, requests in (("one request per clip", result.requests_low), ("every clip re-asked and hinted", result.requests_high)):
        prompt = per_clip_prompt * requests
        completion = result.completion_per_request * requests
        seconds = prompt / prefill_tps + completion / decode_tps
        cost.add_row(label, f"{requests:,}", f"{prompt:,.0f}", f"{completion:,.0f}", f"{seconds / 3600:.2f} h")
    out.print(cost)
    out.print(f"at {prefill_tps:,.0f} prompt tok/s and {decode_tps:,.0f} generated tok/s per server; divide by the number of replicas")
    budget = cfg.teacher.max_model_len
    if budget is None:
        out.print("context budget not checked: give --max-model-len (the server's --max-model-len) to flag clips too long for it")
        return
    over = [c for c in result.clips if c.prompt_tokens + cfg.teacher.max_tokens > budget]
    if not over:
        out.print(f"every clip fits max_model_len {budget:,} (prompt + max_tokens {cfg.teacher.max_tokens:,})")
        return
    err.print(f"[bold yellow]{len(over)} clips exceed max_model_len {budget:,}[/] (prompt + max_tokens {cfg.teacher.max_tokens:,}); "
              "they will fail before any request. Lower media.fps/max_frames/size or teacher.max_tokens, or serve a longer context:")
    for clip in sorted(over, key=lambda c: -c.prompt_tokens)[:10]:
        err.print(f"  {clip.key}: about {clip.prompt_tokens:,} prompt tokens", highlight=False)
