"""What the scale tests compare: a run's corpus by key, its ledger counts, and the simulator's request counts."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from cotforge.store.ledger import Ledger

TERMINAL = ("accepted", "rejected", "failed", "held_out")


def corpus(run: Path) -> dict[str, tuple]:
    """key -> (split, rendered target, structured rationale, teacher score, hinted) of every shard row."""
    rows: dict[str, tuple] = {}
    for part in sorted((run / "shards").glob("*/*.parquet")):
        columns = ["id", "split", "target", "rationale", "teacher_score", "hinted"]
        for row in pq.read_table(part, columns=columns).to_pylist():
            assert row["id"] not in rows, f"{row['id']} twice in {run}/shards"
            rows[row["id"]] = (row["split"], row["target"], json.dumps(row["rationale"], sort_keys=True),
                               row["teacher_score"], row["hinted"])
    return rows


def eval_keys(run: Path) -> dict[str, list[str]]:
    return {split.name: sorted(k for part in split.glob("*.parquet") for k in pq.read_table(part, columns=["key"])["key"].to_pylist())
            for split in sorted((run / "eval").iterdir())} if (run / "eval").exists() else {}


def states(run: Path) -> dict[str, int]:
    with Ledger(run / "ledger.sqlite", read_only=True) as ledger:
        return {k: v for k, v in ledger.counts().by_state.items() if v}


def teacher_failures(run: Path) -> list[tuple[str, str]]:
    with Ledger(run / "ledger.sqlite", read_only=True) as ledger:
        return ledger.db.execute("SELECT key, reason FROM clips WHERE state = 'failed' AND stage = 'teacher'").fetchall()


def sim_requests(root: str) -> int:
    return sum(httpx.get(f"{root}/sim/stats", trust_env=False, timeout=5).json()["requests"].values())


def stage_stats(run: Path, stage: str) -> dict:
    """One stage's counters summed over the run's attempts (stats.json)."""
    total: dict[str, float] = {}
    for attempt in json.loads((run / "stats.json").read_text())["attempts"]:
        for name, n in attempt["stages"].get(stage, {}).get("counters", {}).items():
            total[name] = total.get(name, 0) + n
    return total
