"""Which rows reviewers see: stratified random and risk sampling, and the reason each row was picked."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from review_helpers import demo_run

from cotforge.review.sample import allocate, lenient_rows, pick_random, pick_risk


def _rows(n_train: int = 40, n_test: int = 10) -> list[dict]:
    rows = []
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        rows.append({"id": f"r{i}", "split": split, "hinted": False, "error": 0.1, "validation": [],
                     "label_polarity": "positive" if i % 2 else "negative"})
    return rows


@given(st.dictionaries(st.sampled_from(["train", "valid", "test", "x"]), st.integers(0, 50)), st.integers(0, 200))
def test_allocate_is_proportional_complete_and_bounded(sizes: dict[str, int], n: int) -> None:
    share = allocate(sizes, n)
    assert sum(share.values()) == min(n, sum(sizes.values()))
    assert all(0 <= share[s] <= sizes[s] for s in share)
    nonempty = [s for s in sizes if sizes[s]]
    if n >= len(nonempty):
        assert all(share[s] >= 1 for s in nonempty)


def test_random_is_stratified_and_seeded() -> None:
    rows = _rows()
    picks = pick_random(rows, 10, seed=3)
    assert Counter(p.split for p in picks) == {"train": 8, "test": 2}
    assert [p.row_id for p in picks] == [p.row_id for p in pick_random(rows, 10, seed=3)]
    assert [p.row_id for p in picks] != [p.row_id for p in pick_random(rows, 10, seed=4)]
    assert all(p.reason.startswith("random (8 of 40 train") or p.split == "test" for p in picks)


def test_risk_picks_hinted_lenient_large_errors_and_rare_classes_first_with_reasons() -> None:
    rows = _rows()
    rows[0]["hinted"] = True
    rows[2]["error"] = 0.95
    rows[4]["id"] = "lenient-one"
    rows[6]["label_polarity"] = "neutral"  # the only neutral in train: rare
    rows[8].update(rejected=True, validation=[{"name": "score_close", "passed": False, "reason": "too far"}])
    picks = {p.row_id: p for p in pick_risk(rows, 6, seed=0, lenient={"lenient-one": True})}
    assert Counter(p.split for p in picks.values()) == {"train": 5, "test": 1}
    assert "hinted answer" in picks["r0"].reason
    assert "|teacher - gold| = 0.95" in picks["r2"].reason
    assert "lenient parse" in picks["lenient-one"].reason
    assert "rare class neutral (2% of train)" in picks["r6"].reason
    assert "rejected by score_close" in picks["r8"].reason
    ranked = pick_risk(rows, 50, seed=0, lenient={"lenient-one": True})
    assert ranked[0].row_id == "r8"  # rejected outranks hinted, which outranks the rest
    assert ranked[-1].reason == "low risk (filler)"


def test_lenient_flags_come_from_the_run_ledger_read_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = demo_run(tmp_path_factory)
    before = sorted(p.name for p in run.iterdir())
    flags = lenient_rows(run / "ledger.sqlite")
    assert flags and all(row_id.endswith("#0") for row_id in flags)
    assert sorted(p.name for p in run.iterdir()) == before
    assert lenient_rows(None) == {}
