"""RUN/report/: summary.md and PNG plots a lead can read in a minute.

Plots: gold vs teacher score, polarity confusion, rejection reasons, acceptance by gold-score
bucket (where the teacher is weak), and throughput over time. The teacher's MSA metrics are given
twice: on the accepted chains (what the corpus teaches) and on every first answer (how good the
teacher is before validation picks).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cotforge.config import PipelineConfig  # noqa: E402
from cotforge.metrics import msa_metrics  # noqa: E402
from cotforge.types import reason_kind  # noqa: E402
from cotforge.store.run import RunDir  # noqa: E402
from cotforge.types import Scale  # noqa: E402

POLARITIES = ("negative", "neutral", "positive")
TERMINAL = ("accepted", "rejected", "failed", "held_out")


def _first_answer(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The teacher's first parsed, unhinted sample: its zero-shot judgement of the clip."""
    return next((c for c in answer.get("candidates", []) if not c["hinted"] and c["score"] is not None), None)


def _load(run_dir: RunDir) -> list[dict[str, Any]]:
    with run_dir.open_ledger(read_only=True) as ledger:
        rows = [row for row in ledger.rows() if row[3] != "removed"]
    out = []
    for key, dataset, split, state, stage, reason, ref, answer, judged in rows:
        out.append({
            "key": key, "dataset": dataset, "split": split, "state": state, "stage": stage, "reason": reason,
            "label": json.loads(ref).get("label"), "answer": json.loads(answer) if answer else None, "judged_at": judged,
        })
    return out


def _metrics_table(scale: Scale, pairs: list[tuple[float, float]]) -> dict[str, float]:
    if len(pairs) < 2:
        return {}
    pred, gold = zip(*pairs, strict=True)
    return msa_metrics(scale, list(pred), list(gold))


def write_report(cfg: PipelineConfig, run: Path) -> Path:
    run_dir = RunDir(run)
    folder = run_dir.report
    folder.mkdir(parents=True, exist_ok=True)
    rows = _load(run_dir)
    summary = folder / "summary.md"
    stamp = folder / ".inputs"
    faults = run_dir.totals("client")
    digest = hashlib.sha256(json.dumps([rows, cfg.fingerprint(), faults.to_dict()], sort_keys=True, default=str).encode()).hexdigest()
    if summary.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return summary  # nothing changed since the last report: plotting again would only cost time
    dataset = cfg.source.dataset
    scale = cfg.source.scale()
    judged = [r for r in rows if r["answer"] is not None and r["state"] in ("accepted", "rejected")]
    accepted = [(r["answer"]["score"], r["label"]) for r in judged if r["state"] == "accepted"]
    first = [(f["score"], r["label"]) for r in judged if (f := _first_answer(r["answer"]))]
    simulated = any(str((r["answer"] or {}).get("teacher_model") or "").startswith("sim/") for r in judged)
    plots = {
        "scores.png": _plot_scores(first, accepted, (scale.low, scale.high)),
        "confusion.png": _plot_confusion(judged, scale),
        "reasons.png": _plot_reasons(rows),
        "acceptance_by_gold.png": _plot_acceptance(judged, (scale.low, scale.high)),
        "throughput.png": _plot_throughput(judged),
    }
    written = {}
    for name, figure in plots.items():
        if figure is not None and simulated:
            for ax in figure.axes:
                ax.set_title(f"{ax.get_title()} (simulated teacher)")
        if figure is not None:
            figure.savefig(folder / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
            written[name] = True
    summary.write_text(_summary(cfg, rows, judged, accepted, first, dataset, scale, written, faults), encoding="utf-8")
    stamp.write_text(digest)
    return summary


def _plot_scores(first, accepted, score_range):
    if not first:
        return None
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter([g for _, g in first], [p for p, _ in first], s=14, alpha=0.5, label="first answer", color="tab:gray")
    if accepted:
        ax.scatter([g for _, g in accepted], [p for p, _ in accepted], s=16, alpha=0.8, label="accepted", color="tab:blue")
    low, high = score_range
    ax.plot([low, high], [low, high], "k--", lw=1)
    pad = (high - low) * 0.04
    ax.set(xlabel="gold label", ylabel="teacher score", title="gold vs teacher score",
           xlim=(low - pad, high + pad), ylim=(low - pad, high + pad))
    ax.legend(loc="upper left")
    return fig


def _plot_confusion(judged, scale):
    pairs = [(scale.polarity(r["label"]).value, f["polarity"]) for r in judged if (f := _first_answer(r["answer"]))]
    if not pairs:
        return None
    matrix = np.zeros((3, 3), dtype=int)
    for gold, said in pairs:
        matrix[POLARITIES.index(gold), POLARITIES.index(said)] += 1
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="black")
    ax.set(xticks=range(3), yticks=range(3), xticklabels=POLARITIES, yticklabels=POLARITIES,
           xlabel="teacher (first answer)", ylabel="gold", title="polarity confusion")
    return fig


def _plot_reasons(rows):
    counts = Counter(f"{r['stage']}: {reason_kind(r['reason'])}" for r in rows if r["state"] in ("failed", "rejected"))
    if not counts:
        return None
    items = counts.most_common(12)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:red")
    ax.set(xlabel="clips", title="why clips were rejected or failed")
    return fig


def _plot_acceptance(judged, score_range):
    if not judged:
        return None
    low, high = score_range
    edges = np.linspace(low, high, 7)
    buckets = np.clip(np.digitize([r["label"] for r in judged], edges[1:-1]), 0, len(edges) - 2)
    total = np.bincount(buckets, minlength=len(edges) - 1)
    ok = np.bincount(buckets, weights=[r["state"] == "accepted" for r in judged], minlength=len(edges) - 1)
    share = np.divide(ok, total, out=np.zeros_like(ok), where=total > 0)
    labels = [f"{a:+.1f}..{b:+.1f}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, share, color="tab:green")
    for i, n in enumerate(total):
        ax.text(i, share[i] + 0.02, f"n={int(n)}", ha="center", fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="accepted share", xlabel="gold label bucket", title="acceptance by gold score")
    ax.tick_params(axis="x", labelsize=8)
    return fig


def _plot_throughput(judged):
    times = sorted(r["judged_at"] for r in judged if r["judged_at"] is not None)
    if len(times) < 2:
        return None
    t = np.array(times) - times[0]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(t, np.arange(1, len(t) + 1), color="tab:purple")
    ax.set(xlabel="seconds since first judged clip", ylabel="clips judged", title="throughput")
    return fig


def _fmt(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def _summary(cfg, rows, judged, accepted, first, dataset, scale, written, faults) -> str:
    states = Counter(r["state"] for r in rows)
    splits = Counter((r["split"], r["state"]) for r in rows)
    tokens_p = sum((r["answer"] or {}).get("prompt_tokens") or 0 for r in rows)
    tokens_c = sum((r["answer"] or {}).get("completion_tokens") or 0 for r in rows)
    hinted = sum(1 for r in judged if r["state"] == "accepted" and r["answer"].get("hinted"))
    models = sorted({r["answer"].get("teacher_model") for r in judged if r["answer"].get("teacher_model")})
    lines = [
        f"# cotforge run report: {cfg.name}",
        "",
        f"- dataset: **{dataset}**, teacher: **{', '.join(models) or '-'}**"
        + (" (simulated: not a model)" if any(m.startswith("sim/") for m in models) else ""),
        f"- clips: **{len(rows)}** = accepted {states['accepted']} + rejected {states['rejected']} + failed {states['failed']}"
        f" + held out {states['held_out']}"
        + (f" + unfinished {unfinished}" if (unfinished := len(rows) - sum(states[s] for s in TERMINAL)) else ""),
        f"- acceptance: **{states['accepted']} of {len(judged)} judged clips ({states['accepted'] / max(len(judged), 1):.1%})**;"
        f" {states['failed']} of {len(rows)} clips failed before a judgement; {hinted} accepted only with the polarity hint",
        f"- tokens: {tokens_p:,} prompt + {tokens_c:,} completion",
        f"- teacher retries: {', '.join(f'{k} {n}' for k, n in sorted(faults.group('retries').items())) or 'none'};"
        f" requests given up: {', '.join(f'{k} {n}' for k, n in sorted(faults.group('failures').items())) or 'none'}",
        "",
        "## Per split",
        "",
        "| split | accepted | rejected | failed | held out |",
        "|---|---|---|---|---|",
    ]
    for split in sorted({r["split"] for r in rows}):
        lines.append(f"| {split} | {splits[(split, 'accepted')]} | {splits[(split, 'rejected')]} | {splits[(split, 'failed')]}"
                     f" | {splits[(split, 'held_out')]} |")
    lines += ["", "## Teacher metrics (MMSA definitions)", ""]
    m_all, m_acc = _metrics_table(scale, first), _metrics_table(scale, accepted)
    if m_all:
        keys = list(m_all)
        lines += ["| answers | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        lines.append(f"| first answer, all judged clips | {len(first)} | " + " | ".join(_fmt(m_all[k]) for k in keys) + " |")
        if m_acc:
            lines.append(f"| accepted chains | {len(accepted)} | " + " | ".join(_fmt(m_acc[k]) for k in keys) + " |")
    else:
        lines.append("(too few judged clips for metrics)")
    reasons = Counter(f"{r['stage']}: {reason_kind(r['reason'])}" for r in rows if r["state"] in ("failed", "rejected"))
    lines += ["", "## Rejections and failures", ""]
    lines += [f"- {n} x {reason}" for reason, n in reasons.most_common()] or ["- none"]
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in written]
    return "\n".join(lines) + "\n"
