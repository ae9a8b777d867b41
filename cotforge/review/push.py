"""`cotforge review push`: a sample of a run's chains into a Label Studio project, once each.

The order is chosen so that nothing is left half-done by a bad input: the server and token are
checked first, then rows are read, sampled, and the rows already in the project are set aside (a
re-push imports no duplicate: the row id in each task's data is the key), then every clip is made
playable, and only then is the project created or reused and the tasks imported in batches. A row
whose media is gone is left out with its reason and counted; the rest go on. If the server dies in
the middle of the imports, running the same push again imports only what is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotforge.review import ReviewError, labeling
from cotforge.review.client import Target, api, connect, find_project
from cotforge.review.corpus import Corpus
from cotforge.review.media import ClipSource, prepare
from cotforge.review.sample import Pick, lenient_rows, pick_all, pick_random, pick_risk
from cotforge.review.server import CLIPS_FOLDER

Progress = Callable[[str, int, int | None], None]
"""progress(stage, advance, total): total is given once when a stage starts (advance 0)."""

COLUMNS = ["id", "key", "dataset", "split", "clip_id", "text", "label", "label_polarity", "source_path", "start", "end",
           "target", "teacher_score", "teacher_polarity", "error", "hinted", "validation"]
BATCH = 1000
"""Tasks per import request: Label Studio's notes advise ~1,000 (request size, import time per call)."""


@dataclass
class PushOptions:
    project: str
    sample: int | None = None
    strategy: str = "random"
    seed: int = 0
    include_rejected: bool = False
    show_gold: bool = False
    workers: int = 2
    batch: int = BATCH


@dataclass
class PushSummary:
    project_id: int = 0
    project_url: str = ""
    created: bool = False
    rows: int = 0
    picked: int = 0
    already: int = 0
    changed: int = 0
    imported: int = 0
    encoded: int = 0
    remuxed: int = 0
    reused: int = 0
    skipped: Counter = field(default_factory=Counter)
    """reason kind -> rows left out (media missing, media unreadable)."""
    problems: list[str] = field(default_factory=list)


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def read_rows(corpus: Corpus, include_rejected: bool) -> list[dict[str, Any]]:
    rows = corpus.read(COLUMNS)
    if include_rejected:
        rejected = corpus.rejected()
        if not rejected.root.is_dir():
            raise ReviewError(f"--include-rejected: {rejected.root} does not exist; export the run with "
                              f"`cotforge export --run RUN --set export.rejected=true` first")
        rows += [{**row, "rejected": True} for row in rejected.read(COLUMNS)]
    return rows


def choose(rows: list[dict[str, Any]], opts: PushOptions, corpus: Corpus) -> list[Pick]:
    if opts.strategy not in ("random", "risk"):
        raise ReviewError(f"--strategy must be random or risk, not {opts.strategy!r}")
    if opts.sample is None:
        return pick_all(rows)
    if opts.strategy == "risk":
        return pick_risk(rows, opts.sample, opts.seed, lenient_rows(corpus.ledger()))
    return pick_random(rows, opts.sample, opts.seed)


def existing_rows(client: Any, project_id: int, target: Target) -> dict[str, str]:
    """Row id -> row hash of every task already in the project (ids and data only, no annotations)."""
    found: dict[str, str] = {}
    with api("listing the project's tasks", target):
        for task in client.tasks.list(project=project_id, fields="task_only", include="id,data", page_size=1000):
            data = task.data or {}
            if "row_id" in data:
                found[data["row_id"]] = data.get("row_hash", "")
    return found


def check_gold(project: Any, opts: PushOptions) -> None:
    """A project keeps the gold setting it was created with: mixed tasks would leak the gold to some reviewers."""
    if labeling.config_shows_gold(project.label_config or "") != opts.show_gold:
        shown = "shows" if not opts.show_gold else "hides"
        raise ReviewError(f"project {opts.project!r} {shown} the gold score; push with the same --show-gold/--hide-gold "
                          "as before, or to a new --project")


def create_project(client: Any, opts: PushOptions, config: str, target: Target) -> Any:
    with api(f"creating project {opts.project!r}", target):
        return client.projects.create(
            title=opts.project, label_config=config, show_collab_predictions=True, model_version=labeling.MODEL_VERSION,
            description="cotforge review: DC chains to accept, edit or reject",
        )


def ensure_storage(client: Any, project_id: int, clips: Path, target: Target) -> None:
    """Label Studio serves a local file only if a storage of some project it may see covers its folder."""
    with api("registering the media folder", target):
        paths = {Path(s.path) for s in client.import_storage.local.list(project=project_id)}
        if clips.resolve() not in {p.resolve() for p in paths}:
            client.import_storage.local.create(project=project_id, path=str(clips.resolve()), title="cotforge clips",
                                               use_blob_urls=False)


def push(target: Target, shards: Path, opts: PushOptions, media_root: Path, progress: Progress = lambda s, n, t: None) -> PushSummary:
    summary = PushSummary()
    clips = media_root / CLIPS_FOLDER
    if not media_root.is_dir():
        raise ReviewError(f"media root {media_root} does not exist: give --media-root, the folder Label Studio serves "
                          "local files from (LOCAL_FILES_DOCUMENT_ROOT; `cotforge review serve` uses DATA/media)")
    client = connect(target)
    corpus = Corpus(shards)
    scale = corpus.scale()
    config = labeling.label_config(scale, opts.show_gold)
    rows = read_rows(corpus, opts.include_rejected)
    summary.rows = len(rows)
    by_id = {row["id"]: row for row in rows}
    picks = choose(rows, opts, corpus)
    summary.picked = len(picks)

    project = find_project(client, opts.project, target)
    if project is not None:
        check_gold(project, opts)
    existing = existing_rows(client, project.id, target) if project is not None and project.task_number else {}
    fresh: list[Pick] = []
    for pick in picks:
        if pick.row_id not in existing:
            fresh.append(pick)
            continue
        summary.already += 1
        if existing[pick.row_id] != labeling.row_hash(by_id[pick.row_id]):
            summary.changed += 1

    sources = {pick.row_id: ClipSource(by_id[pick.row_id]["source_path"] or "", by_id[pick.row_id]["start"],
                                       by_id[pick.row_id]["end"]) for pick in fresh}
    progress("media", 0, len(set(sources.values())))
    media = prepare(sources.values(), clips, workers=opts.workers, progress=lambda n: progress("media", n, None))
    summary.encoded, summary.remuxed, summary.reused = media.encoded, media.remuxed, media.reused

    tasks = []
    for pick in fresh:
        source = sources[pick.row_id]
        if source in media.errors:
            reason = media.errors[source]
            summary.skipped[_kind(reason)] += 1
            summary.problems.append(f"{pick.row_id}: {reason}")
            continue
        video = f"/data/local-files/?d={CLIPS_FOLDER}/{media.names[source]}"
        tasks.append(labeling.task(by_id[pick.row_id], video, pick.reason, opts.show_gold))

    if project is None:
        if not tasks:
            return summary
        project, summary.created = create_project(client, opts, config, target), True
    summary.project_id = project.id
    summary.project_url = f"{target.url}/projects/{project.id}/data"
    try:
        ensure_storage(client, project.id, clips, target)
    except ReviewError:
        if summary.created:  # leave no empty project behind
            with api(f"removing the project {opts.project!r} just made", target):
                client.projects.delete(id=project.id)
        raise
    progress("import", 0, len(tasks))
    for start in range(0, len(tasks), opts.batch):
        batch = tasks[start : start + opts.batch]
        with api(f"importing tasks {start + 1}-{start + len(batch)} of {len(tasks)} (re-run the push to import the rest)", target):
            client.projects.import_tasks(id=project.id, request=batch)
        summary.imported += len(batch)
        progress("import", len(batch), None)
    return summary
