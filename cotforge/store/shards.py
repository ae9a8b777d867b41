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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cotforge import __version__
from cotforge.config import ExportConfig
from cotforge.dc import parse_teacher, polarity_of, render_student
from cotforge.teacher.cache import ResponseCache

SCHEMA_VERSION = "1"

CUES = pa.struct([("text", pa.string()), ("audio", pa.string()), ("visual", pa.string())])
RATIONALE = pa.struct(
    [
        ("discrimination", pa.struct([("cues", CUES), ("summary", pa.string()), ("polarity", pa.string())])),
        ("calibration", pa.struct([("reasoning", pa.string()), ("score", pa.float64())])),
    ]
)
RULE = pa.struct([("name", pa.string()), ("passed", pa.bool_()), ("reason", pa.string())])
REVIEW = pa.struct(
    [
        ("verdict", pa.string()), ("target", pa.string()), ("polarity", pa.string()), ("score", pa.float64()),
        ("rating", pa.int32()), ("reviewer", pa.string()), ("reviewed_at", pa.string()),
    ]
)
CORPUS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("key", pa.string()),
        ("sample", pa.int32()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("video_id", pa.string()),
        ("clip_id", pa.string()),
        ("language", pa.string()),
        ("text", pa.string()),
        ("label", pa.float64()),
        ("label_polarity", pa.string()),
        ("label_T", pa.float64()),
        ("label_A", pa.float64()),
        ("label_V", pa.float64()),
        ("source_path", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("duration", pa.float64()),
        ("media_hash", pa.string()),
        ("audio", pa.binary()),
        ("audio_sample_rate", pa.int32()),
        ("frames", pa.list_(pa.binary())),
        ("frame_timestamps", pa.list_(pa.float64())),
        ("frame_fps", pa.float64()),
        ("teacher_model", pa.string()),
        ("prompt_version", pa.string()),
        ("rationale", RATIONALE),
        ("target", pa.string()),
        ("teacher_score", pa.float64()),
        ("teacher_polarity", pa.string()),
        ("error", pa.float64()),
        ("hinted", pa.bool_()),
        ("attempts", pa.int32()),
        ("validation", pa.list_(RULE)),
        ("review", REVIEW),
    ]
)


@dataclass
class ExportResult:
    rows: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    rewritten: bool = True
    inputs_hash: str = ""


class SplitWriter:
    """Rolls over to a new part when the current one reaches the target size."""

    def __init__(self, folder: Path, cfg: ExportConfig, public: str) -> None:
        self.folder = folder
        self.public = public  # where the part will be once the staging folder is swapped in, e.g. shards/train
        self.cfg = cfg
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
        pq.write_table(pa.Table.from_pylist(self.rows, schema=CORPUS_SCHEMA), path, compression="zstd",
                       row_group_size=self.cfg.row_group_rows)
        self.parts.append({"path": f"{self.public}/{path.name}", "rows": len(self.rows), "bytes": path.stat().st_size})
        self.rows, self.bytes = [], 0


def inputs_hash(answers: dict[str, dict], config_hash: str) -> str:
    """What the shards are made of: the chosen answers and the config. Equal hash, equal shards."""
    digest = hashlib.sha256(config_hash.encode())
    for key in sorted(answers):
        entry = answers[key]
        chosen = [(entry["answer"]["candidates"][i]["cache_key"], entry["answer"]["candidates"][i]["index"])
                  for i in entry["answer"].get("chosen") or []]
        digest.update(json.dumps([key, entry["state"], entry["split"], chosen]).encode())
    return digest.hexdigest()


def corpus_rows(bundle: dict, entry: dict, cache: ResponseCache, cfg: ExportConfig, neutral: tuple[float, bool]) -> Iterator[dict]:
    """One shard row per chosen sample of a clip (one, or all passing ones with keep=all)."""
    answer = entry["answer"]
    for sample, index in enumerate(answer.get("chosen") or []):
        candidate = answer["candidates"][index]
        response = cache.get(candidate["cache_key"])
        if response is None:
            raise RuntimeError(f"{bundle['key']}: its answer is not in cache.sqlite; re-run `cotforge synth` for it")
        parsed = parse_teacher(response.contents[candidate["index"]])
        rationale = parsed.rationale
        inline = cfg.media == "inline"
        yield {
            "id": f"{bundle['key']}#{sample}",
            "key": bundle["key"],
            "sample": sample,
            "dataset": bundle["dataset"],
            "split": bundle["split"],
            "video_id": bundle["video_id"],
            "clip_id": bundle["clip_id"],
            "language": bundle["language"],
            "text": bundle["text"],
            "label": bundle["label"],
            "label_polarity": polarity_of(bundle["label"], *neutral).value,
            "label_T": bundle["label_T"],
            "label_A": bundle["label_A"],
            "label_V": bundle["label_V"],
            "source_path": bundle["source_path"],
            "start": bundle["start"],
            "end": bundle["end"],
            "duration": bundle["duration"],
            "media_hash": bundle["media_hash"],
            "audio": bundle["audio"] if inline else None,
            "audio_sample_rate": bundle["audio_sample_rate"],
            "frames": bundle["frames"] if inline else None,
            "frame_timestamps": bundle["frame_timestamps"],
            "frame_fps": bundle["frame_fps"],
            "teacher_model": response.model,
            "prompt_version": answer.get("prompt_version"),
            "rationale": rationale.model_dump(mode="json"),
            "target": render_student(rationale),
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
