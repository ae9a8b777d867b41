"""The run directory (DESIGN.md §3) and the checks that keep one run one consistent corpus."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from cotforge.config import MediaConfig, SourceConfig
from cotforge.stats import Stats
from cotforge.store.ledger import Ledger

STATS_KEEP = 200
"""Run attempts kept in stats.json (the oldest are dropped): enough history, bounded size."""


class RunError(Exception):
    """The run directory cannot be used as asked (another dataset, other media settings)."""


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger_path = path / "ledger.sqlite"
        self.bundles = path / "bundles"
        self.config_path = path / "config.yaml"
        self.cache_path = path / "cache.sqlite"
        self.shards = path / "shards"
        self.rejected_shards = path / "shards-rejected"
        self.manifest_path = path / "manifest.json"
        self.report = path / "report"
        self.eval = path / "eval"
        self.stats_path = path / "stats.json"

    def exists(self) -> bool:
        return self.ledger_path.is_file()

    def recorded_teacher(self) -> dict[str, Any] | None:
        """The teacher settings the run was last asked with (None before its first request)."""
        if not self.exists():
            return None
        with self.open_ledger(read_only=True) as ledger:
            value = ledger.get_meta("teacher")
        return None if value is None else json.loads(value)

    def open_ledger(self, read_only: bool = False) -> Ledger:
        """The ledger; read-only commands (status, plan, report) open it so, and work on a read-only folder."""
        if read_only:
            if not self.exists():
                raise RunError(f"{self.path} is not a run directory (no ledger.sqlite)")
            return Ledger(self.ledger_path, read_only=True)
        self.path.mkdir(parents=True, exist_ok=True)
        return Ledger(self.ledger_path)

    def bind(self, ledger: Ledger, source: SourceConfig, media: MediaConfig) -> None:
        """Refuse to mix datasets or media settings in one run, before any work is done."""
        identity = json.dumps({"dataset": source.dataset, "root": str(source.root.resolve())})
        media_json = json.dumps(media.model_dump(), sort_keys=True)
        known_identity = ledger.get_meta("source")
        if known_identity is not None and known_identity != identity:
            raise RunError(
                f"{self.path} holds a run of {json.loads(known_identity)}; "
                f"this one reads {json.loads(identity)}. Use another --run folder."
            )
        known_media = ledger.get_meta("media")
        if known_media is not None and known_media != media_json and ledger.count() > 0:
            old, new = json.loads(known_media), json.loads(media_json)
            changed = ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in new if old.get(k) != new[k])
            raise RunError(
                f"{self.path} was bundled with other media settings ({changed}); its bundles would mix "
                "two settings. Use another --run folder for the new settings."
            )
        ledger.set_meta("source", identity)
        ledger.set_meta("media", media_json)
        ledger.commit()

    def load_config(self) -> dict[str, Any]:
        """The resolved config saved by earlier stages (empty if none)."""
        if not self.config_path.is_file():
            return {}
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def save_config(self, sections: dict[str, Any]) -> None:
        """Merge sections into config.yaml; callers pass configs with secrets already removed."""
        self.path.mkdir(parents=True, exist_ok=True)
        merged = {**self.load_config(), **sections}
        self.config_path.write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def read_stats(self) -> dict[str, Any]:
        """stats.json: {"attempts": [{"command", "started_at", "wall_seconds", "stages": {name: Stats dict}}]}."""
        if not self.stats_path.is_file():
            return {"attempts": []}
        return json.loads(self.stats_path.read_text(encoding="utf-8"))

    def append_stats(self, command: str, stages: dict[str, Stats], started_at: float, interrupted: str | None = None) -> None:
        """Record one run attempt's step stats; written beside and renamed, so a crash leaves the old file."""
        data = self.read_stats()
        attempt: dict[str, Any] = {
            "command": command,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "wall_seconds": round(time.time() - started_at, 3),
            "stages": {name: stats.to_dict() for name, stats in stages.items()},
        }
        if interrupted:
            attempt["interrupted"] = interrupted
        data["attempts"] = [*data["attempts"], attempt][-STATS_KEEP:]
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.stats_path)

    def totals(self, stage: str) -> Stats:
        """One stage's stats summed over every recorded attempt (what a run has cost so far)."""
        total = Stats()
        for attempt in self.read_stats()["attempts"]:
            if stage in attempt["stages"]:
                total = total.merge(Stats.from_dict(attempt["stages"][stage]))
        return total
