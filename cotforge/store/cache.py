"""cache.sqlite: teacher responses keyed by the hash of the canonical request.

A hit returns the stored response without any network call, so a re-run never pays twice for a
request that succeeded. Only successful responses are stored; parsing and validation happen
later, so a change of validator never needs the teacher again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from cotforge.store.ledger import open_read_only
from cotforge.types import TeacherResponse

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    cache_key TEXT PRIMARY KEY,
    clip_key TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    hinted INTEGER NOT NULL,
    contents TEXT NOT NULL,
    finish_reasons TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,
    created_at REAL NOT NULL,
    reasonings TEXT
);
CREATE INDEX IF NOT EXISTS responses_clip ON responses(clip_key);
"""


class ResponseCache:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.read_only = read_only
        if read_only:
            self.db = open_read_only(path)
            self.hits = self.misses = 0
            return
        self.db = sqlite3.connect(path, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if "reasonings" not in {row[1] for row in self.db.execute("PRAGMA table_info(responses)")}:
            self.db.execute("ALTER TABLE responses ADD COLUMN reasonings TEXT")  # a cache made by cotforge 0.1
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        if not self.read_only:
            self.db.commit()
        self.db.close()

    def get(self, cache_key: str) -> TeacherResponse | None:
        row = self.db.execute(
            "SELECT contents, finish_reasons, model, prompt_tokens, completion_tokens, latency_s, reasonings FROM responses"
            " WHERE cache_key = ?",
            (cache_key,),
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return TeacherResponse(json.loads(row[0]), json.loads(row[1]), row[2], row[3], row[4], row[5] or 0.0, cached=True,
                               reasonings=json.loads(row[6]) if row[6] else [])

    def put(self, cache_key: str, clip_key: str, prompt_version: str, hinted: bool, response: TeacherResponse) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO responses(cache_key, clip_key, model, prompt_version, hinted, contents, finish_reasons,"
            " prompt_tokens, completion_tokens, latency_s, created_at, reasonings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cache_key, clip_key, response.model, prompt_version, int(hinted), json.dumps(response.contents, ensure_ascii=False),
             json.dumps(response.finish_reasons), response.prompt_tokens, response.completion_tokens, response.latency_s, time.time(),
             json.dumps(response.reasonings, ensure_ascii=False) if any(response.reasonings) else None),
        )
        self.db.commit()

    def usage(self) -> dict[str, Any]:
        n, prompt, completion = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM responses"
        ).fetchone()
        return {"responses": n, "prompt_tokens": prompt, "completion_tokens": completion}
