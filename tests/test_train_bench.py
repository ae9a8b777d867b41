"""bench/hint_grpo.py still runs (tiny sizes; its numbers are printed, never asserted as timings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import probe_policy  # noqa: F401

BENCH = Path(__file__).resolve().parent.parent / "bench" / "hint_grpo.py"


@pytest.mark.slow
def test_hint_grpo_bench_prints_its_table(probe_policy: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "2", "--generations", "4", "--policy", str(probe_policy), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("mean frac_reward_zero_std", "share of prompts with non-zero advantage", "step time ratio (Hint-GRPO / GRPO)"):
        assert line in done.stdout, done.stdout
