"""shards/{train,valid,test}/part-*.parquet: the accepted chains, and manifest.json.

Shards are rebuilt from the ledger, the response cache and the bundle parts — never from the
teacher — so `cotforge export` is free to re-run. A rebuild is written beside the old shards and
swapped in only when complete; when its inputs are unchanged (same chosen answers, same config)
nothing is rewritten at all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cotforge import __version__
from cotforge.config import ExportConfig
from cotforge.dc import parse_teacher, render_student
from cotforge.store.bundles import BUNDLE_SCHEMA
from cotforge.store.cache import ResponseCache
from cotforge.types import Scale

SCHEMA_VERSION = "1"

CUES = pa.struct([("text", pa.string()), ("audio", pa.string()), ("visual", pa.string())])
RATIONALE = pa.struct(
    [
        ("discrimination", pa.struct([("cues", CUES), ("summary", pa.string()), ("polarity", pa.string())])),
        ("calibration", pa.struct([("reasoning", pa.string()), ("score", pa.float64())])),
    ]
)
RULE = pa.struct([("name", pa.string()), ("passed", pa.bool_()), ("reason", pa.string())])
# Null until `cotforge review apply`: the latest valid annotation's answers, and every annotation kept.
REVIEW = pa.struct(
    [
        ("verdict", pa.string()), ("edited", pa.bool_()), ("discrimination", pa.string()), ("calibration", pa.string()),
        ("rationale", RATIONALE), ("teacher_target", pa.string()), ("rating", pa.int32()), ("polarity", pa.string()),
        ("score", pa.float64()), ("comment", pa.string()), ("reviewer", pa.string()), ("reviewed_at", pa.string()),
        ("task_id", pa.int64()),
        ("annotations", pa.list_(pa.struct([
            ("annotation_id", pa.int64()), ("task_id", pa.int64()), ("reviewer", pa.string()),
            ("reviewed_at", pa.string()), ("cancelled", pa.bool_()), ("verdict", pa.string()),
            ("discrimination", pa.string()), ("calibration", pa.string()), ("rating", pa.int32()),
            ("polarity", pa.string()), ("score", pa.float64()), ("comment", pa.string()), ("lead_time", pa.float64()),
            ("problem", pa.string()),
        ]))),
    ]
)
# Columns a shard row copies from the clip's bundle row unchanged (types from BUNDLE_SCHEMA).
FROM_BUNDLE = (
    "key", "dataset", "split", "video_id", "clip_id", "language", "text", "label", "label_T", "label_A", "label_V",
    "source_path", "start", "end", "duration", "media_hash", "audio", "audio_sample_rate", "frames",
    "frame_timestamps", "frame_fps",
)
INLINE_MEDIA = ("audio", "frames")
_ORDER = (
    "id", "key", "sample", "dataset", "split", "video_id", "clip_id", "language", "text", "label", "label_polarity",
    "label_T", "label_A", "label_V", "source_path", "start", "end", "duration", "media_hash", "audio",
    "audio_sample_rate", "frames", "frame_timestamps", "frame_fps", "teacher_model", "prompt_version", "rationale",
    "target", "teacher_reasoning", "teacher_score", "teacher_polarity", "error", "hinted", "attempts", "validation", "review",
)
_OWN = {
    "id": pa.string(), "sample": pa.int32(), "label_polarity": pa.string(), "teacher_model": pa.string(),
    "prompt_version": pa.string(), "rationale": RATIONALE, "target": pa.string(), "teacher_reasoning": pa.string(),
    "teacher_score": pa.float64(),
    "teacher_polarity": pa.string(), "error": pa.float64(), "hinted": pa.bool_(), "attempts": pa.int32(),
    "validation": pa.list_(RULE), "review": REVIEW,
}
CORPUS_SCHEMA = pa.schema(
    [(name, _OWN[name]) if name in _OWN else BUNDLE_SCHEMA.field(name) for name in _ORDER]
)
EVAL_SCHEMA = BUNDLE_SCHEMA.append(pa.field("label_polarity", pa.string()))
"""RUN/eval/<split>/: every bundled clip of the split, media and gold, no teacher output."""


class ExportError(Exception):
    """The shards cannot be rebuilt from what the run directory holds."""


class SplitWriter:
    """Rolls over to a new part when the current one reaches the target size."""

    def __init__(self, folder: Path, cfg: ExportConfig, public: str, schema: pa.Schema = CORPUS_SCHEMA) -> None:
        self.folder = folder
        self.public = public  # where the part will be once the staging folder is swapped in, e.g. shards/train
        self.cfg = cfg
        self.schema = schema
        self.rows: list[dict] = []
        self.bytes = 0
        self.parts: list[dict[str, Any]] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.bytes += len(row["audio"] or b"") + sum(len(f) for f in row["frames"] or []) + 2048
        if self.bytes >= self.cfg.shard_mb * 1e6:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{len(self.parts):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), path, compression="zstd",
                       row_group_size=self.cfg.row_group_rows)
        self.parts.append({"path": f"{self.public}/{path.name}", "rows": len(self.rows), "bytes": path.stat().st_size})
        self.rows, self.bytes = [], 0


def inputs_hash(answers: dict[str, dict], refs: dict[str, dict], eval_keys: list[str], config_hash: str) -> str:
    """What the shards and eval sets are made of: the chosen answers, each clip's current labels, the
    eval sets' members and the config. Equal hash, equal files."""
    digest = hashlib.sha256(config_hash.encode())
    for key in sorted(answers):
        entry = answers[key]
        chosen = [(entry["answer"]["candidates"][i]["cache_key"], entry["answer"]["candidates"][i]["index"])
                  for i in entry["answer"].get("chosen") or []]
        digest.update(json.dumps([key, entry["state"], entry["split"], chosen, labels_of(refs.get(key))]).encode())
    for key in sorted(eval_keys):
        digest.update(json.dumps(["eval", key, labels_of(refs.get(key))]).encode())
    return digest.hexdigest()


def labels_of(ref: dict | None) -> list:
    return [ref.get(name) for name in ("label", "text", "split", "label_T", "label_A", "label_V")] if ref else []


def corpus_rows(bundle: dict, entry: dict, cache: ResponseCache, cfg: ExportConfig, scale: Scale) -> Iterator[dict]:
    """One shard row per chosen sample of a clip (one, or all passing ones with keep=all)."""
    answer = entry["answer"]
    for sample, index in enumerate(answer.get("chosen") or []):
        candidate = answer["candidates"][index]
        response = cache.get(candidate["cache_key"])
        if response is None:
            raise ExportError(
                f"{bundle['key']}: its accepted answer is not in cache.sqlite (deleted or replaced?), so the shards "
                "cannot be rebuilt; restore RUN/cache.sqlite, or run the pipeline into a new --run folder"
            )
        parsed = parse_teacher(response.contents[candidate["index"]])
        rationale = parsed.rationale
        row = {name: bundle[name] for name in FROM_BUNDLE}
        if cfg.media == "path":
            row.update(dict.fromkeys(INLINE_MEDIA))
        yield {
            **row,
            "id": f"{bundle['key']}#{sample}",
            "sample": sample,
            "label_polarity": scale.polarity(bundle["label"]).value,
            "teacher_model": response.model,
            "prompt_version": answer.get("prompt_version"),
            "rationale": rationale.model_dump(mode="json"),
            "target": render_student(rationale),
            "teacher_reasoning": response.reasonings[candidate["index"]] if candidate["index"] < len(response.reasonings) else None,
            "teacher_score": rationale.calibration.score,
            "teacher_polarity": rationale.discrimination.polarity.value,
            "error": candidate["error"],
            "hinted": candidate["hinted"],
            "attempts": len(answer["candidates"]),
            "validation": candidate["rules"],
            "review": None,
        }


def swap_in(new: Path, target: Path) -> None:
    """Replace `target` by the finished `new` folder with two renames (old copy removed after)."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def write_manifest(path: Path, payload: dict[str, Any]) -> None:
    payload = {"schema_version": SCHEMA_VERSION, "cotforge_version": __version__, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.rename(path)
