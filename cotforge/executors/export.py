"""`export`: rebuild the shards and the manifest of a run from its ledger, cache and bundles.

No teacher call happens here. The shards are written to a fresh folder and swapped in when
complete; if the chosen answers and the config are what the manifest says the shards were made
of, nothing is rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotforge.config import PipelineConfig
from cotforge.store.bundles import iter_bundles
from cotforge.store.run import RunDir, RunError
from cotforge.store.shards import ExportResult, SplitWriter, corpus_rows, inputs_hash, swap_in, write_manifest
from cotforge.store.cache import ResponseCache
from cotforge.types import ClipState


def read_manifest(run_dir: RunDir) -> dict[str, Any] | None:
    if not run_dir.manifest_path.is_file():
        return None
    return json.loads(run_dir.manifest_path.read_text(encoding="utf-8"))


def check_config(run_dir: RunDir, cfg: PipelineConfig, force: bool) -> None:
    """Refuse to mix two configs' chains in one run's shards unless forced."""
    manifest = read_manifest(run_dir)
    if manifest and manifest.get("config_hash") != cfg.fingerprint() and not force:
        raise RunError(
            f"{run_dir.path} holds shards made with another config (config hash {manifest.get('config_hash')}, "
            f"this one {cfg.fingerprint()}); use another --run folder, or --force to rebuild them with this config"
        )


def run_export(cfg: PipelineConfig, run: Path, force: bool = False) -> ExportResult:
    run_dir = RunDir(run)
    if not run_dir.exists():
        raise RunError(f"{run} is not a run directory (no ledger.sqlite)")
    check_config(run_dir, cfg, force)
    with run_dir.open_ledger() as ledger:
        answers = ledger.answers()
        locations = ledger.bundle_locations()
        counts = ledger.counts()
    wanted = {ClipState.ACCEPTED.value} | ({ClipState.REJECTED.value} if cfg.export.rejected else set())
    selected = {k: v for k, v in answers.items() if v["state"] in wanted}
    fingerprint = inputs_hash(selected, cfg.fingerprint())
    manifest = read_manifest(run_dir)
    if manifest and manifest.get("inputs_hash") == fingerprint and run_dir.shards.exists():
        shards = manifest.get("shards", {})
        result = ExportResult(rows=shards.get("rows", {}), files=shards.get("files", []), rewritten=False, inputs_hash=fingerprint)
        fresh = manifest_payload(cfg, counts, result, answers)
        if fresh["counts"] != manifest.get("counts"):
            write_manifest(run_dir.manifest_path, fresh)
        return result

    result = ExportResult(inputs_hash=fingerprint)
    staging = run_dir.path / "shards.staging"
    staging_rejected = run_dir.path / "shards-rejected.staging"
    writers: dict[tuple[str, str], SplitWriter] = {}
    scale = cfg.source.scale()
    cache = ResponseCache(run_dir.cache_path)
    try:
        for bundle in iter_bundles(run_dir.bundles, {k: v for k, v in locations.items() if k in selected}):
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
                tag = bundle["split"] if accepted else f"rejected/{bundle['split']}"
                result.rows[tag] = result.rows.get(tag, 0) + 1
        for writer in writers.values():
            writer.flush()
            result.files.extend(writer.parts)
    finally:
        cache.close()
    staging.mkdir(exist_ok=True)
    swap_in(staging, run_dir.shards)
    if cfg.export.rejected:
        staging_rejected.mkdir(exist_ok=True)
        swap_in(staging_rejected, run_dir.rejected_shards)
    write_manifest(run_dir.manifest_path, manifest_payload(cfg, counts, result, answers))
    return result


def _closest(answer: dict) -> list[int]:
    """For a rejected clip, the parsed candidate nearest the gold label (what a reviewer would look at)."""
    parsed = [(c["error"], i) for i, c in enumerate(answer["candidates"]) if c["error"] is not None]
    return [min(parsed)[1]] if parsed else []


def manifest_payload(cfg: PipelineConfig, counts, result: ExportResult, answers: dict[str, dict]) -> dict[str, Any]:
    models = sorted({a["answer"].get("teacher_model") for a in answers.values() if a["answer"].get("teacher_model")})
    prompts = sorted({a["answer"].get("prompt_version") for a in answers.values() if a["answer"].get("prompt_version")})
    tokens = {
        "prompt": sum(a["answer"].get("prompt_tokens") or 0 for a in answers.values()),
        "completion": sum(a["answer"].get("completion_tokens") or 0 for a in answers.values()),
    }
    return {
        "name": cfg.name,
        "config_hash": cfg.fingerprint(),
        "inputs_hash": result.inputs_hash,
        "dataset": cfg.source.dataset,
        "scale": cfg.source.scale().as_dict(),
        "teacher_models": models,
        "prompt_versions": prompts,
        "counts": {"total": counts.total, "states": counts.by_state, "splits": counts.by_split},
        "reasons": [{"stage": s, "reason": r, "count": n} for s, r, n in counts.reasons[:50]],
        "tokens": tokens,
        "shards": {"rows": result.rows, "files": result.files, "format": "parquet/zstd",
                   "schema": "schemas/corpus_row.schema.json", "media": cfg.export.media},
    }
