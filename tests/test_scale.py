"""One polarity definition: every scale's gold polarity is MMSA's Acc-3 bucket, at every edge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cotforge.config import SourceConfig
from cotforge.metrics import SIMS_EDGES_3, mosi_metrics, sims_class, sims_metrics
from cotforge.types import DATASETS, MOSI_SCALE, SIMS_SCALE, Polarity, scale_for_range

N, U, P = Polarity.NEGATIVE, Polarity.NEUTRAL, Polarity.POSITIVE


def mmsa_mosi_bucket(y: float) -> Polarity:
    """MMSA `__eval_mosei_regression`: np.round(np.clip(y, -1, 1)), half to even."""
    return (N, U, P)[int(np.round(np.clip(y, -1.0, 1.0))) + 1]


def mmsa_sims_bucket(y: float) -> Polarity:
    """MMSA `__eval_sims_regression`: class k holds edges[k] < y <= edges[k+1]."""
    return (N, U, P)[int(sims_class(np.clip(np.array([y]), -1.0, 1.0), SIMS_EDGES_3)[0])]


@pytest.mark.parametrize(
    ("y", "expected"),
    [(0.5, U), (-0.5, U), (0.0, U), (-0.0, U), (0.50001, P), (-0.50001, N), (0.49, U), (1.5, P), (-1.5, N),
     (2.5, P), (-3.0, N), (3.0, P), (0.6, P)],
)
def test_mosi_edges(y: float, expected: Polarity) -> None:
    assert MOSI_SCALE.polarity(y) is expected is mmsa_mosi_bucket(y)


@pytest.mark.parametrize(
    ("y", "expected"),
    [(-0.1, N), (0.1, U), (0.0, U), (-0.09, U), (0.11, P), (-0.2, N), (1.0, P), (-1.0, N), (0.1000001, P)],
)
def test_sims_edges(y: float, expected: Polarity) -> None:
    assert SIMS_SCALE.polarity(y) is expected is mmsa_sims_bucket(y)


@given(st.floats(-3, 3, allow_nan=False))
def test_mosi_polarity_is_mmsa_acc3_everywhere(y: float) -> None:
    assert MOSI_SCALE.polarity(y) is mmsa_mosi_bucket(y)


@given(st.floats(-1, 1, allow_nan=False) | st.sampled_from([-0.1, 0.1, -0.8, 0.8, 0.0]))
def test_sims_polarity_is_mmsa_acc3_everywhere(y: float) -> None:
    assert SIMS_SCALE.polarity(y) is mmsa_sims_bucket(y)


def test_the_metrics_acc3_agrees_with_the_polarity() -> None:
    """A prediction in the gold label's polarity bucket scores Acc-3 = 1 and the reverse 0."""
    for scale, metrics, key, edges in ((MOSI_SCALE, mosi_metrics, "Mult_acc_3", [-0.5, 0.5, 0.0, 0.51, -0.51]),
                                       (SIMS_SCALE, sims_metrics, "Mult_acc_3", [-0.1, 0.1, 0.0, 0.11, -0.11])):
        for y in edges:
            same = {P: 0.9, U: 0.0, N: -0.9}[scale.polarity(y)]
            assert metrics([same], [y])[key] == 1.0, (scale, y)


def test_registry_and_config_share_one_scale() -> None:
    assert DATASETS["mosi"].scale is DATASETS["mosei"].scale is MOSI_SCALE
    assert DATASETS["sims"].scale is DATASETS["simsv2"].scale is SIMS_SCALE
    assert SourceConfig(dataset="mosi", root=".").scale() is MOSI_SCALE
    manifest = SourceConfig(dataset="manifest", root="x.csv", label_range=(-1, 1)).scale()
    assert (manifest.low, manifest.high, manifest.metrics, manifest.polarity(-0.1)) == (-1, 1, "sims", N)
    wide = SourceConfig(dataset="manifest", root="x.csv").scale()
    assert (wide.low, wide.high, wide.metrics, wide.polarity(0.5)) == (-3, 3, "mosi", U)
    assert scale_for_range(-1, 1, "en") == SourceConfig(dataset="manifest", root="x.csv", label_range=(-1, 1)).scale()


def test_scale_round_trips_through_a_dict() -> None:
    for scale in (MOSI_SCALE, SIMS_SCALE, scale_for_range(-5, 5, "en")):
        assert type(scale).from_dict(scale.as_dict()) == scale
