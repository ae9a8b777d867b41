"""`cotforge review report`: how much was reviewed, what reviewers said, and how far they agree.

Read from a pulled folder (what `review pull` wrote), so a report can be made again at any time
without the server. Agreement between reviewers is measured only where a task was annotated by two
or more different people: pairwise verdict agreement and Cohen's kappa over all pairs, polarity
agreement, and the mean |score difference|. Teacher-vs-reviewer agreement uses each row's latest
annotation; since the form is pre-filled with the teacher's answer, the share of scores left
unchanged is reported beside it (anchoring makes agreement look higher than it is).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cotforge.review.corpus import split_order  # noqa: E402
from cotforge.review.labeling import VERDICTS  # noqa: E402
from cotforge.review.pull import EXPORT_FILE, load  # noqa: E402

REPORT_FILE = "review_report.md"
PLOT_FILE = "review.png"


@dataclass
class ReviewStats:
    tasks: Counter = field(default_factory=Counter)
    reviewed: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    shard_rows: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)  # (split, verdict)
    double: int = 0
    pairs: int = 0
    verdict_agree: float | None = None
    verdict_kappa: float | None = None
    polarity_agree: float | None = None
    score_gap: float | None = None
    teacher_pairs: list[tuple[float, float]] = field(default_factory=list)
    teacher_polarity_agree: float | None = None
    unchanged_scores: float | None = None
    source: dict[str, Any] = field(default_factory=dict)


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa over rating pairs (both orders of each pair, so the raters are interchangeable)."""
    items = pairs + [(b, a) for a, b in pairs]
    if not items:
        return None
    observed = sum(a == b for a, b in items) / len(items)
    share = Counter(a for a, _ in items)
    expected = sum((n / len(items)) ** 2 for n in share.values())
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compute(annotations: list[dict[str, Any]], tasks: list[dict[str, Any]], shard_rows: Counter | None = None) -> ReviewStats:
    stats = ReviewStats(shard_rows=shard_rows or Counter())
    for task in tasks:
        data = task.get("data") or {}
        if "row_id" in data:
            stats.tasks[data.get("split") or "?"] += 1
    by_task: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_task.setdefault(ann["task_id"], []).append(ann)
    verdict_pairs, polarity_pairs, score_gaps = [], [], []
    polarity_same = []
    unchanged = []
    for anns in by_task.values():
        split = anns[0]["split"] or "?"
        done = [a for a in anns if not a["cancelled"] and a["verdict"]]
        if not done:
            stats.skipped[split] += 1
            continue
        stats.reviewed[split] += 1
        latest = max(done, key=lambda a: (a["reviewed_at"] or "", a["annotation_id"]))
        stats.verdicts[(split, latest["verdict"])] += 1
        if latest["score"] is not None and latest["teacher_score"] is not None:
            stats.teacher_pairs.append((latest["teacher_score"], latest["score"]))
            unchanged.append(abs(latest["score"] - latest["teacher_score"]) < 1e-9)
        if latest["polarity"] and latest["teacher_polarity"]:
            polarity_same.append(latest["polarity"] == latest["teacher_polarity"])
        people = {}
        for ann in sorted(done, key=lambda a: (a["reviewed_at"] or "", a["annotation_id"])):
            people[ann["reviewer"]] = ann  # each reviewer's latest
        if len(people) < 2:
            continue
        stats.double += 1
        for a, b in combinations(people.values(), 2):
            stats.pairs += 1
            verdict_pairs.append((a["verdict"], b["verdict"]))
            if a["polarity"] and b["polarity"]:
                polarity_pairs.append(a["polarity"] == b["polarity"])
            if a["score"] is not None and b["score"] is not None:
                score_gaps.append(abs(a["score"] - b["score"]))
    if verdict_pairs:
        stats.verdict_agree = _mean([float(a == b) for a, b in verdict_pairs])
        stats.verdict_kappa = cohen_kappa(verdict_pairs)
    stats.polarity_agree = _mean([float(x) for x in polarity_pairs])
    stats.score_gap = _mean(score_gaps)
    stats.teacher_polarity_agree = _mean([float(x) for x in polarity_same])
    stats.unchanged_scores = _mean([float(x) for x in unchanged])
    return stats


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pearson(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs, strict=True)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def _split_row(stats: ReviewStats, split: str, splits: list[str]) -> str:
    chosen = splits if split == "all" else [split]
    rows, tasks, reviewed, skipped = (sum(counter.get(s, 0) for s in chosen)
                                      for counter in (stats.shard_rows, stats.tasks, stats.reviewed, stats.skipped))
    verdicts = [sum(stats.verdicts.get((s, verdict), 0) for s in chosen) for verdict in VERDICTS]
    share = f"{reviewed / rows:.1%}" if rows else (f"{reviewed / tasks:.0%} of tasks" if tasks else "n/a")
    return f"| {split} | {rows or 'n/a'} | {tasks} | {reviewed} | {share} | " + " | ".join(map(str, verdicts)) + f" | {skipped} |"


def markdown(stats: ReviewStats) -> str:
    splits = split_order(set(stats.tasks) | set(stats.shard_rows) | set(stats.reviewed))
    lines = ["# Review report", ""]
    if stats.source:
        src = stats.source
        lines += [f"Project {src.get('project')!r} (id {src.get('project_id')}) on {src.get('server')}, pulled {src.get('pulled_at')}.", ""]
    lines += ["| split | shard rows | tasks | reviewed | reviewed share | " + " | ".join(VERDICTS) + " | skipped only |",
              "|" + "---|" * (6 + len(VERDICTS))]
    lines += [_split_row(stats, split, splits) for split in [*splits, "all"]]
    lines += [
        "", "## Agreement between reviewers", "",
        f"Tasks annotated by two or more reviewers: {stats.double} ({stats.pairs} pairs).", "",
        f"- verdict agreement: {_pct(stats.verdict_agree)} (Cohen's kappa {_num(stats.verdict_kappa)})",
        f"- polarity agreement: {_pct(stats.polarity_agree)}",
        f"- mean |score difference|: {_num(stats.score_gap)}",
        "", "## Teacher vs reviewer", "",
        f"Rows with a reviewer score: {len(stats.teacher_pairs)}.", "",
        f"- mean |reviewer - teacher| score: {_num(_mean([abs(a - b) for a, b in stats.teacher_pairs]))}",
        f"- Pearson r: {_num(_pearson(stats.teacher_pairs))}",
        f"- polarity agreement: {_pct(stats.teacher_polarity_agree)}",
        f"- scores left as pre-filled: {_pct(stats.unchanged_scores)} (the form starts from the teacher's answer; "
        "agreement is inflated by anchoring)",
        "", f"![verdicts and scores]({PLOT_FILE})", "",
    ]
    return "\n".join(lines)


def plot(stats: ReviewStats, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    splits = split_order({s for s, _ in stats.verdicts} | set(stats.reviewed)) or ["-"]
    bottom = [0] * len(splits)
    for verdict, colour in zip(VERDICTS, ("#4c9a2a", "#e0a100", "#c0392b"), strict=True):
        heights = [stats.verdicts.get((s, verdict), 0) for s in splits]
        left.bar(splits, heights, bottom=bottom, label=verdict, color=colour)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    left.set_title("verdicts per split (latest annotation)")
    left.set_ylabel("rows")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend()
    if stats.teacher_pairs:
        xs, ys = zip(*stats.teacher_pairs, strict=True)
        lo, hi = min(xs + ys) - 0.2, max(xs + ys) + 0.2
        right.plot([lo, hi], [lo, hi], color="#999", linewidth=1)
        right.scatter(xs, ys, s=18, alpha=0.7)
    right.set_title("teacher vs reviewer score")
    right.set_xlabel("teacher score")
    right.set_ylabel("reviewer score")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(reviews: Path, out: Path, shard_rows: Counter | None = None) -> tuple[Path, Path, ReviewStats]:
    table, meta = load(reviews)
    export = reviews / EXPORT_FILE
    tasks = json.loads(export.read_text(encoding="utf-8")) if export.is_file() else []
    stats = compute(table.to_pylist(), tasks, shard_rows)
    stats.source = meta
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / REPORT_FILE, out / PLOT_FILE
    plot(stats, png)
    md.write_text(markdown(stats), encoding="utf-8")
    return md, png, stats
