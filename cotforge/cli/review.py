"""`cotforge review ...`: human review of chains in Label Studio (serve, push, pull, apply, report).

Thin like the rest of the CLI: it parses, shows progress and summaries, and calls `cotforge.review`.
The API token is read from flags, the SDK's variables or `review serve`'s folder and never printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cotforge.cli.common import err, fail, out
from cotforge.review import ReviewError

app = typer.Typer(
    name="review",
    help="Human review of DC chains in Label Studio: serve, push a sample, pull verdicts, apply them to a reviewed copy.",
    no_args_is_help=True,
)

DataOption = Annotated[Path, typer.Option("--data", help="`review serve`'s folder (database, media, log, token).")]
UrlOption = Annotated[Optional[str], typer.Option("--url", help="Label Studio URL (default: LABEL_STUDIO_URL, else DATA/server.json).")]
TokenOption = Annotated[Optional[str], typer.Option(
    "--token", help="API token (default: LABEL_STUDIO_API_KEY, else DATA/.token); prefer the variable: flags show in `ps`.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]

STAGES = {"media": "playable clips", "import": "import tasks", "apply": "shard parts"}


@contextmanager
def _progress(quiet: bool) -> Iterator:
    """A progress(stage, advance, total) callback drawing one rich bar per stage (the stages' own bars)."""
    from cotforge.executors.progress import make_progress

    bars = make_progress(quiet)
    tasks: dict[str, int] = {}

    def update(stage: str, advance: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(STAGES.get(stage, stage), total=total, info="")
        elif total is not None:
            bars.update(tasks[stage], total=total)
        if advance:
            bars.advance(tasks[stage], advance)

    with bars:
        yield update


def _problems(messages: list[str], limit: int = 10) -> None:
    for message in messages[:limit]:
        out.print(f"  [yellow]-[/] {message}", highlight=False, soft_wrap=True)
    if len(messages) > limit:
        out.print(f"  … and {len(messages) - limit} more", highlight=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8089,
    data: DataOption = Path("label-studio"),
    venv: Annotated[Optional[Path], typer.Option(
        help="Label Studio's own virtualenv (default: $COTFORGE_LABEL_STUDIO_VENV, else ~/.cache/cotforge/label-studio-1.23.2); "
        "built on first use.")] = None,
    install_only: Annotated[bool, typer.Option("--install-only", help="Build Label Studio's virtualenv, then exit (for CI).")] = False,
) -> None:
    """Start Label Studio on 127.0.0.1 in its own virtualenv and data folder; Ctrl-C stops it."""
    import os
    import signal

    from cotforge.review.server import (
        LABEL_STUDIO_VERSION,
        Layout,
        Server,
        default_venv,
        ensure_venv,
    )

    venv = venv or default_venv()
    try:
        with err.status(f"Label Studio {LABEL_STUDIO_VERSION} virtualenv in {venv} (first time: about a minute) ...") as status:
            ensure_venv(venv, on_line=lambda line: status.update(f"building Label Studio's virtualenv: {line[:90]}"))
        if install_only:
            out.print(f"Label Studio {LABEL_STUDIO_VERSION} is ready in {venv}")
            return
        layout = Layout(data)
        server = Server(layout, venv, port)
        with err.status("starting Label Studio ...") as status:
            server.start(on_wait=lambda s, line: status.update(
                f"starting Label Studio ({s:.0f} s; a first start migrates its database, ~30 s): {line[:70]}"))
    except ReviewError as exc:
        fail(str(exc))
    password = "the one in LABEL_STUDIO_PASSWORD" if os.environ.get("LABEL_STUDIO_PASSWORD") else f"in {layout.password_file}"
    out.print(f"[bold]Label Studio {LABEL_STUDIO_VERSION}[/] at {server.url} (pid {server.proc.pid}; log {layout.log})", highlight=False)
    out.print(f"log in as {server.creds.username}; password {password}", highlight=False)
    out.print(f"media root (local files): {layout.media}", highlight=False)
    out.print("push/pull/report run in this folder find it themselves; from elsewhere:", highlight=False)
    out.print(f'  export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY="$(cat {layout.token_file})"', highlight=False)
    out.print("Ctrl-C stops it.", highlight=False)
    # `kill PID` stops it as cleanly as Ctrl-C (a shell's background job may not get SIGINT at all).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.stop()
        out.print("Label Studio stopped.")
        return
    server.stop()
    fail(f"Label Studio exited by itself (code {code}); last lines of {layout.log}:\n{server.log_tail()}")


@app.command()
def push(
    shards: Annotated[Path, typer.Option(help="Shards folder: RUN/shards, or a reviewed copy.")],
    project: Annotated[str, typer.Option(help="Label Studio project title (created if missing, reused if not).")],
    sample: Annotated[Optional[int], typer.Option(min=1, help="Push N rows, stratified per split (default: all rows).")] = None,
    strategy: Annotated[str, typer.Option(help="random, or risk: hinted, lenient parse, largest |teacher-gold|, rare classes first.")] = "random",
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    include_rejected: Annotated[bool, typer.Option("--include-rejected", help="Also push chains from RUN/shards-rejected.")] = False,
    show_gold: Annotated[bool, typer.Option("--show-gold/--hide-gold", help="Show reviewers the gold score.")] = False,
    media_root: Annotated[Optional[Path], typer.Option(help="Label Studio's local-files root (default: DATA/media).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Clips encoded at once.")] = 2,
    url: UrlOption = None,
    token: TokenOption = None,
    data: DataOption = Path("label-studio"),
    quiet: QuietOption = False,
) -> None:
    """Push a sample of a run's chains to a Label Studio project, clips made playable, teacher answers pre-filled."""
    from cotforge.review.client import find_server
    from cotforge.review.push import PushOptions
    from cotforge.review.push import push as run_push
    from cotforge.review.server import Layout

    opts = PushOptions(project=project, sample=sample, strategy=strategy, seed=seed, include_rejected=include_rejected,
                       show_gold=show_gold, workers=workers)
    try:
        target = find_server(url, token, data)
        with _progress(quiet) as progress:
            summary = run_push(target, shards, opts, media_root or Layout(data).media, progress)
    except ReviewError as exc:
        fail(str(exc))
    table = Table(title=f"push to {project!r}", show_header=False)
    for label, value in [
        ("rows in the shards", summary.rows), (f"picked ({strategy if sample else 'all'})", summary.picked),
        ("already in the project (not imported again)", summary.already),
        ("  of them changed since (same id, other answer)", summary.changed),
        ("left out: media", sum(summary.skipped.values())),
        ("clips encoded / remuxed / reused", f"{summary.encoded} / {summary.remuxed} / {summary.reused}"),
        ("tasks imported", summary.imported),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    for kind, n in summary.skipped.items():
        out.print(f"  left out {n:4d}: {kind}", highlight=False)
    _problems(summary.problems)
    if summary.changed:
        out.print(f"{summary.changed} rows are in the project with an older answer; push them to a new project to review the new one")
    if summary.project_url:
        out.print(f"reviewers: {summary.project_url}", highlight=False)


@app.command()
def pull(
    project: Annotated[str, typer.Option(help="Label Studio project title.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for export.json (as exported), annotations.parquet and pull.json.")],
    url: UrlOption = None,
    token: TokenOption = None,
    data: DataOption = Path("label-studio"),
) -> None:
    """Pull a project's annotations with one snapshot export: the raw JSON plus one Parquet row per annotation."""
    from cotforge.review.client import find_server
    from cotforge.review.pull import pull as run_pull

    try:
        target = find_server(url, token, data)
        with err.status(f"exporting project {project!r} ..."):
            summary = run_pull(target, project, out_dir)
    except ReviewError as exc:
        fail(str(exc))
    out.print(f"pulled {summary.annotations} annotations ({summary.cancelled} cancelled/skipped) on {summary.annotated} of "
              f"{summary.tasks} tasks of project {project!r} in {summary.seconds:.1f} s -> {out_dir}", highlight=False)
    if summary.without_row_id:
        out.print(f"[yellow]{summary.without_row_id} tasks have no row_id in their data (not pushed by cotforge); left out[/]")
    out.print(f"next: cotforge review apply --shards RUN/shards --reviews {out_dir} --out REVIEWED", highlight=False)


@app.command()
def apply(
    shards: Annotated[Path, typer.Option(help="Shards the tasks were pushed from (read only, never rewritten).")],
    reviews: Annotated[Path, typer.Option(help="Folder written by `review pull`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the reviewed copy, laid out like a run: OUT/shards, OUT/manifest.json.")],
    include_rejected: Annotated[bool, typer.Option(
        "--include-rejected", help="Also write a reviewed copy of RUN/shards-rejected to OUT/shards-rejected.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Write nothing if any annotation cannot be applied.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Join pulled annotations onto the shards by row id and write a reviewed copy (review column, edited targets)."""
    from cotforge.review.apply import apply as run_apply

    try:
        with _progress(quiet) as progress:
            summary = run_apply(shards, reviews, out_dir, include_rejected=include_rejected, strict=strict, progress=progress)
    except ReviewError as exc:
        fail(str(exc))
    table = Table(title=f"reviewed copy {out_dir}")
    for column in ("split", "rows", "reviewed", "accept", "edit", "reject"):
        table.add_column(column, justify="right")
    for split, rows in summary.rows.items():
        table.add_row(split, str(rows), str(summary.reviewed.get(split, 0)),
                      *[str(summary.verdicts.get((split, v), 0)) for v in ("accept", "edit", "reject")])
    out.print(table)
    out.print(f"targets replaced by edits: {summary.edited}; annotations read: {summary.annotations} "
              f"({summary.cancelled} cancelled/skipped = unreviewed); rows with several annotations (latest wins): {summary.several}",
              highlight=False)
    if summary.unchanged_edits:
        out.print(f"verdict edit without any change (target left as it was): {summary.unchanged_edits}")
    if summary.kept_from_earlier:
        out.print(f"rows keeping an earlier round's review: {summary.kept_from_earlier}")
    if summary.problems:
        out.print(f"[yellow]not applied: {sum(summary.problems.values())}[/] "
                  + ", ".join(f"{kind} {n}" for kind, n in summary.problems.most_common()), highlight=False)
        _problems(summary.messages)
    out.print(f"train on it: --shards {out_dir}/shards (the originals in {shards} are unchanged)", highlight=False)


@app.command()
def report(
    reviews: Annotated[Path, typer.Option(help="Folder written by `review pull` (with --project: pulled into it first).")],
    project: Annotated[Optional[str], typer.Option(help="Pull this project into REVIEWS first.")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="The shards, for the reviewed share of all rows.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Report folder (default: REVIEWS/report).")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data: DataOption = Path("label-studio"),
) -> None:
    """Reviewed share, verdicts per split, agreement between reviewers and with the teacher, and a plot."""
    from collections import Counter

    from cotforge.review.client import find_server
    from cotforge.review.corpus import Corpus
    from cotforge.review.pull import pull as run_pull
    from cotforge.review.report import report as run_report

    try:
        if project is not None:
            with err.status(f"exporting project {project!r} ..."):
                run_pull(find_server(url, token, data), project, reviews)
        rows = Counter(row["split"] for row in Corpus(shards).read(["split"])) if shards is not None else None
        md, png, stats = run_report(reviews, out_dir or reviews / "report", rows)
    except ReviewError as exc:
        fail(str(exc))
    out.print(md.read_text(encoding="utf-8").split("\n## ")[0], highlight=False)
    out.print(f"report: {md}\nplot:   {png}", highlight=False)
