"""Pulled annotations -> a reviewed copy, and the report, without a server: the export is built in
Label Studio's snapshot shape (as the live test checks against the real server)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from review_helpers import (
    annotation,
    copy_run,
    demo_run,
    export_task,
    ui_result,
    write_pulled,
)

from cotforge.dc import parse_student
from cotforge.review import ReviewError
from cotforge.review.apply import apply
from cotforge.review.labeling import rationale_texts
from cotforge.review.pull import load, normalise
from cotforge.review.report import cohen_kappa, report

USERS = {1: "ann@example.org", 2: "bob@example.org"}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_run(demo_run(tmp_path_factory), tmp_path_factory.mktemp("review-apply")).parent


@pytest.fixture(scope="module")
def rows(run: Path) -> dict[str, dict]:
    return {row["id"]: row for row in pq.read_table(run / "shards").to_pylist()}


@pytest.fixture(scope="module")
def rejected_row(run: Path) -> dict:
    return pq.read_table(run / "shards-rejected").to_pylist()[0]


@pytest.fixture(scope="module")
def pulled(run: Path, rows: dict[str, dict], rejected_row: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    ids = sorted(rows)
    a, b, c, d, e, f, g = (rows[i] for i in ids[:7])
    disc, cal = rationale_texts(b["target"])
    edited_disc = disc.replace("Audio: ", "Audio: (re-listened) ")
    new_score = round(b["teacher_score"] - 0.4, 2) if b["teacher_score"] > 0 else round(b["teacher_score"] + 0.4, 2)
    tasks = [
        export_task(1, a, [annotation(11, 1, ui_result(a, "accept", rating=5))]),
        export_task(2, b, [annotation(12, 2, ui_result(b, "edit", rating=2, disc=edited_disc, cal="Tighter reasoning.", score=new_score))]),
        export_task(3, c, [annotation(13, 3, ui_result(c, "reject", rating=1, comment="speaker is sarcastic"))]),
        export_task(4, d, [annotation(14, 4, [], cancelled=True)]),
        export_task(5, e, [annotation(15, 5, ui_result(e, "accept"), user=1, when="2026-01-01T10:00:00Z"),
                           annotation(16, 5, ui_result(e, "reject", rating=2), user=2, when="2026-01-01T11:00:00Z")]),
        export_task(6, f, [annotation(17, 6, ui_result(f, "accept", score=9.0))]),
        export_task(7, g, [annotation(18, 7, ui_result(g, "edit", disc="   "))]),
        export_task(8, {**a, "id": "mosi/nowhere/0#0"}, [annotation(19, 8, ui_result(a, "accept"))]),
        export_task(9, rejected_row, [annotation(20, 9, ui_result(rejected_row, "accept"))]),
        {"id": 10, "data": {"text": "a task someone imported by hand"}, "annotations": [annotation(21, 10, [])]},
    ]
    folder = write_pulled(tmp_path_factory.mktemp("pulled") / "pulled", tasks, USERS)
    names = {"accept": a["id"], "edit": b["id"], "reject": c["id"], "skip": d["id"], "twice": e["id"], "range": f["id"],
             "empty": g["id"], "rejected": rejected_row["id"], "new_score": new_score, "edited_disc": edited_disc}
    return folder, names


def test_normalise_reads_every_annotation_and_leaves_out_tasks_without_a_row_id(pulled) -> None:
    folder, names = pulled
    table, meta = load(folder)
    assert table.num_rows == 10 and meta["project"] == "t"
    by_id = {r["annotation_id"]: r for r in table.to_pylist()}
    assert by_id[14]["cancelled"] and by_id[14]["verdict"] is None
    assert by_id[12]["verdict"] == "edit" and by_id[12]["score"] == names["new_score"] and by_id[12]["rating"] == 2
    assert by_id[13]["comment"] == "speaker is sarcastic" and by_id[16]["reviewer"] == "bob@example.org"
    _, orphans = normalise(json.loads((folder / "export.json").read_text()), USERS)
    assert orphans == 1


def test_apply_writes_a_reviewed_copy_row_by_row_and_never_touches_the_originals(run, rows, pulled, tmp_path: Path) -> None:
    folder, names = pulled
    before = _digests(run)
    summary = apply(run / "shards", folder, tmp_path / "reviewed")
    assert _digests(run) == before
    out = {row["id"]: row for row in pq.read_table(tmp_path / "reviewed" / "shards").to_pylist()}
    assert set(out) == set(rows)

    accept = out[names["accept"]]
    assert accept["review"]["verdict"] == "accept" and accept["review"]["rating"] == 5 and not accept["review"]["edited"]
    assert accept["review"]["reviewer"] == "ann@example.org" and accept["target"] == rows[names["accept"]]["target"]

    edit = out[names["edit"]]
    assert edit["review"]["edited"] and edit["review"]["verdict"] == "edit"
    assert edit["review"]["teacher_target"] == rows[names["edit"]]["target"] != edit["target"]
    parsed = parse_student(edit["target"])
    assert parsed.format_ok and parsed.score == pytest.approx(names["new_score"])
    assert parsed.calibration == "Tighter reasoning." and parsed.cues.audio.startswith("(re-listened) ")
    assert edit["review"]["rationale"]["calibration"]["score"] == pytest.approx(names["new_score"])
    assert edit["rationale"] == rows[names["edit"]]["rationale"]  # the teacher's own answer stays as it was

    reject = out[names["reject"]]
    assert reject["review"]["verdict"] == "reject" and reject["review"]["comment"] == "speaker is sarcastic"
    assert reject["target"] == rows[names["reject"]]["target"]  # rejected rows stay: the trainer decides

    assert out[names["skip"]]["review"] is None  # cancelled = unreviewed
    twice = out[names["twice"]]["review"]
    assert twice["verdict"] == "reject" and twice["reviewer"] == "bob@example.org"  # latest wins
    assert [a["annotation_id"] for a in twice["annotations"]] == [15, 16]  # all kept
    assert out[names["range"]]["review"] is None and out[names["empty"]]["review"] is None  # not applied half-way

    assert summary.problems == {"score out of range": 1, "edit with empty text": 1, "row id not in the shards": 1,
                                "on a rejected chain": 1}
    assert any("score 9 is outside [-3, 3]" in m for m in summary.messages)
    assert any("mosi/nowhere/0#0 (task 8)" in m for m in summary.messages)
    assert (summary.edited, summary.cancelled, summary.several, summary.only_cancelled) == (1, 1, 1, 1)
    manifest = json.loads((tmp_path / "reviewed" / "manifest.json").read_text())
    assert manifest["review"]["counts"]["problems"]["score out of range"] == 1
    assert manifest["review"]["source"]["project"] == "t" and manifest["scale"]["high"] == 3.0
    assert sum(manifest["shards"]["rows"].values()) == len(rows)
    assert not (tmp_path / "reviewed" / "shards-rejected").exists()


def test_include_rejected_writes_the_rejected_chains_beside(run, pulled, tmp_path: Path) -> None:
    folder, names = pulled
    summary = apply(run / "shards", folder, tmp_path / "reviewed", include_rejected=True)
    rejected = {row["id"]: row for row in pq.read_table(tmp_path / "reviewed" / "shards-rejected").to_pylist()}
    assert len(rejected) == 2 and rejected[names["rejected"]]["review"]["verdict"] == "accept"
    assert "on a rejected chain" not in summary.problems


def test_strict_writes_nothing_and_a_foreign_out_folder_is_never_replaced(run, pulled, tmp_path: Path) -> None:
    folder, _ = pulled
    with pytest.raises(ReviewError, match="--strict: 4 annotations cannot be applied"):
        apply(run / "shards", folder, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(ReviewError, match="not a reviewed copy"):
        apply(run / "shards", folder, precious)
    assert (precious / "keep.txt").read_text() == "mine"
    with pytest.raises(ReviewError, match="never rewritten"):
        apply(run / "shards", folder, run)


def test_a_second_round_keeps_the_first_rounds_reviews(run, rows, pulled, tmp_path: Path) -> None:
    folder, names = pulled
    apply(run / "shards", folder, tmp_path / "round1")
    accept = rows[names["accept"]]
    again = write_pulled(tmp_path / "pulled2", [export_task(31, accept, [annotation(41, 31, ui_result(accept, "reject", rating=1),
                                                                                      when="2026-02-01T00:00:00Z")])], USERS)
    summary = apply(tmp_path / "round1" / "shards", again, tmp_path / "round2")
    out = {row["id"]: row for row in pq.read_table(tmp_path / "round2" / "shards").to_pylist()}
    assert out[names["accept"]]["review"]["verdict"] == "reject"
    assert [a["annotation_id"] for a in out[names["accept"]]["review"]["annotations"]] == [11, 41]
    assert out[names["edit"]]["review"]["edited"] and out[names["edit"]]["target"] != rows[names["edit"]]["target"]
    assert summary.kept_from_earlier == 3  # edit, reject and the twice-annotated row


def test_report_counts_verdicts_agreement_and_writes_a_plot(run, pulled, tmp_path: Path) -> None:
    folder, _ = pulled
    md, png, stats = report(folder, tmp_path / "report")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert "| all |" in text and "Cohen's kappa" in text
    assert stats.double == 1 and stats.pairs == 1 and stats.verdict_agree == 0.0
    assert sum(stats.reviewed.values()) == 8 and sum(stats.skipped.values()) == 1  # every task with a verdict; the cancelled one
    assert cohen_kappa([("a", "a"), ("b", "b")]) == 1.0 and cohen_kappa([("a", "b"), ("b", "a")]) < 0


def test_an_edit_verdict_on_an_unchanged_prefill_leaves_the_target(run, rows, tmp_path: Path) -> None:
    row = rows[sorted(rows)[0]]
    pulled = write_pulled(tmp_path / "pulled", [export_task(1, row, [annotation(1, 1, ui_result(row, "edit"))])], USERS)
    summary = apply(run / "shards", pulled, tmp_path / "reviewed")
    out = {r["id"]: r for r in pq.read_table(tmp_path / "reviewed" / "shards").to_pylist()}
    assert out[row["id"]]["review"]["verdict"] == "edit" and not out[row["id"]]["review"]["edited"]
    assert out[row["id"]]["target"] == row["target"] and summary.unchanged_edits == 1 and summary.edited == 0
