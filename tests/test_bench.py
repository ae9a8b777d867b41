"""The benchmark scripts still run (tiny sizes; their numbers are not checked here, never timed in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("decode.py", ["--clips", "2", "--seconds", "1", "--repeat", "1", "--long-minutes", "0.05"], "bundle / full decode"),
        ("teacher.py", ["--requests", "64", "--capacity", "8", "--latency-ms", "20"], "cotforge client"),
        ("pipeline.py", ["--clips", "6", "--capacity", "4", "--latency-ms", "100", "--reask-clips", "8",
                         "--reask-capacity", "4", "--codec", "mjpeg"], "requests/s steady / C/L"),
        ("growth.py", ["--sizes", "8", "16"], "cache lookups"),
    ],
)
def test_benchmark_runs(script: str, args: list[str], expect: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout
