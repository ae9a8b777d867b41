"""The run directory (DESIGN.md §3) and the checks that keep one run one consistent corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cotforge.config import BundleConfig
from cotforge.store.ledger import Ledger


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

    def exists(self) -> bool:
        return self.ledger_path.is_file()

    def open_ledger(self) -> Ledger:
        self.path.mkdir(parents=True, exist_ok=True)
        return Ledger(self.ledger_path)

    def bind_bundle_config(self, ledger: Ledger, cfg: BundleConfig) -> None:
        """Refuse to mix datasets or media settings in one run; record the resolved config."""
        identity = json.dumps({"dataset": cfg.source.dataset, "root": str(cfg.source.root.resolve())})
        media = json.dumps(cfg.media.model_dump(), sort_keys=True)
        known_identity = ledger.get_meta("source")
        if known_identity is not None and known_identity != identity:
            raise RunError(
                f"{self.path} holds a run of {json.loads(known_identity)}; "
                f"this one reads {json.loads(identity)}. Use another --run folder."
            )
        known_media = ledger.get_meta("media")
        if known_media is not None and known_media != media and ledger.count() > 0:
            old, new = json.loads(known_media), json.loads(media)
            changed = ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in new if old.get(k) != new[k])
            raise RunError(
                f"{self.path} was bundled with other media settings ({changed}); its bundles would mix "
                "two settings. Use another --run folder for the new settings."
            )
        ledger.set_meta("source", identity)
        ledger.set_meta("media", media)
        ledger.commit()
        self.save_config({"source": cfg.source.model_dump(mode="json"), "media": cfg.media.model_dump(), "exec": cfg.exec.model_dump()})

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
