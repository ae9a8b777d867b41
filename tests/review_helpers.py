"""What the review tests share: one demo run per session, and annotations shaped as Label Studio's
editor submits them (the pre-fill plus the reviewer's own answers)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cotforge.review import labeling
from cotforge.review.pull import (
    ANNOTATIONS_FILE,
    EXPORT_FILE,
    PULL_FILE,
    normalise,
    write_folder,
)

_RUNS: dict[str, Path] = {}


def demo_run(factory: pytest.TempPathFactory, clips: int = 12) -> Path:
    """RUN of `cotforge demo` (through the CLI, whose interface is stable), made once per session,
    plus a shards-rejected folder of two chains copied from the accepted ones (the demo rejects none
    at this size), as `export.rejected: true` writes it."""
    name = f"demo-{clips}"
    if name not in _RUNS:
        out = factory.mktemp("review-demo")
        done = subprocess.run([sys.executable, "-m", "cotforge.cli", "demo", "--out", str(out), "--clips", str(clips), "-q"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        run = out / "run"
        table = pq.read_table(next((run / "shards" / "train").glob("part-*.parquet"))).slice(0, 2)
        ids = [f"{key}#r" for key in table.column("key").to_pylist()]
        table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids))
        (run / "shards-rejected" / "train").mkdir(parents=True)
        pq.write_table(table, run / "shards-rejected" / "train" / "part-00000.parquet", compression="zstd")
        _RUNS[name] = run
    return _RUNS[name]


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run's shards and manifest (no ledger), to damage or review without touching the original."""
    for name in ("shards", "shards-rejected"):
        if (run / name).is_dir():
            shutil.copytree(run / name, dest / name)
    shutil.copy(run / "manifest.json", dest / "manifest.json")
    return dest / "shards"


def ui_result(row: dict[str, Any], verdict: str | None, rating: int | None = 4, disc: str | None = None,
              cal: str | None = None, polarity: str | None = None, score: float | None = None,
              comment: str | None = None) -> list[dict[str, Any]]:
    """The result list the editor submits: the pre-filled controls (changed where given) plus verdict, rating, comment."""
    shown_disc, shown_cal = labeling.rationale_texts(row["target"])
    result = labeling.prefill(disc if disc is not None else shown_disc, cal if cal is not None else shown_cal,
                              polarity or row["teacher_polarity"], row["teacher_score"] if score is None else score)["result"]
    if verdict is not None:
        result.append({"from_name": "verdict", "to_name": "disc", "type": "choices", "value": {"choices": [verdict]}})
    if rating is not None:
        result.append({"from_name": "quality", "to_name": "disc", "type": "rating", "value": {"rating": rating}})
    if comment is not None:
        result.append({"from_name": "comment", "to_name": "transcript", "type": "textarea", "value": {"text": [comment]}})
    return result


def export_task(task_id: int, row: dict[str, Any], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """A task as Label Studio's JSON snapshot export writes it (the fields cotforge reads)."""
    task = labeling.task(row, "/data/local-files/?d=clips/x.mp4", "test", show_gold=False)
    return {"id": task_id, "data": task["data"], "annotations": annotations, "predictions": [task_id]}


def annotation(ann_id: int, task_id: int, result: list[dict[str, Any]], user: int = 1, when: str = "2026-01-01T10:00:00Z",
               cancelled: bool = False) -> dict[str, Any]:
    return {"id": ann_id, "task": task_id, "completed_by": user, "result": result, "was_cancelled": cancelled,
            "created_at": when, "updated_at": when, "lead_time": 7.5}


def write_pulled(folder: Path, tasks: list[dict[str, Any]], users: dict[int, str]) -> Path:
    """A folder as `review pull` writes it, from export-shaped tasks."""
    table, _ = normalise(tasks, users)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_folder(folder, {EXPORT_FILE: json.dumps(tasks).encode(), ANNOTATIONS_FILE: sink.getvalue().to_pybytes(),
                          PULL_FILE: json.dumps({"server": "http://127.0.0.1:1", "project_id": 1, "project": "t"}).encode()})
    return folder
