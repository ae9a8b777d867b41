"""Which rows reviewers see, and why each was picked.

Reviewer time is the scarce resource. `random` gives an unbiased estimate of the corpus's quality;
`risk` spends the time where the corpus is most likely wrong, which no annotation tool does for you:

- hinted answers (the teacher was told the gold polarity, so its reasoning may be rationalised),
- lenient parses (the answer was only recovered by the lenient JSON rules; read from the run's ledger),
- the largest |teacher - gold| in the split (accepted, but at the edge of the tolerance),
- rare gold classes in the split (where a student will see the fewest examples),
- rows the validator rejected, when they are pushed too.

Both strategies are stratified: the sample is shared between splits in proportion to their size
(each split gets at least one row while the sample allows), so a small test split is not left out.
Every pick carries its reason, which goes into the task for the reviewer and the lead to see.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotforge.store.ledger import open_read_only

WEIGHTS = {"rejected": 4.0, "hinted": 3.0, "lenient": 2.0, "error": 2.0, "rare": 1.5}
"""Risk points per signal; the error and rarity points scale with how extreme the row is in its split."""
TOP_ERROR_SHARE = 0.25
"""A row's error is named as a reason when it is in the top quarter of its split."""
RARE_SHARE = 0.2
"""A gold class is named rare when it holds less than this share of its split."""


@dataclass(frozen=True, slots=True)
class Pick:
    row_id: str
    split: str
    reason: str
    risk: float = 0.0


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """n rows shared between splits in proportion to their sizes (largest remainder), then at least
    one per split while n allows (taken from the largest share), never more than a split holds."""
    splits = sorted(s for s in sizes if sizes[s] > 0)
    total = sum(sizes[s] for s in splits)
    if n >= total:
        return {s: sizes[s] for s in splits}
    exact = {s: n * sizes[s] / total for s in splits}
    share = {s: int(exact[s]) for s in splits}
    for s in sorted(splits, key=lambda s: -(exact[s] - share[s]))[: n - sum(share.values())]:
        share[s] += 1
    if n >= len(splits):
        for s in splits:
            if share[s] == 0:
                share[max(splits, key=lambda t: share[t])] -= 1
                share[s] = 1
    return share


def _by_split(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["split"], []).append(row)
    return groups


def pick_all(rows: list[dict[str, Any]]) -> list[Pick]:
    return [Pick(row["id"], row["split"], "all rows") for row in rows]


def pick_random(rows: list[dict[str, Any]], n: int, seed: int) -> list[Pick]:
    groups = _by_split(rows)
    quota = allocate({s: len(g) for s, g in groups.items()}, n)
    rng = random.Random(seed)
    picks: list[Pick] = []
    for split, group in groups.items():
        for row in rng.sample(group, quota.get(split, 0)):
            picks.append(Pick(row["id"], split, f"random ({quota[split]} of {len(group)} {split} rows)"))
    return picks


def risk_of(row: dict[str, Any], lenient: dict[str, bool],
            class_share: dict[str, float], error_cut: tuple[float, float], max_error: float) -> tuple[float, list[str]]:
    """A row's risk points and the reasons behind them; `error_cut` is the split's (top-quarter, median)
    error: an error is named only when it is in the top quarter and above the median (not when all tie)."""
    points, reasons = 0.0, []
    if row.get("rejected"):
        failed = [r["name"] for r in row.get("validation") or [] if not r["passed"]]
        points += WEIGHTS["rejected"]
        reasons.append(f"rejected by {'+'.join(failed) or 'the validator'}")
    if row.get("hinted"):
        points += WEIGHTS["hinted"]
        reasons.append("hinted answer")
    if lenient.get(row["id"]):
        points += WEIGHTS["lenient"]
        reasons.append("lenient parse")
    error = row.get("error")
    if error is not None and max_error > 0:
        points += WEIGHTS["error"] * error / max_error
        if error >= error_cut[0] and error > error_cut[1]:
            reasons.append(f"|teacher - gold| = {error:.2f} (top {TOP_ERROR_SHARE:.0%} of {row['split']})")
    share = class_share.get(row.get("label_polarity") or "", 1.0)
    points += WEIGHTS["rare"] * (1.0 - share)
    if share < RARE_SHARE:
        reasons.append(f"rare class {row['label_polarity']} ({share:.0%} of {row['split']})")
    return points, reasons


def pick_risk(rows: list[dict[str, Any]], n: int, seed: int, lenient: dict[str, bool] | None = None) -> list[Pick]:
    """The n riskiest rows, stratified per split; ties broken by the seed."""
    lenient = lenient or {}
    groups = _by_split(rows)
    quota = allocate({s: len(g) for s, g in groups.items()}, n)
    rng = random.Random(seed)
    picks: list[Pick] = []
    for split, group in groups.items():
        classes = Counter(row.get("label_polarity") for row in group)
        class_share = {c: k / len(group) for c, k in classes.items() if c}
        errors = sorted(row["error"] for row in group if row.get("error") is not None)
        error_cut = (errors[int(len(errors) * (1 - TOP_ERROR_SHARE))], errors[len(errors) // 2]) if errors else (0.0, float("inf"))
        max_error = errors[-1] if errors else 0.0
        scored = []
        for row in group:
            points, reasons = risk_of(row, lenient, class_share, error_cut, max_error)
            scored.append((-points, rng.random(), row, reasons))
        scored.sort(key=lambda item: (item[0], item[1]))
        for minus_points, _, row, reasons in scored[: quota.get(split, 0)]:
            picks.append(Pick(row["id"], split, "; ".join(reasons) or "low risk (filler)", -minus_points))
    return picks


def lenient_rows(ledger: Path | None) -> dict[str, bool]:
    """Row id -> whether its answer needed the lenient parser, from the run's ledger ({} without one).

    Only read, and through the store's read-only opening, which leaves no SQLite side files in the
    run folder and works on a read-only disk.
    """
    if ledger is None:
        return {}
    flags: dict[str, bool] = {}
    with closing(open_read_only(ledger)) as db:
        for key, text in db.execute("SELECT key, answer FROM clips WHERE answer IS NOT NULL"):
            answer = json.loads(text)
            for sample, index in enumerate(answer.get("chosen") or []):
                flags[f"{key}#{sample}"] = bool(answer["candidates"][index].get("lenient"))
    return flags
