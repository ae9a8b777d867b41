"""`cotforge eval`: against the teacher simulator as an endpoint and against tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from train_fixtures import demo_run, tiny_omni_dir, tiny_text_dir  # noqa: F401

from cotforge.cli import app
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.train.data import open_eval_split
from cotforge.train.evaluate import Parsed, parse_output, scored_value
from cotforge.types import MOSI_SCALE

MOSI_METRICS = ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_3", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr")


def _eval(*args: str) -> tuple[str, dict]:
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return result.output, json.loads((out / "metrics.json").read_text())


def _test_keys(run: Path) -> list[str]:
    return list(open_eval_split(run, "test").dataset["key"])


def test_the_teacher_simulator_as_a_zero_shot_baseline(demo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    with SimProcess(SimConfig(port=0, seed=3, latency_ms=5, capacity=8, rate_malformed=0.5)) as sim:
        printed, payload = _eval("--run", str(demo_run), "--split", "test", "--teacher-url", sim.url,
                                 "--served-model", "sim/qwen3-omni", "--endpoint-format", "teacher", "--out", str(out))
    predictions = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [row["key"] for row in predictions] == _test_keys(demo_run)  # every bundled test clip, in order
    bad = [row for row in predictions if not row["format_ok"]]
    assert bad, "rate_malformed=0.5 should leave some answers unparsed"
    assert payload["unparsed"] == len(bad) and payload["rows"] == len(predictions)
    assert all(row["error"] and row["scored_as"] in (-3.0, 3.0) for row in bad)  # counted as errors, never dropped
    assert all(row["scored_as"] == row["score"] for row in predictions if row["format_ok"])
    assert set(MOSI_METRICS) <= set(payload["metrics"]) and payload["metrics"]["unparsed_share"] == round(len(bad) / len(predictions), 4)
    for name in ("Has0_acc_2", "MAE", "unparsed"):
        assert name in printed
    assert (out / "scatter.png").stat().st_size > 0 and (out / "confusion.png").stat().st_size > 0


def test_a_student_endpoint_gets_the_student_prompt_and_wrong_formats_count_as_unparsed(demo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    with SimProcess(SimConfig(port=0, seed=1, latency_ms=5, capacity=8)) as sim:
        _, payload = _eval("--run", str(demo_run), "--teacher-url", sim.url, "--served-model", "sim/qwen3-omni",
                           "--out", str(out), "--limit", "3")
    # the simulator accepted the student's request shape (an MP4 with audio, the transcript) and answered in
    # the teacher's JSON, which the student parser does not take: all three are errors, none dropped
    assert payload["rows"] == 3 and payload["unparsed"] == 3 and payload["format"] == "student"
    assert all(row["error"] == "missing <think> block" for row in pq.read_table(out / "predictions.parquet").to_pylist())


def test_a_local_omni_checkpoint(demo_run: Path, tiny_omni_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "omni"
    printed, payload = _eval("--model", str(tiny_omni_dir), "--run", str(demo_run), "--out", str(out),
                             "--max-new-tokens", "6", "--batch-size", "2", "--limit", "3")
    predictions = pq.read_table(out / "predictions.parquet").to_pylist()
    assert len(predictions) == 3 and all(row["output"] for row in predictions)
    assert payload["unparsed"] == 3 and payload["greedy"] is True  # a random model writes no DC answer
    assert "3 unparsed" in printed


def test_a_local_text_checkpoint_with_the_zero_policy(demo_run: Path, tiny_text_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "text"
    _, payload = _eval("--model", str(tiny_text_dir), "--run", str(demo_run), "--out", str(out), "--max-new-tokens", "6",
                       "--unparsed", "zero")
    predictions = pq.read_table(out / "predictions.parquet").to_pylist()
    assert len(predictions) == len(_test_keys(demo_run)) == payload["rows"]
    assert all(row["scored_as"] == 0.0 for row in predictions if not row["format_ok"])


def test_eval_refuses_the_accepted_chains(demo_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--run", str(demo_run / "shards"), "--model", "x", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "label-filtered" in result.output


def test_parsing_and_scoring_policy() -> None:
    good = "<think>\n<discrimination>x Polarity: negative</discrimination>\n<calibration>y</calibration>\n</think>\n<answer>-1.2</answer>"
    assert parse_output(good, "student") == Parsed(True, "negative", -1.2, None)
    assert parse_output(good + "<answer>2</answer>", "student").ok is False
    teacher = parse_output('{"discrimination": {"cues": {"text": "a", "audio": "b", "visual": "c"}, "summary": "s", '
                           '"polarity": "positive"}, "calibration": {"reasoning": "r", "score": 2.0}}', "teacher")
    assert teacher == Parsed(True, "positive", 2.0, None)
    broken = Parsed(False, "positive", 1.0, "a tag appears more than once")
    assert scored_value(broken, 1.5, MOSI_SCALE, "worst") == -3.0  # the far end from gold: wrong everywhere
    assert scored_value(broken, -0.2, MOSI_SCALE, "worst") == 3.0
    assert scored_value(broken, 1.5, MOSI_SCALE, "zero") == 0.0
    with pytest.raises(ValueError, match="either --model"):
        from cotforge.train.evaluate import run_eval

        run_eval(Path("."), "test", Path("."))
