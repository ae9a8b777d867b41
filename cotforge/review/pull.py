"""`cotforge review pull`: a project's annotations, as Label Studio exported them and as one table.

The export is a snapshot (create, wait, download, delete): one request for the whole project, where
the paginated task list needs ~20 s per 5,000 tasks and the "easy export" times out on large
projects. The download is kept byte for byte (`export.json`), so nothing is lost to cotforge's
reading of it; `annotations.parquet` has one row per annotation, cancelled (skipped) ones included
and marked, for `review apply` and `review report`. The folder appears only when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cotforge.review import ReviewError
from cotforge.review.client import Target, api, connect, require_project
from cotforge.review.corpus import replace_folder
from cotforge.review.labeling import read_result

EXPORT_FILE = "export.json"
ANNOTATIONS_FILE = "annotations.parquet"
PULL_FILE = "pull.json"
EXPORT_TIMEOUT_S = 600.0

ANNOTATION_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("task_id", pa.int64()), ("annotation_id", pa.int64()), ("split", pa.string()),
    ("verdict", pa.string()), ("discrimination", pa.string()), ("calibration", pa.string()), ("rating", pa.int32()),
    ("polarity", pa.string()), ("score", pa.float64()), ("comment", pa.string()), ("reviewer", pa.string()),
    ("reviewed_at", pa.string()), ("created_at", pa.string()), ("lead_time", pa.float64()), ("cancelled", pa.bool_()),
    ("row_hash", pa.string()), ("pick_reason", pa.string()), ("shown_discrimination", pa.string()),
    ("shown_calibration", pa.string()), ("teacher_score", pa.float64()), ("teacher_polarity", pa.string()),
])
"""One row per annotation. `shown_*` and `teacher_*` are what the reviewer was shown (from the task),
so edits can be told from an unchanged pre-fill without the shards."""


@dataclass
class PullSummary:
    project_id: int
    project: str
    tasks: int = 0
    annotated: int = 0
    annotations: int = 0
    cancelled: int = 0
    without_row_id: int = 0
    seconds: float = 0.0


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def normalise(tasks: list[dict[str, Any]], users: dict[int, str]) -> tuple[pa.Table, int]:
    """Label Studio's JSON export -> (one row per annotation, tasks that carry no row id)."""
    rows, orphans = [], 0
    for task in tasks:
        data = task.get("data") or {}
        if "row_id" not in data:
            orphans += 1
            continue
        for ann in task.get("annotations") or []:
            answer = read_result(ann.get("result") or [])
            who = ann.get("completed_by")
            who_id = who.get("id") if isinstance(who, dict) else who
            reviewer = who.get("email") if isinstance(who, dict) else users.get(who_id)
            rows.append({
                "row_id": data["row_id"], "task_id": task.get("id"), "annotation_id": ann.get("id"),
                "split": data.get("split"), "verdict": answer.verdict, "discrimination": answer.discrimination,
                "calibration": answer.calibration,
                "rating": int(answer.rating) if isinstance(answer.rating, (int, float)) else None,
                "polarity": answer.polarity, "score": _float(answer.score), "comment": answer.comment,
                "reviewer": reviewer or (f"user {who_id}" if who_id is not None else None),
                "reviewed_at": ann.get("updated_at") or ann.get("created_at"), "created_at": ann.get("created_at"),
                "lead_time": _float(ann.get("lead_time")), "cancelled": bool(ann.get("was_cancelled")),
                "row_hash": data.get("row_hash"), "pick_reason": data.get("pick_reason"),
                "shown_discrimination": data.get("rationale_discrimination"),
                "shown_calibration": data.get("rationale_calibration"),
                "teacher_score": _float(data.get("teacher_score")), "teacher_polarity": data.get("teacher_polarity"),
            })
    return pa.Table.from_pylist(rows, schema=ANNOTATION_SCHEMA), orphans


def snapshot(client: Any, project_id: int, target: Target) -> bytes:
    """One snapshot export of every task with its annotations, deleted from the server once downloaded."""
    with api("exporting the project", target):
        export = client.projects.exports.create(id=project_id, title=f"cotforge pull {time.strftime('%Y-%m-%d %H:%M:%S')}")
        started = time.monotonic()
        while (status := client.projects.exports.get(id=project_id, export_pk=export.id).status) != "completed":
            if status == "failed":
                raise ReviewError(f"Label Studio could not export project {project_id} (snapshot {export.id} failed)")
            if time.monotonic() - started > EXPORT_TIMEOUT_S:
                raise ReviewError(f"the export of project {project_id} did not finish in {EXPORT_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        raw = b"".join(client.projects.exports.download(id=project_id, export_pk=export.id, export_type="JSON"))
        client.projects.exports.delete(id=project_id, export_pk=export.id)
    return raw


def users_by_id(client: Any, target: Target) -> dict[int, str]:
    with api("listing users", target):
        return {user.id: user.email for user in client.users.list()}


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write files into a staging folder beside `out`, then put it in place of `out`."""
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, payload in files.items():
            (staging / name).write_bytes(payload)
        replace_folder(staging, out, lambda folder: (folder / PULL_FILE).is_file())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pull(target: Target, project_title: str, out: Path) -> PullSummary:
    started = time.monotonic()
    client = connect(target)
    project = require_project(client, project_title, target)
    raw = snapshot(client, project.id, target)
    try:
        tasks = json.loads(raw)
    except ValueError as exc:
        raise ReviewError(f"the export of project {project.id} is not JSON ({exc}); nothing written") from None
    table, orphans = normalise(tasks, users_by_id(client, target))
    summary = PullSummary(project.id, project_title, tasks=len(tasks), without_row_id=orphans,
                          annotated=sum(1 for t in tasks if t.get("annotations")), annotations=table.num_rows,
                          cancelled=sum(table.column("cancelled").to_pylist()))
    parquet = pa.BufferOutputStream()
    pq.write_table(table, parquet, compression="zstd")
    meta = {
        "server": target.url, "project_id": project.id, "project": project_title,
        "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export_sha256": hashlib.sha256(raw).hexdigest(), "tasks": summary.tasks, "annotated_tasks": summary.annotated,
        "annotations": summary.annotations, "cancelled": summary.cancelled, "tasks_without_row_id": orphans,
    }
    write_folder(out, {EXPORT_FILE: raw, ANNOTATIONS_FILE: parquet.getvalue().to_pybytes(),
                       PULL_FILE: (json.dumps(meta, indent=2) + "\n").encode()})
    summary.seconds = time.monotonic() - started
    return summary


def load(reviews: Path) -> tuple[pa.Table, dict[str, Any]]:
    """A pulled folder's annotation table and its pull.json."""
    path = reviews / ANNOTATIONS_FILE
    if not path.is_file():
        raise ReviewError(f"{reviews} has no {ANNOTATIONS_FILE}: make it with `cotforge review pull --project NAME --out {reviews}`")
    meta_path = reviews / PULL_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return pq.read_table(path), meta
