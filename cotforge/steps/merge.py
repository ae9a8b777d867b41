"""Runs split by `--shard i/N`, and putting them back together (`cotforge merge`).

A shard is an ordinary run folder that read only the clips whose key hashes to it (`read.shard_of`).
Its ledger remembers which shard it holds, so that a later command cannot mix shards in one folder
and `merge` can tell a complete set of shards from one with a shard missing.

Merging unions the ledgers, the response caches and the bundle parts by key, refuses runs made with
different configs or prompt versions, checks that the union covers the source, and then writes the
shards, the eval sets and one manifest with the export step, from the same ledger rows, cached
answers and bundles a single run would have had: the corpus is the same as one machine's. The
shard folders are only read.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotforge.config import PipelineConfig, shard_index
from cotforge.sources import SourceError
from cotforge.stats import Stats
from cotforge.steps.bookkeeping import Bookkeeping
from cotforge.steps.export import ExportStep, read_manifest
from cotforge.steps.read import ReadStep
from cotforge.store.cache import ResponseCache
from cotforge.store.ledger import Ledger, open_read_only
from cotforge.store.run import RunDir, RunError
from cotforge.store.shards import write_manifest

SHARD_META = "shard"
MERGED_META = "merged_from"
SECTIONS = ("source", "media", "teacher", "validate", "reask", "export")
"""The config sections whose difference makes two runs two corpora (what `PipelineConfig.fingerprint` covers)."""


class MergeError(RunError):
    """The runs cannot be merged into one corpus (other configs, a shard missing, clips not covered)."""


def bind_shard(books: Bookkeeping, shard: str | None, reads_source: bool) -> None:
    """Record the shard a run folder holds; refuse a command that would mix shards (or a shard and a whole run) in it."""
    known = books.get_meta(SHARD_META)
    path = books.run_dir.path
    if shard is None:
        if known is not None and reads_source:
            raise RunError(f"{path} holds shard {known} of a split run; give --shard {known}, or use another --run folder")
        return
    if known is None and books.ledger.count() > 0:
        raise RunError(f"{path} holds a whole run, not shard {shard}; every shard needs a --run folder of its own")
    if known is not None and known != shard:
        raise RunError(f"{path} holds shard {known}, not {shard}; every shard needs a --run folder of its own")
    books.set_meta(SHARD_META, shard)


@dataclass
class ShardRun:
    """One run folder to merge, as read (never written)."""

    path: Path
    config: PipelineConfig
    shard: str | None
    prompt_versions: set[str]
    meta: dict[str, str]
    clips: int

    def summary(self) -> dict[str, Any]:
        """How the merged run names this one (ledger meta, manifest `merged_from`, the command's output)."""
        return {"run": str(self.path), "shard": self.shard, "clips": self.clips}

    @property
    def rank(self) -> tuple[int, int]:
        return shard_index(self.shard)


@dataclass
class MergeResult:
    out: Path
    runs: list[ShardRun]
    clips: int
    states: dict[str, int]
    export: Stats = field(default_factory=Stats)


def open_run(path: Path) -> ShardRun:
    run_dir = RunDir(path)
    if not run_dir.exists():
        raise MergeError(f"{path} is not a run directory (no ledger.sqlite)")
    saved = run_dir.load_config()
    if not saved:
        raise MergeError(f"{path} has no config.yaml; it was not made by `cotforge run`, `bundle` or `synth`")
    saved.pop("run", None)
    try:
        config = PipelineConfig.model_validate(saved)
    except ValueError as err:
        raise MergeError(f"{path}/config.yaml is not a valid pipeline config: {err}") from None
    db = open_read_only(run_dir.ledger_path)  # shard folders are only read: no -wal/-shm is left in them
    try:
        meta = dict(db.execute("SELECT name, value FROM meta"))
        versions = {v for (v,) in db.execute("SELECT DISTINCT prompt_version FROM clips WHERE prompt_version IS NOT NULL")}
        clips = db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
    finally:
        db.close()
    shard = json.loads(meta[SHARD_META]) if SHARD_META in meta else None
    return ShardRun(path, config, shard, versions, meta, clips)


def _sections(cfg: PipelineConfig) -> dict[str, str]:
    data = cfg.public_dump()
    data["teacher"] = {**cfg.teacher_identity(), "splits": data["teacher"]["splits"]}
    return {name: json.dumps(data[name], sort_keys=True) for name in SECTIONS}


def check_runs(runs: list[ShardRun]) -> None:
    """Refuse runs that are not the N shards of one config: other settings, other prompts, shards missing or twice."""
    first = runs[0]
    for run in runs[1:]:
        if run.config.fingerprint() != first.config.fingerprint():
            a, b = _sections(first.config), _sections(run.config)
            differ = [name for name in SECTIONS if a[name] != b[name]]
            raise MergeError(
                f"{run.path} was made with another config than {first.path} (sections that differ: "
                f"{', '.join(differ) or 'fingerprint'}); only shards of one config make one corpus"
            )
        for name in ("source", "media", "teacher"):
            if name in run.meta and name in first.meta and run.meta[name] != first.meta[name]:
                raise MergeError(f"{run.path} and {first.path} were made with other {name} settings (ledger meta {name!r} differs)")
    versions = [(run.path, run.prompt_versions) for run in runs if run.prompt_versions]
    if len({frozenset(v) for _, v in versions}) > 1:
        listing = "; ".join(f"{path}: {', '.join(sorted(v))}" for path, v in versions)
        raise MergeError(f"the runs were asked with different prompt versions ({listing}); their chains are not one corpus")
    whole = [run.path for run in runs if run.shard is None]
    if whole:
        raise MergeError(f"{whole[0]} is not a shard (made without --shard i/N); merge joins the N shards of a split run")
    worlds = {run.rank[1] for run in runs}
    if len(worlds) > 1:
        raise MergeError(f"the runs split the source in different numbers of shards ({', '.join(map(str, sorted(worlds)))})")
    world = worlds.pop()
    seen: dict[int, Path] = {}
    for run in runs:
        rank = run.rank[0]
        if rank in seen:
            raise MergeError(f"{seen[rank]} and {run.path} both hold shard {rank}/{world}")
        seen[rank] = run.path
    missing = [f"{rank}/{world}" for rank in range(world) if rank not in seen]
    if missing:
        raise MergeError(f"shard {', '.join(missing)} missing: give all {world} shard run folders")


def check_coverage(cfg: PipelineConfig, keys: set[str]) -> None:
    """Every clip the source gives under this config (read whole, no shard) is in one of the runs."""
    reader = ReadStep(cfg.source)
    try:
        reader.check()
        missing = [ref.key for ref in reader.run() if ref.key not in keys]
    except SourceError as err:
        raise MergeError(
            f"cannot read the source to check that the shards cover it ({err}); run merge where {cfg.source.root} "
            "is readable, or pass --no-check-source"
        ) from None
    if missing:
        raise MergeError(
            f"{len(missing)} clips of the source are in none of the runs (e.g. {', '.join(missing[:3])}); a shard stopped "
            "early or the label file changed since: finish or re-run the shards, then merge"
        )


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def _rows(path: Path, table: str, columns: list[str]) -> Iterator[tuple]:
    db = open_read_only(path)
    try:
        have = set(_columns(db, table))
        wanted = ", ".join(c if c in have else "NULL" for c in columns)
        yield from db.execute(f"SELECT {wanted} FROM {table}")
    finally:
        db.close()


def _link(source: Path, target: Path) -> None:
    """Bundle parts are immutable once written: a hard link costs no space; another filesystem gets a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _union(runs: list[ShardRun], out: RunDir) -> set[str]:
    """Ledger rows, cached answers and bundle parts of every run into `out`; the clip keys."""
    out.bundles.mkdir(parents=True)
    keys: set[str] = set()
    ledger = Ledger(out.ledger_path)
    try:
        columns = _columns(ledger.db, "clips")
        part = columns.index("bundle_part")
        marks = ", ".join("?" * len(columns))
        next_part = 0
        for run in runs:
            source = RunDir(run.path)
            renamed: dict[str, str] = {}
            rows = []
            for row in _rows(source.ledger_path, "clips", columns):
                row = list(row)
                if row[0] in keys:
                    raise MergeError(f"clip {row[0]} is in more than one run (last: {run.path})")
                keys.add(row[0])
                name = row[part]
                if name is not None:
                    if name not in renamed:
                        renamed[name] = f"part-{next_part:05d}.parquet"
                        next_part += 1
                        _link(source.bundles / name, out.bundles / renamed[name])
                    row[part] = renamed[name]
                rows.append(row)
            ledger.db.executemany(f"INSERT INTO clips({', '.join(columns)}) VALUES ({marks})", rows)
        for name, value in runs[0].meta.items():
            if name != SHARD_META:
                ledger.set_meta(name, value)
        ledger.set_meta(MERGED_META, json.dumps([run.summary() for run in runs]))
        ledger.commit()
    finally:
        ledger.close()
    cache = ResponseCache(out.cache_path)
    try:
        columns = _columns(cache.db, "responses")
        marks = ", ".join("?" * len(columns))
        for run in runs:
            path = RunDir(run.path).cache_path
            if path.is_file():
                # the same key is the same request: any copy is the answer
                cache.db.executemany(f"INSERT OR IGNORE INTO responses({', '.join(columns)}) VALUES ({marks})",
                                     _rows(path, "responses", columns))
        cache.db.commit()
    finally:
        cache.close()
    return keys


def merge_runs(paths: list[Path], out: Path, check_source: bool = True) -> MergeResult:
    """Join the N shard runs of one config into the run folder `out` (new or empty), with shards and one manifest."""
    began = time.time()
    if not paths:
        raise MergeError("give the run folders to merge")
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} is not empty; merge writes a new run folder")
    if out.resolve() in {p.resolve() for p in paths}:
        raise MergeError(f"--out {out} is one of the runs to merge; merge writes a new run folder")
    runs = sorted((open_run(p) for p in paths), key=lambda r: r.rank)
    check_runs(runs)
    cfg = runs[0].config
    run_dir = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        keys = _union(runs, run_dir)
        if check_source:
            check_coverage(cfg, keys)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    saved = RunDir(runs[0].path).load_config()
    saved.pop("run", None)
    saved.setdefault("exec", {})["shard"] = None
    run_dir.save_config(saved)
    stages: dict[str, Stats] = {}
    for run in runs:
        for attempt in RunDir(run.path).read_stats()["attempts"]:
            for stage, data in attempt["stages"].items():
                stages[stage] = stages.get(stage, Stats()).merge(Stats.from_dict(data))
    merged = Stats()
    merged.inc("runs", len(runs))
    merged.inc("clips", len(keys))
    run_dir.append_stats("merge", {**stages, "merge": merged}, began)
    step = ExportStep(cfg.model_copy(update={"run": out}), run_dir)
    step.run()
    manifest = read_manifest(run_dir) or {}
    manifest["merged_from"] = [run.summary() for run in runs]
    write_manifest(run_dir.manifest_path, manifest)
    with run_dir.open_ledger(read_only=True) as ledger:
        states = ledger.counts().by_state
    return MergeResult(out, runs, len(keys), states, step.stats)


def describe(result: MergeResult) -> dict[str, Any]:
    """What the merge did, for the command line and tests."""
    return {
        "out": str(result.out),
        "runs": [run.summary() for run in result.runs],
        "clips": result.clips,
        "states": {k: v for k, v in result.states.items() if v},
        "shard_rows": result.export.group("rows"),
    }
