"""Reading a shards folder for review: its parts per split, its manifest and its label scale.

`--shards` is a run's `RUN/shards` or the `OUT/shards` of a reviewed copy made by `review apply`,
which keeps a run's layout: the manifest one level up, rejected chains in the sibling
`shards-rejected`, and parts in `{split}/part-*.parquet`, so every reader treats both alike.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cotforge.review import ReviewError
from cotforge.types import Scale

SPLITS = ("train", "valid", "test")


def split_order(names: Iterable[str]) -> list[str]:
    """train, valid, test first, then any other split by name."""
    return sorted(set(names), key=lambda name: (SPLITS.index(name) if name in SPLITS else len(SPLITS), name))


@dataclass(frozen=True)
class Corpus:
    root: Path

    def parts(self) -> list[tuple[str, Path]]:
        """(split, part file) in a stable order: known splits first, then any other folder."""
        if not self.root.is_dir():
            raise ReviewError(f"{self.root} is not a shards folder (expected {self.root}/{{train,valid,test}}/part-*.parquet)")
        splits = split_order(p.name for p in self.root.iterdir() if p.is_dir())
        return [(split, part) for split in splits for part in sorted((self.root / split).glob("part-*.parquet"))]

    def manifest_path(self) -> Path:
        return self.root.parent / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        path = self.manifest_path()
        if not path.is_file():
            raise ReviewError(f"no {path}: point --shards at RUN/shards, or at the shards/ folder of a reviewed copy "
                              "written by `cotforge review apply`")
        return json.loads(path.read_text(encoding="utf-8"))

    def scale(self) -> Scale:
        manifest = self.manifest()
        if "scale" not in manifest:
            raise ReviewError(f"{self.manifest_path()} has no label scale; re-export the run with this cotforge version")
        return Scale.from_dict(manifest["scale"])

    def rejected(self) -> Corpus:
        """The run's rejected chains (`export.rejected: true`), beside the accepted ones."""
        return Corpus(self.root.with_name(self.root.name + "-rejected"))

    def ledger(self) -> Path | None:
        path = self.root.parent / "ledger.sqlite"
        return path if path.is_file() else None

    def read(self, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """All rows (only `columns`), in part order."""
        return [row for _, part in self.parts() for row in pq.read_table(part, columns=columns).to_pylist()]



def replace_folder(staged: Path, out: Path, ours: Callable[[Path], bool]) -> None:
    """Put a completely written folder in place of `out` with two renames.

    `out` is replaced only if it is empty or `ours(out)` says an earlier run of the same command
    wrote it: a mistyped --out must never delete a run or a dataset.
    """
    if out.exists() and any(out.iterdir()) and not ours(out):
        raise ReviewError(f"{out} exists and was not written by this command; pick a new folder (nothing written)")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staged.rename(out)
    shutil.rmtree(old, ignore_errors=True)
