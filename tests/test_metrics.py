"""MSA metrics against cases computed by hand, following MMSA's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cotforge.metrics import (
    SIMS_EDGES_2,
    SIMS_EDGES_3,
    SIMS_EDGES_5,
    mosi_metrics,
    msa_metrics,
    sims_class,
    sims_metrics,
    weighted_f1,
)

MOSI_KEYS = [
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_3",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
]
SIMS_KEYS = ["Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"]


def test_mosi_hand_computed() -> None:
    gold = [1.5, -0.6, 0.0, 2.6, -2.2]
    pred = [0.5, 0.0, -0.4, 2.4, -3.5]
    # Has0 (>= 0):  gold T F T T F, pred T T F T F -> 3/5 right.
    #   class T: tp 2 (0, 3), fp 1 (1), fn 1 (2) -> F1 4/6; support 3
    #   class F: tp 1 (4), fp 1 (2), fn 1 (1)    -> F1 2/4; support 2  -> (3*2/3 + 2*1/2) / 5 = 0.6
    # Non0 drops gold 0 (item 2); > 0: gold T F T F, pred T F T F (pred 0.0 is negative here) -> 1.0
    # Acc-7: rint(clip(+-3)) pred 0 0 -0 2 -3 (0.5 -> 0, ties to even), gold 2 -1 0 3 -2 -> 1/5
    # Acc-5: rint(clip(+-2)) pred 0 0 -0 2 -2, gold 2 -1 0 2 -2 -> 3/5
    # Acc-3: rint(clip(+-1)) pred 0 0 -0 1 -1, gold 1 -1 0 1 -1 -> 3/5
    # MAE: (1 + 0.6 + 0.4 + 0.2 + 1.3) / 5 = 0.7 (unclipped: -3.5 counts fully)
    # Corr: means -0.2, 0.26; sum dp*dt 14.95, sum dp^2 18.22, sum dt^2 13.872
    #   -> 14.95 / sqrt(18.22 * 13.872) = 0.94037
    assert mosi_metrics(pred, gold) == {
        "Has0_acc_2": 0.6,
        "Has0_F1_score": 0.6,
        "Non0_acc_2": 1.0,
        "Non0_F1_score": 1.0,
        "Mult_acc_3": 0.6,
        "Mult_acc_5": 0.6,
        "Mult_acc_7": 0.2,
        "MAE": 0.7,
        "Corr": 0.9404,
    }
    assert list(mosi_metrics(pred, gold)) == MOSI_KEYS


def test_mosi_unpredicted_class_and_constant_prediction() -> None:
    gold = [1.0, 2.0, -1.0, -2.0]
    pred = [1.0, 1.0, 1.0, 1.0]
    # Has0 and Non0 alike: all predicted positive, 2/4 right.
    #   class T: tp 2, fp 2, fn 0 -> F1 4/6, support 2; class F never predicted -> F1 0, support 2
    #   -> (2 * 2/3 + 0) / 4 = 1/3
    # Acc-7 and Acc-5: pred 1 1 1 1, gold 1 2 -1 -2 -> 1/4; Acc-3: gold clips to 1 1 -1 -1 -> 2/4
    # MAE: (0 + 1 + 2 + 3) / 4 = 1.5; Corr: prediction constant -> NaN
    m = mosi_metrics(pred, gold)
    assert (m["Has0_acc_2"], m["Has0_F1_score"], m["Non0_acc_2"], m["Non0_F1_score"]) == (0.5, 0.3333, 0.5, 0.3333)
    assert (m["Mult_acc_3"], m["Mult_acc_5"], m["Mult_acc_7"], m["MAE"]) == (0.5, 0.25, 0.25, 1.5)
    assert math.isnan(m["Corr"])


def test_mosi_rounding_is_ties_to_even() -> None:
    pred = [0.5, 2.5, -0.5, 1.5, -2.5]
    gold = [0.0, 2.0, 0.0, 2.0, -2.0]
    # np.round: 0.5 -> 0, 2.5 -> 2, -0.5 -> -0 (== 0), 1.5 -> 2, -2.5 -> -2: every class matches.
    # Rounding half away from zero would give 1 3 -1 2 -3 and only 1/5.
    m = mosi_metrics(pred, gold)
    assert (m["Mult_acc_3"], m["Mult_acc_5"], m["Mult_acc_7"]) == (1.0, 1.0, 1.0)


def test_exact_zero_prediction_is_nonnegative_in_has0_but_negative_in_non0() -> None:
    m = mosi_metrics([0.0, -0.0], [1.0, 2.0])
    # Has0: 0 >= 0 and -0.0 >= 0 -> both right. Non0: 0 > 0 is false -> both wrong.
    assert (m["Has0_acc_2"], m["Non0_acc_2"]) == (1.0, 0.0)


def test_all_zero_gold_gives_nan_non0_instead_of_crashing() -> None:
    m = mosi_metrics([0.5, -0.5, 0.0], [0.0, 0.0, 0.0])
    # Has0: gold all T, pred T F T -> 2/3; class T: tp 2, fp 0, fn 1 -> F1 4/5, support 3;
    #   class F: predicted once, support 0 -> weight 0 -> weighted F1 0.8
    assert (m["Has0_acc_2"], m["Has0_F1_score"]) == (0.6667, 0.8)
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert math.isnan(m["Corr"])


def test_sims_hand_computed() -> None:
    gold = [0.0, 0.2, -0.2, 0.8, -1.0, 0.6]
    pred = [0.0, 0.1, -0.1, 1.4, -0.6, -0.05]
    # Clipped pred: 0 0.1 -0.1 1.0 -0.6 -0.05.
    # 2 classes (0 is negative): pred 0 1 0 1 0 0, gold 0 1 0 1 0 1 -> 5/6
    # 3 classes [-1,-.1] (-.1,.1] (.1,1]: pred 1 1 0 2 0 1 (0.1 on the edge is neutral, -0.1 negative),
    #   gold 1 2 0 2 0 2 -> 4/6
    # 5 classes: pred 2 2 1 4 1 2, gold 2 3 1 4 0 3 -> 3/6
    # F1 on the 2 classes: class 0: tp 3, fp 1, fn 0 -> 6/7; class 1: tp 2, fp 0, fn 1 -> 4/5;
    #   supports 3 and 3 -> (6/7 + 4/5) / 2 = 58/70 = 0.828571
    # MAE on clipped values: (0 + 0.1 + 0.1 + 0.2 + 0.4 + 0.65) / 6 = 0.241667 (unclipped 1.4 would add 0.4)
    # Corr on clipped values: sum dp*dt 104/75, sum dp^2 3269/2400, sum dt^2 154/75 -> 0.829164
    assert sims_metrics(pred, gold) == {
        "Mult_acc_2": 0.8333,
        "Mult_acc_3": 0.6667,
        "Mult_acc_5": 0.5,
        "F1_score": 0.8286,
        "MAE": 0.2417,
        "Corr": 0.8292,
    }
    assert list(sims_metrics(pred, gold)) == SIMS_KEYS


def test_sims_class_edges() -> None:
    values = np.array([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0])
    assert sims_class(values, SIMS_EDGES_2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert sims_class(values, SIMS_EDGES_3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert sims_class(values, SIMS_EDGES_5).tolist() == [0, 0, 1, 2, 2, 3, 4]
    # On the SIMS label grid: {-1, -0.8} {-0.6, -0.4, -0.2} {0} {0.2, 0.4, 0.6} {0.8, 1}.
    grid = np.round(np.arange(-1.0, 1.01, 0.2), 1)
    assert sims_class(grid, SIMS_EDGES_5).tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4]


def test_weighted_f1_with_an_unpredicted_class() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 0, 1])
    # class 0: tp 2, fp 2, fn 0 -> 4/6; class 1: tp 1, fp 1, fn 1 -> 2/4; class 2 never predicted -> 0
    # supports 2, 2, 2 -> (2*2/3 + 2*1/2 + 0) / 6 = 7/18
    assert weighted_f1(y_true, y_pred) == pytest.approx(7 / 18)
    # A class only predicted has support 0 and weighs nothing: class 0 tp 1, fn 1 -> 2/3.
    assert weighted_f1(np.array([0, 0]), np.array([0, 1])) == pytest.approx(2 / 3)


def test_msa_metrics_dispatches() -> None:
    pred, gold = [0.2, -0.4, 0.6], [0.2, -0.6, 0.8]
    assert msa_metrics("mosi", pred, gold) == mosi_metrics(pred, gold)
    assert msa_metrics("mosei", pred, gold) == mosi_metrics(pred, gold)
    assert msa_metrics("sims", pred, gold) == sims_metrics(pred, gold)
    assert msa_metrics("simsv2", pred, gold) == sims_metrics(pred, gold)
    with pytest.raises(ValueError, match="iemocap"):
        msa_metrics("iemocap", pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold", "message"),
    [
        ([1.0], [1.0, 2.0], "1 values but gold has 2"),
        ([], [], "no values"),
        ([math.nan, 1.0], [1.0, 2.0], "finite"),
    ],
)
def test_bad_inputs_are_refused(pred: list[float], gold: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mosi_metrics(pred, gold)
