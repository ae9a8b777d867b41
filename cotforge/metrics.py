"""MSA metrics exactly as MMSA computes them (thuiar/MMSA `utils/metricsTop.py`, regression mode).

Numbers in papers come from that code, so cotforge reproduces it rather than a textbook variant:
`np.round` (ties to even) for the multi-class accuracies, weighted F1 as
`sklearn.metrics.f1_score(average="weighted")`, Pearson through `np.corrcoef`, every value through
Python `round(x, 4)`. Values are fractions (papers print them x100, MAE included).

Deviations, all where MMSA has no defined answer:
- MOSI/MOSEI also return `Mult_acc_3` (clip to [-1, 1], round), which MMSA computes but drops.
- All-zero gold labels: MMSA crashes (IndexError); here the Non0 metrics are NaN.
- Corr is NaN whenever either side is constant. `np.corrcoef` may instead return rounding noise
  (constant 0.1s have a non-zero float variance), which MMSA then prints as a correlation.
- Inputs are float64 (MMSA: float32); on the label grids the rounded metrics are the same.
- Rounding is Python `round` on a float, exact on the binary value. MMSA calls `round` on numpy
  scalars for MAE, Corr and Mult_acc, which rounds x * 10**4 half-to-even instead; the two differ by
  1e-4 only when the fifth decimal is an exact tie (an MAE of 2.00625), as float32 and float64 do.
- Non-finite predictions are refused: an eval must first decide what an unparsable answer scores.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cotforge.types import DATASETS, Scale

Array = NDArray[np.float64]

# SIMS class k holds edges[k] < x <= edges[k + 1]; so 0 is negative in the 2-class split.
SIMS_EDGES_2 = (-1.01, 0.0, 1.01)
SIMS_EDGES_3 = (-1.01, -0.1, 0.1, 1.01)
SIMS_EDGES_5 = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)


def _arrays(pred: ArrayLike, gold: ArrayLike) -> tuple[Array, Array]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(gold, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} values but gold has {t.size}")
    if p.size == 0:
        raise ValueError("no values to score")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("pred and gold must be finite: map unparsable answers to a score before computing metrics")
    return p, t


def weighted_f1(y_true: NDArray[np.generic], y_pred: NDArray[np.generic]) -> float:
    """`sklearn.metrics.f1_score(y_true, y_pred, average="weighted")` with zero_division=0.

    Classes are those present in either array; each class's F1 = 2tp / (2tp + fp + fn), 0 when it
    is never predicted nor true-positive; the average weighs each class by its count in y_true.
    """
    total = 0.0
    for label in np.union1d(y_true, y_pred):
        true, predicted = y_true == label, y_pred == label
        tp = np.count_nonzero(true & predicted)
        denominator = 2 * tp + np.count_nonzero(~true & predicted) + np.count_nonzero(true & ~predicted)
        total += (2 * tp / denominator if denominator else 0.0) * np.count_nonzero(true)
    return total / y_true.size


def _accuracy(a: NDArray[np.generic], b: NDArray[np.generic]) -> float:
    return float(np.mean(a == b))


def _rounded_acc(p: Array, t: Array, bound: float) -> float:
    return _accuracy(np.round(np.clip(p, -bound, bound)), np.round(np.clip(t, -bound, bound)))


def _corr(p: Array, t: Array) -> float:
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        return math.nan
    return float(np.corrcoef(p, t)[0, 1])


def _round4(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in metrics.items()}


def mosi_metrics(pred: ArrayLike, gold: ArrayLike) -> dict[str, float]:
    """CMU-MOSI / CMU-MOSEI metrics, MMSA's `__eval_mosei_regression` plus Mult_acc_3.

    Has0 splits negative vs non-negative over all items (a prediction of exactly 0 is non-negative);
    Non0 drops items whose gold is exactly 0 and splits negative vs positive (a prediction of 0 is
    then negative). MAE and Corr use the unclipped values.
    """
    p, t = _arrays(pred, gold)
    nonzero = t != 0
    if nonzero.any():
        non0_true, non0_pred = t[nonzero] > 0, p[nonzero] > 0
        non0_acc, non0_f1 = _accuracy(non0_pred, non0_true), weighted_f1(non0_true, non0_pred)
    else:
        non0_acc = non0_f1 = math.nan
    return _round4(
        {
            "Has0_acc_2": _accuracy(p >= 0, t >= 0),
            "Has0_F1_score": weighted_f1(t >= 0, p >= 0),
            "Non0_acc_2": non0_acc,
            "Non0_F1_score": non0_f1,
            "Mult_acc_3": _rounded_acc(p, t, 1.0),
            "Mult_acc_5": _rounded_acc(p, t, 2.0),
            "Mult_acc_7": _rounded_acc(p, t, 3.0),
            "MAE": float(np.mean(np.abs(p - t))),
            "Corr": _corr(p, t),
        }
    )


def sims_class(values: Array, edges: tuple[float, ...]) -> NDArray[np.intp]:
    """Class index of each value under MMSA's SIMS buckets: edges[k] < x <= edges[k + 1]."""
    return np.searchsorted(np.asarray(edges), values, side="left") - 1


def sims_metrics(pred: ArrayLike, gold: ArrayLike) -> dict[str, float]:
    """CH-SIMS / CH-SIMS v2 metrics, MMSA's `__eval_sims_regression`.

    Both sides are clipped to [-1, 1] first, and MAE and Corr use the clipped values.
    """
    p, t = _arrays(pred, gold)
    p, t = np.clip(p, -1.0, 1.0), np.clip(t, -1.0, 1.0)
    p2, t2 = sims_class(p, SIMS_EDGES_2), sims_class(t, SIMS_EDGES_2)
    return _round4(
        {
            "Mult_acc_2": _accuracy(p2, t2),
            "Mult_acc_3": _accuracy(sims_class(p, SIMS_EDGES_3), sims_class(t, SIMS_EDGES_3)),
            "Mult_acc_5": _accuracy(sims_class(p, SIMS_EDGES_5), sims_class(t, SIMS_EDGES_5)),
            "F1_score": weighted_f1(t2, p2),
            "MAE": float(np.mean(np.abs(p - t))),
            "Corr": _corr(p, t),
        }
    )


def msa_metrics(scale: Scale | str, pred: ArrayLike, gold: ArrayLike) -> dict[str, float]:
    """The metrics MMSA reports for a scale's metric set (or a dataset's): MOSI/MOSEI -> mosi_metrics,
    SIMS/SIMS v2 -> sims_metrics."""
    if isinstance(scale, str):
        if scale not in DATASETS:
            raise ValueError(f"no MSA metrics for dataset {scale!r}: one of {', '.join(DATASETS)}")
        scale = DATASETS[scale].scale
    return mosi_metrics(pred, gold) if scale.metrics == "mosi" else sims_metrics(pred, gold)
