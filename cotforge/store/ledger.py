"""ledger.sqlite: one row per clip key with its state, the reason of a failure, and timings.

The ledger is the truth of a run: resume reads it to skip finished clips, `status` and the
manifest count from it, and it says which bundle part holds a clip's bundle (a part written by an
interrupted run may repeat clips; the ledger's pointer decides which copy counts).

It also holds the source's current view of every row (`ref`): labels on disk win. A row whose
label, text or split changed keeps its bundle and is judged again from the teacher cache; a row
whose media changed is decoded again; a row deleted from the label file is marked `removed`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
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
    judged_with TEXT,
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
# Columns added after the first release, for run folders made by it.
ADDED_COLUMNS = {"judged_with": "TEXT"}

MEDIA_FIELDS = ("media_path", "start", "end")
"""Fields of a ref that decide its bundle: a change means decoding again."""
LABEL_FIELDS = ("text", "label", "split", "label_T", "label_A", "label_V", "annotation", "language")
"""Fields that decide a judgement but not the bundle: a change means judging again, from the cache."""
JUDGED = (ClipState.ACCEPTED, ClipState.REJECTED)


def where_not_writable(folder: Path) -> str:
    """Why a folder cannot take writes, when the system says so: the part of an error message a user acts on."""
    try:
        probe = os.statvfs(folder)
    except OSError:
        return ""
    if probe.f_flag & os.ST_RDONLY:
        return " (read-only file system)"
    if probe.f_bavail == 0:
        return " (the disk is full)"
    return ""


def open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, and leaves no files behind.

    With no `-wal` beside the database, no writer has it open (a WAL writer keeps that file while it
    lives), so the file is read as immutable: SQLite then makes no `-wal`/`-shm` of its own, which a
    read-only connection could not remove on close (they would stay in the run folder). With a
    live writer, a plain read-only connection sees its commits; on a read-only disk, where SQLite
    cannot make its `-shm`, the immutable read is the fallback.
    """
    uri = path.resolve().as_uri()
    if not path.with_name(path.name + "-wal").exists():
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=30.0)
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=30.0)


def _ref_json(ref: ClipRef) -> str:
    return json.dumps(ref.as_dict(), ensure_ascii=False, sort_keys=True)


def fields_digest(ref: dict, fields: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps([ref.get(f) for f in fields], ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StateCounts:
    by_state: dict[str, int]
    by_split: dict[str, dict[str, int]]
    reasons: list[tuple[str, str, int]]  # (stage, reason, count), most frequent first

    @property
    def total(self) -> int:
        """Clips of the dataset as it is on disk now (removed rows are not counted)."""
        return sum(n for state, n in self.by_state.items() if state != ClipState.REMOVED)


class Ledger:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self.db = open_read_only(path)
            return
        try:
            self.db = sqlite3.connect(path, timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            have = {row[1] for row in self.db.execute("PRAGMA table_info(clips)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE clips ADD COLUMN {column} {kind}")
            self.db.commit()
        except sqlite3.OperationalError as err:
            raise sqlite3.OperationalError(f"{path}: {err}{where_not_writable(path.parent)}") from None

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

    def admit(self, ref: ClipRef, retry_failed: bool = False) -> ClipState:
        """Record a row read from the source and return the state it is in now.

        A new row is pending. A known row takes the source's current view: changed media send it
        back to pending (decode again); changed labels, text or split send a judged clip back to
        bundled (judge again, from the cache); a row whose error changed (a missing file now there) is read again.
        """
        now = time.time()
        new = _ref_json(ref)
        row = self.db.execute("SELECT state, ref FROM clips WHERE key = ?", (ref.key,)).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO clips(key, dataset, split, video_id, clip_id, line, state, ref, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ref.key, ref.dataset, ref.split, ref.video_id, ref.clip_id, ref.line, ClipState.PENDING, new, now, now),
            )
            return ClipState.PENDING
        state, old_json = ClipState(row[0]), row[1]
        old = json.loads(old_json)
        current = ref.as_dict()
        if state is ClipState.REMOVED or (state is ClipState.FAILED and retry_failed):
            state = ClipState.PENDING
        elif fields_digest(old, MEDIA_FIELDS) != fields_digest(current, MEDIA_FIELDS) or old.get("error") != ref.error:
            state = ClipState.PENDING
        elif fields_digest(old, LABEL_FIELDS) != fields_digest(current, LABEL_FIELDS) and state in (*JUDGED, ClipState.HELD_OUT):
            state = ClipState.BUNDLED
        if state is ClipState.PENDING and ClipState(row[0]) is not ClipState.PENDING:
            self.db.execute(
                "UPDATE clips SET state = ?, stage = NULL, reason = NULL, bundle_part = NULL, answer = NULL,"
                " judged_with = NULL, ref = ?, split = ?, line = ?, updated_at = ? WHERE key = ?",
                (ClipState.PENDING, new, ref.split, ref.line, now, ref.key),
            )
        elif old_json != new or state.value != row[0]:
            self.db.execute(
                "UPDATE clips SET state = ?, ref = ?, split = ?, line = ?, updated_at = ? WHERE key = ?",
                (state, new, ref.split, ref.line, now, ref.key),
            )
        return state

    def mark_removed(self, seen: set[str]) -> int:
        """Clips no longer in the label file are `removed`: out of the counts, the shards and the eval sets."""
        known = [k for (k,) in self.db.execute("SELECT key FROM clips")]
        gone = [(ClipState.REMOVED, "source", "removed: no longer in the label file", time.time(), k) for k in known if k not in seen]
        cur = self.db.executemany(
            "UPDATE clips SET state = ?, stage = ?, reason = ?, updated_at = ? WHERE key = ? AND state != 'removed'", gone
        )
        return cur.rowcount

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

    def set_state(self, keys: Iterable[str], state: ClipState, stage: str | None = None) -> None:
        self.db.executemany(
            "UPDATE clips SET state = ?, stage = COALESCE(?, stage), updated_at = ? WHERE key = ?",
            [(state, stage, time.time(), key) for key in keys],
        )

    def record_answer(
        self, key: str, state: ClipState, reason: str | None, answer: dict, judged_with: str | None = None, stage: str = "teacher"
    ) -> None:
        """Store the teacher/validator outcome of a clip: accepted, rejected (with reason) or failed."""
        now = time.time()
        self.db.execute(
            "UPDATE clips SET state = ?, stage = ?, reason = ?, teacher_model = ?, prompt_version = ?, hinted = ?,"
            " requests = requests + ?, teacher_score = ?, teacher_polarity = ?, answer = ?, judged_with = ?,"
            " prompt_tokens = ?, completion_tokens = ?, teacher_seconds = ?, judged_at = ?, updated_at = ? WHERE key = ?",
            (state, stage, reason, answer.get("teacher_model"), answer.get("prompt_version"), int(bool(answer.get("hinted"))),
             answer.get("requests", 0), answer.get("score"), answer.get("polarity"), json.dumps(answer, ensure_ascii=False),
             judged_with, answer.get("prompt_tokens"), answer.get("completion_tokens"), answer.get("seconds"), now, now, key),
        )

    def keys_in_state(self, *states: ClipState) -> list[str]:
        marks = ",".join("?" * len(states))
        return [k for (k,) in self.db.execute(f"SELECT key FROM clips WHERE state IN ({marks}) ORDER BY key", states)]

    def reset_unbundled(self) -> int:
        """Clips judged in a streaming run whose bundle part was never written go back to pending.

        They are decoded again; their teacher answers come from the cache, so nothing is paid twice.
        """
        cur = self.db.execute(
            "UPDATE clips SET state = ?, stage = NULL, reason = NULL WHERE bundle_part IS NULL AND state IN (?, ?, ?, ?)"
            " OR (bundle_part IS NULL AND state = ? AND stage = 'teacher')",
            (ClipState.PENDING, ClipState.ASKED, ClipState.ACCEPTED, ClipState.REJECTED, ClipState.HELD_OUT, ClipState.FAILED),
        )
        self.commit()
        return cur.rowcount

    def retarget(self, teacher_splits: Iterable[str], judged_with: str) -> int:
        """Put each bundled clip where the current settings want it, from the ledger alone.

        Clips of a split the teacher does not get are held out (kept for the eval sets); clips of a
        split it gets, held out before or judged under other settings, wait for the teacher again
        (their cached answers make that free). Returns how many clips will be judged again.
        """
        splits = list(teacher_splits)
        marks = ",".join("?" * len(splits)) or "''"
        now = time.time()
        self.db.execute(
            f"UPDATE clips SET state = ?, updated_at = ? WHERE bundle_part IS NOT NULL AND split NOT IN ({marks})"
            " AND (state IN (?, ?, ?) OR (state = ? AND stage = 'teacher'))",
            (ClipState.HELD_OUT, now, *splits, ClipState.BUNDLED, *JUDGED, ClipState.FAILED),
        )
        cur = self.db.execute(
            f"UPDATE clips SET state = ?, updated_at = ? WHERE bundle_part IS NOT NULL AND split IN ({marks})"
            " AND (state = ? OR (state IN (?, ?) AND (judged_with IS NULL OR judged_with != ?)))",
            (ClipState.BUNDLED, now, *splits, ClipState.HELD_OUT, *JUDGED, judged_with),
        )
        return cur.rowcount

    def keys_failed_at(self, stage: str) -> list[str]:
        return [k for (k,) in self.db.execute("SELECT key FROM clips WHERE state = ? AND stage = ?", (ClipState.FAILED, stage))]

    def refs(self, keys: Iterable[str] | None = None) -> dict[str, dict]:
        """key -> the source's current view of the row (labels on disk win over a bundle's copy)."""
        if keys is None:
            return {key: json.loads(ref) for key, ref in self.db.execute("SELECT key, ref FROM clips")}
        wanted = set(keys)
        return {key: json.loads(ref) for key, ref in self.db.execute("SELECT key, ref FROM clips") if key in wanted}

    def answers(self) -> dict[str, dict]:
        """key -> (state, split, answer JSON) of every clip the teacher stage has decided."""
        return {
            key: {"state": state, "split": split, "reason": reason, "answer": json.loads(answer), "judged_with": judged_with}
            for key, state, split, reason, answer, judged_with in self.db.execute(
                "SELECT key, state, split, reason, answer, judged_with FROM clips WHERE answer IS NOT NULL AND state != 'removed'"
            )
        }

    def count(self, state: ClipState | None = None) -> int:
        if state is None:
            return self.db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM clips WHERE state = ?", (state,)).fetchone()[0]

    def bundle_locations(self, states: Iterable[ClipState] | None = None) -> dict[str, str]:
        """key -> bundle part file name, for every clip whose bundle counts (optionally in given states)."""
        if states is None:
            return dict(self.db.execute("SELECT key, bundle_part FROM clips WHERE bundle_part IS NOT NULL AND state != 'removed'"))
        wanted = list(states)
        marks = ",".join("?" * len(wanted))
        return dict(self.db.execute(
            f"SELECT key, bundle_part FROM clips WHERE bundle_part IS NOT NULL AND state IN ({marks})", wanted
        ))

    def rows(self) -> Iterator[tuple]:
        """(key, dataset, split, state, stage, reason, ref, answer, judged_at) of every clip, in judging order."""
        yield from self.db.execute(
            "SELECT key, dataset, split, state, stage, reason, ref, answer, judged_at FROM clips ORDER BY judged_at, key"
        )

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
