"""`cotforge review apply`: pulled annotations joined onto the shards, written as a reviewed copy.

The originals are only read. Each row's `review` column gets the latest valid annotation's answers
(verdict, edited texts, rating, corrected polarity and score, comment, reviewer, time) and every
annotation of the row, cancelled and invalid ones included, each with the reason it was not applied.
An edit replaces the rendered `target` in the copy only, rendered by `dc.render_student` from the
reviewer's texts with the corrected polarity and score, and is marked `edited`. Rejected rows stay,
with their verdict: whether to train on them is the trainer's decision, not the review's.

Policy, written once here:
- Cancelled (skipped) annotations count as unreviewed.
- An annotation is applied whole or not at all: one with a score out of the dataset's range, an
  unknown verdict or polarity, a rating outside 1-5, or an edit whose text is empty or lost the
  target layout is not applied, and is counted with its reason. `strict` refuses to write anything
  while any such problem exists.
- Several valid annotations on one row: the latest (by update time, then id) wins.
- A row already reviewed in an earlier round (a reviewed copy given as --shards) keeps that review
  unless this round has a valid annotation for it; annotations of both rounds are kept.

The copy is written beside its destination and moved into place only when complete, with a
manifest that records where the reviews came from and the counts.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cotforge.dc import render_student
from cotforge.review import ReviewError
from cotforge.review.corpus import Corpus, replace_folder
from cotforge.review.labeling import POLARITIES, VERDICTS, edited_rationale
from cotforge.review.pull import load
from cotforge.store.shards import REVIEW
from cotforge.types import Scale

MAX_RATING = 5
SHARDS, REJECTED = "shards", "shards-rejected"
"""The reviewed copy's folders: a run's own names, so it reads like a run."""
MAX_MESSAGES = 1000
SCORE_SAME = 5e-4
"""Scores this close are the pre-filled one (the task shows the teacher's score to 3 decimals)."""


@dataclass
class ApplySummary:
    rows: dict[str, int] = field(default_factory=Counter)
    reviewed: dict[str, int] = field(default_factory=Counter)
    verdicts: dict[tuple[str, str], int] = field(default_factory=Counter)
    """(split, verdict) -> rows."""
    edited: int = 0
    unchanged_edits: int = 0
    """verdict edit, but texts, polarity and score as pre-filled: the target is left as it was."""
    kept_from_earlier: int = 0
    annotations: int = 0
    cancelled: int = 0
    only_cancelled: int = 0
    several: int = 0
    problems: Counter = field(default_factory=Counter)
    """kind -> annotations not applied (or task rows not found)."""
    messages: list[str] = field(default_factory=list)
    out: Path | None = None
    written: bool = False

    def problem(self, kind: str, message: str) -> None:
        self.problems[kind] += 1
        self.messages.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": dict(self.rows), "reviewed": dict(self.reviewed), "edited": self.edited,
            "edits_without_change": self.unchanged_edits,
            "verdicts": {f"{s}/{v}": n for (s, v), n in sorted(self.verdicts.items())},
            "kept_from_earlier_review": self.kept_from_earlier, "annotations": self.annotations,
            "cancelled": self.cancelled, "rows_only_cancelled": self.only_cancelled,
            "rows_with_several_annotations": self.several, "problems": dict(self.problems),
        }


def check(ann: dict[str, Any], row: dict[str, Any], scale: Scale) -> tuple[str | None, str | None]:
    """(problem kind, message) when an annotation cannot be applied, else (None, None)."""
    where = f"{row['id']} (task {ann['task_id']}, annotation {ann['annotation_id']}, {ann['reviewer']})"
    verdict = ann["verdict"]
    if verdict is None:
        return "no verdict", f"{where}: submitted without a verdict"
    if verdict not in VERDICTS:
        return "unknown verdict", f"{where}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}"
    if ann["score"] is not None and not scale.contains(ann["score"]):
        return "score out of range", f"{where}: score {ann['score']:g} is outside [{scale.low:g}, {scale.high:g}]"
    if ann["polarity"] is not None and ann["polarity"] not in POLARITIES:
        return "unknown polarity", f"{where}: polarity {ann['polarity']!r} is not one of {', '.join(POLARITIES)}"
    if ann["rating"] is not None and not 1 <= ann["rating"] <= MAX_RATING:
        return "rating out of range", f"{where}: rating {ann['rating']} is outside 1-{MAX_RATING}"
    if verdict == "edit":
        if not (ann["discrimination"] or "").strip() or not (ann["calibration"] or "").strip():
            return "edit with empty text", f"{where}: verdict edit, but an edited text is empty"
        _, error = edited_rationale(ann["discrimination"], ann["calibration"], _polarity(ann, row), _score(ann, row))
        if error:
            return "edit unreadable", f"{where}: {error}"
    return None, None


def _polarity(ann: dict[str, Any], row: dict[str, Any]) -> str:
    return ann["polarity"] or row["teacher_polarity"]


def _score(ann: dict[str, Any], row: dict[str, Any]) -> float:
    return ann["score"] if ann["score"] is not None else row["teacher_score"]


def _changed(ann: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether an edit differs from what the reviewer was shown: an unchanged pre-fill comes back
    as-is, and a verdict of edit on it must not re-render the target."""
    return ((ann["discrimination"] or "").strip() != (ann["shown_discrimination"] or "").strip()
            or (ann["calibration"] or "").strip() != (ann["shown_calibration"] or "").strip()
            or _polarity(ann, row) != row["teacher_polarity"]
            or abs(_score(ann, row) - row["teacher_score"]) > SCORE_SAME)


def _kept(ann: dict[str, Any], problem: str | None) -> dict[str, Any]:
    names = [f.name for f in REVIEW.field("annotations").type.value_type]
    return {**{name: ann.get(name) for name in names}, "problem": problem}


def review_row(row: dict[str, Any], anns: list[dict[str, Any]], scale: Scale,
               summary: ApplySummary) -> tuple[dict[str, Any] | None, str | None]:
    """(review struct, new target or None) for one row from this round's annotations, or (None, None)."""
    kept, valid = [], []
    for ann in anns:
        summary.annotations += 1
        if ann["cancelled"]:
            summary.cancelled += 1
            kept.append(_kept(ann, None))
            continue
        kind, message = check(ann, row, scale)
        if kind:
            summary.problem(kind, message)
        else:
            valid.append(ann)
        kept.append(_kept(ann, message))
    if not valid:
        summary.only_cancelled += bool(anns) and all(a["cancelled"] for a in anns)
        return None, None
    summary.several += len(valid) > 1
    latest = max(valid, key=lambda a: (a["reviewed_at"] or "", a["annotation_id"] or 0))
    earlier = row.get("review") or {}
    review = {
        "verdict": latest["verdict"], "edited": False, "discrimination": None, "calibration": None, "rationale": None,
        "teacher_target": earlier.get("teacher_target") or row["target"], "rating": latest["rating"],
        "polarity": latest["polarity"], "score": latest["score"], "comment": latest["comment"],
        "reviewer": latest["reviewer"], "reviewed_at": latest["reviewed_at"], "task_id": latest["task_id"],
        "annotations": _merge(earlier.get("annotations") or [], kept),
    }
    target = None
    if latest["verdict"] == "edit" and not _changed(latest, row):
        summary.unchanged_edits += 1
    elif latest["verdict"] == "edit":
        rationale, _ = edited_rationale(latest["discrimination"], latest["calibration"], _polarity(latest, row), _score(latest, row))
        assert rationale is not None  # check() accepted it
        target = render_student(rationale)
        review.update(edited=True, discrimination=latest["discrimination"], calibration=latest["calibration"],
                      rationale=rationale.model_dump(mode="json"))
    return review, target


def _merge(earlier: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {(a["task_id"], a["annotation_id"]) for a in now}
    return [a for a in earlier if (a["task_id"], a["annotation_id"]) not in seen] + now


def _group(table: pa.Table) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for ann in table.to_pylist():
        groups.setdefault(ann["row_id"], []).append(ann)
    return groups


def _write_corpus(corpus: Corpus, staging: Path, groups: dict[str, list[dict[str, Any]]], scale: Scale,
                  summary: ApplySummary, progress: Callable[[int], None]) -> list[dict[str, Any]]:
    """Write the reviewed copy of every part of `corpus` under `staging/{split}/`; the files written."""
    files = []
    for split, part in corpus.parts():
        table = pq.read_table(part)
        rows = table.select(["id", "split", "target", "teacher_polarity", "teacher_score", "review"]).to_pylist()
        reviews, targets = [], []
        for row in rows:
            summary.rows[split] += 1
            review, target = review_row(row, groups.pop(row["id"], []), scale, summary)
            if review is None and row["review"]:
                summary.kept_from_earlier += 1
                review = row["review"]
            if review is not None:
                summary.reviewed[split] += 1
                summary.verdicts[(split, review["verdict"])] += 1
                summary.edited += bool(target)
            reviews.append(review)
            targets.append(target or row["target"])
        table = table.set_column(table.schema.get_field_index("review"), pa.field("review", REVIEW), pa.array(reviews, REVIEW))
        table = table.set_column(table.schema.get_field_index("target"), table.schema.field("target"), pa.array(targets, pa.string()))
        dest = staging / split / part.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta = pq.ParquetFile(part).metadata
        pq.write_table(table, dest, compression="zstd", row_group_size=meta.row_group(0).num_rows if meta.num_row_groups else None)
        files.append({"path": f"{staging.name}/{split}/{part.name}", "rows": table.num_rows, "bytes": dest.stat().st_size})
        progress(1)
    return files


def _reviewed_copy(folder: Path) -> bool:
    try:
        return "review" in json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def apply(shards: Path, reviews: Path, out: Path, include_rejected: bool = False, strict: bool = False,
          progress: Callable[[str, int, int | None], None] = lambda s, n, t: None) -> ApplySummary:
    """Write the reviewed copy to `out` in a run's layout: `out/shards/{split}/part-*.parquet` (and
    `out/shards-rejected/` with include_rejected) plus `out/manifest.json`, so `--shards out/shards`
    reads like `--shards RUN/shards` with every Parquet reader; all of it is moved into place at once."""
    corpus = Corpus(shards)
    scale = corpus.scale()
    manifest = corpus.manifest()
    rejected = corpus.rejected()
    if out.resolve() in (shards.resolve(), shards.resolve().parent):
        raise ReviewError(f"--out {out} would overwrite the shards or their run; the originals are never rewritten: pick a new folder")
    if out.exists() and any(out.iterdir()) and not _reviewed_copy(out):
        raise ReviewError(f"{out} exists and is not a reviewed copy; pick a new --out (nothing written)")
    if include_rejected and not rejected.root.is_dir():
        raise ReviewError(f"--include-rejected: {rejected.root} does not exist")
    table, meta = load(reviews)
    groups = _group(table)
    summary = ApplySummary(out=out)
    corpora = [(corpus, SHARDS)] + ([(rejected, REJECTED)] if include_rejected else [])
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    progress("apply", 0, sum(len(c.parts()) for c, _ in corpora))
    try:
        files = [entry for source, name in corpora
                 for entry in _write_corpus(source, staging / name, groups, scale, summary, lambda n: progress("apply", n, None))]
        _leftovers(groups, None if include_rejected else rejected, summary)
        if strict and summary.problems:
            raise ReviewError(f"--strict: {sum(summary.problems.values())} annotations cannot be applied "
                              f"({', '.join(f'{k} {n}' for k, n in summary.problems.items())}); nothing written")
        _write_manifest(staging, manifest, corpus, files, meta, reviews, summary)
        replace_folder(staging, out, _reviewed_copy)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.written = True
    return summary


def _leftovers(groups: dict[str, list[dict[str, Any]]], rejected: Corpus | None, summary: ApplySummary) -> None:
    """Annotations whose row is not in the shards written: on a rejected chain, or on no row at all."""
    rejected_ids = set()
    if rejected is not None and rejected.root.is_dir():
        rejected_ids = {row["id"] for row in rejected.read(["id"])}
    for row_id, anns in groups.items():
        if row_id in rejected_ids:
            summary.problem("on a rejected chain", f"{row_id}: {len(anns)} annotation(s) on a rejected chain; "
                            "apply with --include-rejected to write them")
        else:
            tasks = sorted({a["task_id"] for a in anns})
            summary.problem("row id not in the shards", f"{row_id} (task {', '.join(map(str, tasks))}): no such row in "
                            "the shards; were they pushed from another run?")


def _write_manifest(staging: Path, manifest: dict[str, Any], source: Corpus, files: list[dict[str, Any]],
                    meta: dict[str, Any], reviews: Path, summary: ApplySummary) -> None:
    rows: Counter = Counter()
    for entry in files:
        if entry["path"].startswith(f"{SHARDS}/"):
            rows[entry["path"].split("/")[1]] += entry["rows"]
    payload = {
        **{k: v for k, v in manifest.items() if k not in ("shards", "review", "written_at")},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards": {**manifest.get("shards", {}), "rows": dict(rows), "files": files},
        "review": {
            "reviewed_from": str(source.root.resolve()), "reviews": str(reviews.resolve()),
            "source": {k: meta.get(k) for k in ("server", "project_id", "project", "pulled_at", "export_sha256")},
            "counts": summary.as_dict(), "problems": summary.messages[:MAX_MESSAGES],
        },
    }
    (staging / "manifest.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
