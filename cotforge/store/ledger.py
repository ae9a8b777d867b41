"""ledger.sqlite: one row per clip key with its state, the reason of a failure, and timings.

The ledger is the truth of a run: resume reads it to skip finished clips, `status` and the
manifest count from it, and it says which bundle part holds a clip's bundle (a part written by an
interrupted run may repeat clips; the ledger's pointer decides which copy counts).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cotforge.types import ClipRef, ClipState

SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    key TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    video_id TEXT NOT NULL,
    clip_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    ref TEXT NOT NULL,
    bundle_part TEXT,
    media_hash TEXT,
    decode_seconds REAL,
    teacher_model TEXT,
    prompt_version TEXT,
    hinted INTEGER,
    requests INTEGER NOT NULL DEFAULT 0,
    teacher_score REAL,
    teacher_polarity TEXT,
    answer TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    teacher_seconds REAL,
    judged_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS clips_state ON clips(state);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def reason_kind(reason: str | None) -> str:
    """Group reasons by their fixed head ("media file missing: /a/b.mp4" -> "media file missing").

    Every reason cotforge records is written as "<kind>: <details>" for this.
    """
    return (reason or "").split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class StateCounts:
    by_state: dict[str, int]
    by_split: dict[str, dict[str, int]]
    reasons: list[tuple[str, str, int]]  # (stage, reason, count), most frequent first

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.commit()
        self.close()

    def commit(self) -> None:
        self.db.commit()

    def get_meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))

    def admit(self, ref: ClipRef) -> ClipState:
        """Record a clip read from the source (if new) and return its current state."""
        now = time.time()
        self.db.execute(
            "INSERT OR IGNORE INTO clips(key, dataset, split, video_id, clip_id, line, state, ref, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ref.key, ref.dataset, ref.split, ref.video_id, ref.clip_id, ref.line, ClipState.PENDING,
             json.dumps(ref.as_dict(), ensure_ascii=False), now, now),
        )
        row = self.db.execute("SELECT state FROM clips WHERE key = ?", (ref.key,)).fetchone()
        return ClipState(row[0])

    def reset(self, ref: ClipRef) -> None:
        """Take a clip back to pending with the source's current view of it (used to retry failures)."""
        self.db.execute(
            "UPDATE clips SET state = ?, stage = NULL, reason = NULL, ref = ?, split = ?, updated_at = ? WHERE key = ?",
            (ClipState.PENDING, json.dumps(ref.as_dict(), ensure_ascii=False), ref.split, time.time(), ref.key),
        )

    def fail(self, key: str, stage: str, reason: str, seconds: float | None = None) -> None:
        self.db.execute(
            "UPDATE clips SET state = ?, stage = ?, reason = ?, attempts = attempts + 1,"
            " decode_seconds = COALESCE(?, decode_seconds), updated_at = ? WHERE key = ?",
            (ClipState.FAILED, stage, reason, seconds, time.time(), key),
        )

    def mark_bundled(self, rows: Iterable[tuple[str, str, str, float]]) -> None:
        """rows: (key, bundle part file name, media hash, decode CPU seconds)."""
        now = time.time()
        self.db.executemany(
            # a streaming run may have judged the clip before its part was flushed: keep that state
            "UPDATE clips SET state = CASE WHEN state = 'pending' THEN ? ELSE state END,"
            " stage = CASE WHEN state = 'pending' THEN 'decode' ELSE stage END, attempts = attempts + 1,"
            " bundle_part = ?, media_hash = ?, decode_seconds = ?, updated_at = ? WHERE key = ?",
            [(ClipState.BUNDLED, part, media_hash, secs, now, key) for key, part, media_hash, secs in rows],
        )

    def record_answer(self, key: str, state: ClipState, reason: str | None, answer: dict, stage: str = "teacher") -> None:
        """Store the teacher/validator outcome of a clip: accepted, rejected (with reason) or failed."""
        now = time.time()
        self.db.execute(
            "UPDATE clips SET state = ?, stage = ?, reason = ?, teacher_model = ?, prompt_version = ?, hinted = ?,"
            " requests = requests + ?, teacher_score = ?, teacher_polarity = ?, answer = ?, prompt_tokens = ?,"
            " completion_tokens = ?, teacher_seconds = ?, judged_at = ?, updated_at = ? WHERE key = ?",
            (state, stage, reason, answer.get("teacher_model"), answer.get("prompt_version"), int(bool(answer.get("hinted"))),
             answer.get("requests", 0), answer.get("score"), answer.get("polarity"), json.dumps(answer, ensure_ascii=False),
             answer.get("prompt_tokens"), answer.get("completion_tokens"), answer.get("seconds"), now, now, key),
        )

    def keys_in_state(self, *states: ClipState) -> list[str]:
        marks = ",".join("?" * len(states))
        return [k for (k,) in self.db.execute(f"SELECT key FROM clips WHERE state IN ({marks}) ORDER BY key", states)]

    def reset_unbundled(self) -> int:
        """Clips judged in a streaming run whose bundle part was never written go back to pending.

        They are decoded again; their teacher answers come from the cache, so nothing is paid twice.
        """
        cur = self.db.execute(
            "UPDATE clips SET state = ?, stage = NULL, reason = NULL WHERE bundle_part IS NULL AND state IN (?, ?, ?)"
            " OR (bundle_part IS NULL AND state = ? AND stage = 'teacher')",
            (ClipState.PENDING, ClipState.ASKED, ClipState.ACCEPTED, ClipState.REJECTED, ClipState.FAILED),
        )
        self.commit()
        return cur.rowcount

    def keys_failed_at(self, stage: str) -> list[str]:
        return [k for (k,) in self.db.execute("SELECT key FROM clips WHERE state = ? AND stage = ?", (ClipState.FAILED, stage))]

    def answers(self) -> dict[str, dict]:
        """key -> (state, split, answer JSON) of every clip the teacher stage has decided."""
        return {
            key: {"state": state, "split": split, "reason": reason, "answer": json.loads(answer)}
            for key, state, split, reason, answer in self.db.execute(
                "SELECT key, state, split, reason, answer FROM clips WHERE answer IS NOT NULL"
            )
        }

    def count(self, state: ClipState | None = None) -> int:
        if state is None:
            return self.db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM clips WHERE state = ?", (state,)).fetchone()[0]

    def bundle_locations(self) -> dict[str, str]:
        """key -> bundle part file name, for every clip whose bundle counts."""
        return dict(self.db.execute("SELECT key, bundle_part FROM clips WHERE bundle_part IS NOT NULL"))

    def counts(self) -> StateCounts:
        by_state = {state.value: 0 for state in ClipState}
        by_split: dict[str, dict[str, int]] = {}
        for split, state, n in self.db.execute("SELECT split, state, COUNT(*) FROM clips GROUP BY split, state"):
            by_state[state] = by_state.get(state, 0) + n
            by_split.setdefault(split or "?", {})[state] = n
        reasons = [
            (stage or "?", reason or "?", n)
            for stage, reason, n in self.db.execute(
                "SELECT stage, reason, COUNT(*) AS n FROM clips WHERE state IN (?, ?) GROUP BY stage, reason ORDER BY n DESC, reason",
                (ClipState.FAILED, ClipState.REJECTED),
            )
        ]
        return StateCounts(by_state, by_split, reasons)
