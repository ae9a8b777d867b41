"""Helpers shared by the readers: parsing numbers and ids the way real label files need, keys, duplicates."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from cotforge.types import ClipRef

SPLITS = ("train", "valid", "test")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".flv", ".m4v")


class RowError(ValueError):
    """A single row is unusable; it becomes a failed clip with this message as reason."""


def parse_float(value: str | float | int | None, column: str, required: bool) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            raise RowError(f"{column} is empty")
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise RowError(f"{column} is not a number: {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        if required:
            raise RowError(f"{column} is not a finite number: {value!r}")
        return None
    return number


def parse_id(value: object) -> str:
    """Ids are text: '0001' must stay '0001', and a float-formatted '11.0' from a pandas round trip is 11."""
    text = "" if value is None else str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    return text


def check_range(label: float, low: float, high: float, dataset: str) -> None:
    if not low <= label <= high:
        raise RowError(f"label out of range [{low:g}, {high:g}] for {dataset}: {label:g}")


def normalise_split(value: str) -> str:
    split = value.strip().lower()
    if split not in SPLITS:
        raise RowError(f"split (mode) is not train/valid/test: {value!r}")
    return split


def inside_root(path: Path, root: Path, allow_outside: bool, folder: bool = False) -> Path:
    """`path` with symlinks and `..` resolved, refused when it leaves the dataset root or is not a
    regular file: a label row must not make cotforge read /etc/passwd or /dev/zero."""
    resolved = path.resolve()
    if not allow_outside and not resolved.is_relative_to(root.resolve()):
        raise RowError(
            f"path outside the dataset root: {path} is {resolved}, outside {root.resolve()} "
            "(set source.allow_outside_root: true if that is meant)"
        )
    if not folder and resolved.exists() and not resolved.is_file():
        raise RowError(f"not a regular file: {path}")
    return resolved


def resolve_clip_file(folder: Path, clip_id: str, listing: dict[Path, list[Path]]) -> Path | None:
    """Find Raw/<video>/<clip>.<ext>, tolerating ids whose zero padding was lost (0001 vs 1).

    `listing` caches a folder's files so a dataset of 20k clips does not list a folder per row.
    """
    direct = folder / f"{clip_id}.mp4"
    if direct.is_file():
        return direct
    if folder not in listing:
        listing[folder] = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    files = listing[folder]
    for path in files:
        if path.stem == clip_id and path.suffix.lower() in VIDEO_EXTENSIONS:
            return path
    if clip_id.isdigit():
        for path in files:
            if path.stem.isdigit() and int(path.stem) == int(clip_id) and path.suffix.lower() in VIDEO_EXTENSIONS:
                return path
    return None


def row_digest(values: object) -> str:
    """A short content hash of a raw row: the stable stand-in for an id the row lacks, so that an edit
    elsewhere in the file (which shifts line numbers) does not change this row's key."""
    return hashlib.sha256(repr(values).encode()).hexdigest()[:10]


class KeyRegistry:
    """Makes keys unique: the n-th repeat of a key is kept as a failed row under `key#dupN`, never
    dropped. The suffix counts occurrences, not lines, so keys stay put when rows above are edited."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def claim(self, ref: ClipRef) -> ClipRef:
        first, count = self._seen.get(ref.key, (ref.line, 0))
        self._seen[ref.key] = (first, count + 1)
        if count:
            ref.error = ref.error or f"duplicate key: {ref.key} (first seen at line {first})"
            ref.key = f"{ref.key}#dup{count + 1}"
        return ref
