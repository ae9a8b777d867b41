"""Benchmark of `review push` + `review pull` against the SDK's raw import and export calls, same rows.

A real Label Studio (its own venv, started like `cotforge review serve`) gets N rows twice:
  * raw: the tasks (built beforehand, untimed, by the same code, so the payloads are identical)
    imported with `projects.import_tasks` in batches of 1,000, and a snapshot export
    (`exports.create` -> `get` -> `download` -> `delete`) of an annotated project;
  * cotforge: `push` of the shards (read, sample, duplicate check, clip lookup, task building,
    the same imports) and `pull` of the same annotated project (export, normalise, write Parquet).
The ratio (cotforge / raw, target <= 1.3x) says whether cotforge's own work is the bottleneck. The
clips are made playable before timing (content-addressed: a second push re-encodes nothing); the
time that takes is printed on its own line. A re-push of all N rows (all already in the project, so
nothing is imported) shows the cost of the duplicate check.

Rows: copies of a demo run's accepted chains with new ids, spread over the splits, media columns
dropped (the review reads only ids, texts, scores and the source clip path).

Usage: python bench/review.py [--rows 5000] [--workdir DIR] [--port 8095]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from table import print_table  # bench/table.py, beside this script

from cotforge.review import labeling
from cotforge.review.client import Target, connect
from cotforge.review.corpus import Corpus
from cotforge.review.media import ClipSource, prepare
from cotforge.review.pull import pull, snapshot
from cotforge.review.push import PushOptions, push
from cotforge.review.server import (
    CLIPS_FOLDER,
    Layout,
    Server,
    default_venv,
    ensure_venv,
    port_in_use,
)
from cotforge.store.shards import CORPUS_SCHEMA

SPLIT_OF = ["train"] * 14 + ["valid"] * 3 + ["test"] * 3


def make_rows(workdir: Path, n: int) -> Path:
    """RUN/shards with n rows copied from a demo run's chains; returns RUN/shards."""
    demo = workdir / "demo"
    if not (demo / "run" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "cotforge.cli", "demo", "--out", str(demo), "--clips", "12", "--corrupt", "0", "-q"],
                       check=True, capture_output=True)
    base = pq.read_table(demo / "run" / "shards").to_pylist()
    run = workdir / f"run-{n}"
    shutil.rmtree(run, ignore_errors=True)
    by_split: dict[str, list[dict]] = {}
    for i in range(n):
        row = dict(base[i % len(base)])
        key = f"{row['key']}-{i}"
        split = SPLIT_OF[i % len(SPLIT_OF)]
        row.update(id=f"{key}#0", key=key, split=split, audio=None, frames=None,
                   error=round((i % 17) / 17, 3), hinted=i % 23 == 0)
        by_split.setdefault(split, []).append(row)
    for split, rows in by_split.items():
        (run / "shards" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA), run / "shards" / split / "part-00000.parquet",
                       compression="zstd")
    manifest = json.loads((demo / "run" / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "shards": {"rows": {s: len(r) for s, r in by_split.items()}}}))
    return run / "shards"


def raw_tasks(shards: Path, clips: Path) -> list[dict]:
    rows = pq.read_table(shards).to_pylist()
    media = prepare([ClipSource(r["source_path"], r["start"], r["end"]) for r in rows], clips)
    return [labeling.task(r, f"/data/local-files/?d={CLIPS_FOLDER}/{media.names[ClipSource(r['source_path'], r['start'], r['end'])]}",
                          "bench", False) for r in rows]


def annotated(tasks: list[dict]) -> list[dict]:
    """Every other task with one submitted annotation (the pre-fill plus verdict and rating)."""
    out = []
    for i, task in enumerate(tasks):
        if i % 2 == 0:
            task = dict(task)
            verdict = ("accept", "edit", "reject")[i % 3]
            task["annotations"] = [{"lead_time": 12.5, "result": [
                {"from_name": "verdict", "to_name": "disc", "type": "choices", "value": {"choices": [verdict]}},
                {"from_name": "quality", "to_name": "disc", "type": "rating", "value": {"rating": 1 + i % 5}},
                *task["predictions"][0]["result"]]}]
        out.append(task)
    return out


def import_raw(client, title: str, config: str, tasks: list[dict]) -> tuple[int, float]:
    project = client.projects.create(title=title, label_config=config,
                                     show_collab_predictions=True, model_version=labeling.MODEL_VERSION)
    began = time.perf_counter()
    for start in range(0, len(tasks), 1000):
        client.projects.import_tasks(id=project.id, request=tasks[start : start + 1000])
    return project.id, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side, alternating which goes first")
    parser.add_argument("--url", help="use this running server (token from LABEL_STUDIO_API_KEY) instead of starting one")
    parser.add_argument("--media-root", type=Path, help="with --url: the server's LOCAL_FILES_DOCUMENT_ROOT")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-review-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shards = make_rows(workdir, args.rows)
    if args.url:
        server, target, media_root = None, Target(args.url, os.environ["LABEL_STUDIO_API_KEY"]), args.media_root
    else:
        layout = Layout(workdir / "label-studio")
        shutil.rmtree(layout.root, ignore_errors=True)
        port = args.port
        while port_in_use(port):
            port += 1
        venv = default_venv()
        ensure_venv(venv)
        server = Server(layout, venv, port)
        server.start()
        target, media_root = Target(server.url, server.creds.token), layout.media
    stamp = time.strftime("%H%M%S")
    try:
        client = connect(target)
        config = labeling.label_config(Corpus(shards).scale(), False)
        began = time.perf_counter()
        tasks = raw_tasks(shards, media_root / CLIPS_FOLDER)
        media_wall = time.perf_counter() - began

        annotated_id, _ = import_raw(client, f"annotated {stamp}", config, annotated(tasks))
        raw_import, push_wall, raw_export, pull_wall = [], [], [], []
        for rep in range(args.repeat):
            # Alternate which side goes first: Label Studio's own background work after a big import
            # would otherwise always land on the same side.
            for side in ("raw", "cotforge") if rep % 2 == 0 else ("cotforge", "raw"):
                if side == "raw":
                    raw_import.append(import_raw(client, f"raw import {stamp}-{rep}", config, tasks)[1])
                    began = time.perf_counter()
                    raw = snapshot(client, annotated_id, target)
                    raw_export.append(time.perf_counter() - began)
                else:
                    began = time.perf_counter()
                    summary = push(target, shards, PushOptions(project=f"cotforge push {stamp}-{rep}"), media_root)
                    push_wall.append(time.perf_counter() - began)
                    assert summary.imported == args.rows, summary
                    began = time.perf_counter()
                    pulled = pull(target, f"annotated {stamp}", workdir / "pulled")
                    pull_wall.append(time.perf_counter() - began)
                    assert pulled.annotations == (args.rows + 1) // 2, pulled
        began = time.perf_counter()
        again = push(target, shards, PushOptions(project=f"cotforge push {stamp}-0"), media_root)
        repush_wall = time.perf_counter() - began
        assert again.imported == 0 and again.already == args.rows, again
    finally:
        if server is not None:
            server.stop()
    best = {name: min(values) for name, values in
            (("raw_import", raw_import), ("push", push_wall), ("raw_export", raw_export), ("pull", pull_wall))}
    runs = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    ratio = (best["push"] + best["pull"]) / (best["raw_import"] + best["raw_export"])
    print_table([
        ("rows", f"{args.rows} ({len(json.dumps(tasks)) / 1e6:.1f} MB of task JSON; raw export {len(raw) / 1e6:.1f} MB)"),
        ("playable clips, made once before timing (distinct sources)", f"{media_wall:.2f} s"),
        ("raw import_tasks, batches of 1000 (best of runs)", f"{best['raw_import']:.2f} s  [{runs(raw_import)}]"),
        ("cotforge push (read, sample, check, build, import)", f"{best['push']:.2f} s  [{runs(push_wall)}] = "
         f"{best['push'] / best['raw_import']:.2f}x raw import"),
        ("raw snapshot export (create, poll, download, delete)", f"{best['raw_export']:.2f} s  [{runs(raw_export)}]"),
        ("cotforge pull (export, normalise, write Parquet)", f"{best['pull']:.2f} s  [{runs(pull_wall)}] = "
         f"{best['pull'] / best['raw_export']:.2f}x raw export"),
        ("push + pull / raw import + export", f"{ratio:.2f}x  (target <= 1.3)"),
        ("re-push of all rows (duplicate check, nothing imported)", f"{repush_wall:.2f} s = {repush_wall / best['raw_import']:.2f}x raw import"),
        ("machine", f"{os.cpu_count()} CPUs; Label Studio at {target.url}"),
    ], header="seconds / ratio")


if __name__ == "__main__":
    main()
