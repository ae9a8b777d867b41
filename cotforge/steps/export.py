"""The export step: shards, unfiltered eval sets and the manifest, from the ledger, cache and bundles.

No teacher call happens here. Shards hold the accepted chains of the splits the teacher got;
`RUN/eval/<split>/` holds every bundled clip of the evaluation splits with its gold labels and no
teacher output, so that a model is never evaluated on chains filtered by the gold label. Each
output is written to an empty staging folder and swapped in only when complete; when the inputs
(chosen answers, current labels, eval members, config) are what the manifest says the outputs were
made of, nothing is rewritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cotforge.config import PipelineConfig
from cotforge.steps.base import Step
from cotforge.steps.bookkeeping import overlay
from cotforge.store.bundles import iter_bundles
from cotforge.store.cache import ResponseCache
from cotforge.store.ledger import Ledger
from cotforge.store.run import RunDir, RunError
from cotforge.store.shards import (
    EVAL_SCHEMA,
    SplitWriter,
    corpus_rows,
    inputs_hash,
    swap_in,
    write_manifest,
)
from cotforge.types import ClipState


def read_manifest(run_dir: RunDir) -> dict[str, Any] | None:
    if not run_dir.manifest_path.is_file():
        return None
    return json.loads(run_dir.manifest_path.read_text(encoding="utf-8"))


def _closest(answer: dict) -> list[int]:
    """For a rejected clip, the parsed candidate nearest the gold label (what a reviewer would look at)."""
    parsed = [(c["error"], i) for i, c in enumerate(answer["candidates"]) if c["error"] is not None]
    return [min(parsed)[1]] if parsed else []


class ExportStep(Step):
    name = "export"

    def __init__(self, cfg: PipelineConfig, run_dir: RunDir) -> None:
        super().__init__()
        self.cfg = cfg
        self.run_dir = run_dir
        self.files: list[dict[str, Any]] = []
        self.eval_files: list[dict[str, Any]] = []

    def run(self, records: Any = None) -> bool:  # type: ignore[override]
        """Write what changed; True when files were rewritten."""
        run_dir, cfg = self.run_dir, self.cfg
        if not run_dir.exists():
            raise RunError(f"{run_dir.path} is not a run directory (no ledger.sqlite)")
        with Ledger(run_dir.ledger_path) as ledger:
            answers = ledger.answers()
            locations = ledger.bundle_locations()
            refs = ledger.refs()
            counts = ledger.counts()
        judge = cfg.judge_fingerprint()
        stale = [k for k, a in answers.items() if a["state"] in (ClipState.ACCEPTED, ClipState.REJECTED) and a["judged_with"] != judge]
        if stale:
            raise RunError(
                f"{len(stale)} clips of {run_dir.path} were judged with other teacher, validation or re-asking settings "
                f"(e.g. {stale[0]}); run `cotforge synth --run {run_dir.path}` (or `cotforge run`) to judge them again "
                "from the cache (only what the new settings add is asked), then export"
            )
        wanted = {ClipState.ACCEPTED.value} | ({ClipState.REJECTED.value} if cfg.export.rejected else set())
        selected = {k: v for k, v in answers.items() if v["state"] in wanted and v["split"] in cfg.teacher.splits}
        eval_keys = sorted(k for k, part in locations.items() if refs.get(k, {}).get("split") in cfg.export.eval_splits)
        fingerprint = inputs_hash(selected, refs, eval_keys, cfg.fingerprint())
        manifest = read_manifest(run_dir)
        if manifest and manifest.get("inputs_hash") == fingerprint and run_dir.shards.exists():
            self.files = manifest.get("shards", {}).get("files", [])
            self.eval_files = manifest.get("eval", {}).get("files", [])
            for split, n in manifest.get("shards", {}).get("rows", {}).items():
                self.stats.inc(f"rows/{split}", n)
            for split, n in manifest.get("eval", {}).get("rows", {}).items():
                self.stats.inc(f"eval_rows/{split}", n)
            fresh = self.manifest(counts, answers, fingerprint)
            if fresh["counts"] != manifest.get("counts") or fresh.get("teacher_stats") != manifest.get("teacher_stats"):
                write_manifest(run_dir.manifest_path, fresh)
            self.stats.inc("rewritten", 0)
            return False
        self._write_shards(selected, locations, refs)
        self._write_eval(eval_keys, locations, refs)
        write_manifest(run_dir.manifest_path, self.manifest(counts, answers, fingerprint))
        self.stats.inc("rewritten")
        return True

    def _staging(self, name: str) -> Path:
        """An empty staging folder: parts a crashed export left behind are never published."""
        staging = self.run_dir.path / f"{name}.staging"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def _write_shards(self, selected: dict[str, dict], locations: dict[str, str], refs: dict[str, dict]) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        scale = cfg.source.scale()
        staging = self._staging("shards")
        staging_rejected = self._staging("shards-rejected") if cfg.export.rejected else None
        writers: dict[tuple[str, str], SplitWriter] = {}
        cache = ResponseCache(run_dir.cache_path)
        try:
            for bundle in iter_bundles(run_dir.bundles, {k: v for k, v in locations.items() if k in selected}):
                bundle = overlay(bundle, refs.get(bundle["key"]))
                entry = selected[bundle["key"]]
                accepted = entry["state"] == ClipState.ACCEPTED.value
                if not accepted:
                    entry = {**entry, "answer": {**entry["answer"], "chosen": _closest(entry["answer"])}}
                root, final = (staging, run_dir.shards) if accepted else (staging_rejected, run_dir.rejected_shards)
                writer = writers.get((str(root), bundle["split"]))
                if writer is None:
                    writer = writers[(str(root), bundle["split"])] = SplitWriter(
                        root / bundle["split"], cfg.export, f"{final.name}/{bundle['split']}"
                    )
                for row in corpus_rows(bundle, entry, cache, cfg.export, scale):
                    writer.add(row)
                    self.stats.inc(f"rows/{bundle['split'] if accepted else 'rejected/' + bundle['split']}")
            for writer in writers.values():
                writer.flush()
                self.files.extend(writer.parts)
        finally:
            cache.close()
        swap_in(staging, run_dir.shards)
        if staging_rejected is not None:
            swap_in(staging_rejected, run_dir.rejected_shards)

    def _write_eval(self, keys: list[str], locations: dict[str, str], refs: dict[str, dict]) -> None:
        scale = self.cfg.source.scale()
        staging = self._staging("eval")
        writers: dict[str, SplitWriter] = {}
        wanted = set(keys)
        for bundle in iter_bundles(self.run_dir.bundles, {k: v for k, v in locations.items() if k in wanted}):
            bundle = overlay(bundle, refs.get(bundle["key"]))
            split = bundle["split"]
            writer = writers.get(split)
            if writer is None:
                writer = writers[split] = SplitWriter(staging / split, self.cfg.export, f"eval/{split}", EVAL_SCHEMA)
            writer.add({**{name: bundle[name] for name in EVAL_SCHEMA.names if name in bundle},
                        "label_polarity": scale.polarity(bundle["label"]).value})
            self.stats.inc(f"eval_rows/{split}")
        for writer in writers.values():
            writer.flush()
            self.eval_files.extend(writer.parts)
        swap_in(staging, self.run_dir.eval)

    def manifest(self, counts, answers: dict[str, dict], fingerprint: str) -> dict[str, Any]:
        cfg = self.cfg
        models = sorted({a["answer"].get("teacher_model") for a in answers.values() if a["answer"].get("teacher_model")})
        prompts = sorted({a["answer"].get("prompt_version") for a in answers.values() if a["answer"].get("prompt_version")})
        tokens = {
            "prompt": sum(a["answer"].get("prompt_tokens") or 0 for a in answers.values()),
            "completion": sum(a["answer"].get("completion_tokens") or 0 for a in answers.values()),
        }
        teacher, client = self.run_dir.totals("teacher"), self.run_dir.totals("client")
        return {
            "name": cfg.name,
            "config_hash": cfg.fingerprint(),
            "inputs_hash": fingerprint,
            "dataset": cfg.source.dataset,
            "scale": cfg.source.scale().as_dict(),
            "teacher_models": models,
            "prompt_versions": prompts,
            "teacher_splits": cfg.teacher.splits,
            "test_chains": "test" in cfg.teacher.splits,
            "counts": {"total": counts.total, "states": counts.by_state, "splits": counts.by_split},
            "reasons": [{"stage": s, "reason": r, "count": n} for s, r, n in counts.reasons[:50]],
            "tokens": tokens,
            "teacher_stats": {"requests": teacher["requests"], "cache_hits": teacher["cache_hits"],
                              "retries": client.group("retries"), "failures": client.group("failures")},
            "shards": {"rows": {k: v for k, v in self.stats.group("rows").items()}, "files": self.files,
                       "format": "parquet/zstd", "schema": "schemas/corpus_row.schema.json", "media": cfg.export.media},
            "eval": {"splits": cfg.export.eval_splits, "rows": self.stats.group("eval_rows"), "files": self.eval_files,
                     "schema": "schemas/clip_bundle.schema.json + label_polarity",
                     "note": "every bundled clip of the split, unfiltered by the gold label: evaluate here, never on shards/"},
        }
