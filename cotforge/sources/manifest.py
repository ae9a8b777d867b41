"""Reader for a generic clip list (CSV/TSV, JSONL or Parquet), for corpora outside the MMSA layout.

Columns: `path` and `label` are required; `text`, `split` (or `mode`), `start`, `end`, `video_id`,
`clip_id` are optional. Relative paths are resolved against the manifest's folder. Without ids,
video_id is the file stem and clip_id the time range (or "0"), so keys stay stable when rows are
reordered.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cotforge.config import SourceConfig
from cotforge.sources import SourceError
from cotforge.sources.rows import (
    KeyRegistry,
    RowError,
    check_range,
    normalise_split,
    parse_float,
    inside_root,
    parse_id,
    row_digest,
)
from cotforge.types import ClipRef

REQUIRED = ("path", "label")


class ManifestSource:
    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.path = cfg.root
        self.name = cfg.name or self.path.stem
        scale = cfg.scale()
        self.low, self.high = scale.low, scale.high
        self.language = scale.language

    def check(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: manifest file not found (expected .csv, .tsv, .jsonl or .parquet)")
        if self.path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
            raise SourceError(f"{self.path}: unknown manifest format {self.path.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
        columns = self._columns()
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise SourceError(
                f"{self.path}, line 1: missing required column(s) {', '.join(missing)}; found {', '.join(sorted(columns))}"
            )

    def _columns(self) -> set[str]:
        suffix = self.path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(self.path).names)
        first = next(self._rows(), None)
        return set(first[1]) if first else set()

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        suffix = self.path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            line = 0
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    line += 1
                    yield line, row
            return
        with self.path.open(encoding=self.cfg.encoding, newline="") as handle:
            if suffix in (".jsonl", ".json"):
                for number, text in enumerate(handle, start=1):
                    if not text.strip():
                        continue
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as err:
                        raise SourceError(f"{self.path}, line {number}: not a JSON object ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise SourceError(f"{self.path}, line {number}: each line must be a JSON object")
                    yield number, row
                return
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",", strict=True)
            _ = reader.fieldnames
            line = reader.line_num + 1
            try:
                for row in reader:
                    yield line, row
                    line = reader.line_num + 1
            except csv.Error as err:
                raise SourceError(f"{self.path}, line {reader.line_num}: malformed CSV ({err})") from None

    def __iter__(self) -> Iterator[ClipRef]:
        keys = KeyRegistry()
        try:
            for line, row in self._rows():
                ref = self._parse(row, line)
                yield keys.claim(ref)
        except UnicodeDecodeError as err:
            raise SourceError(f"{self.path}: not valid {self.cfg.encoding} text ({err.reason}); re-save as UTF-8") from None

    def _parse(self, row: dict[str, Any], line: int) -> ClipRef:
        raw_path = str(row.get("path") or "").strip()
        media = Path(raw_path) if Path(raw_path).is_absolute() else self.path.parent / raw_path
        start = end = None
        error = None
        try:
            start = parse_float(row.get("start"), "start", required=False)
            end = parse_float(row.get("end"), "end", required=False)
        except RowError as err:
            error = str(err)
        video_id = parse_id(row.get("video_id")) or Path(raw_path).stem or f"row-{row_digest(sorted(row.items(), key=str))}"
        clip_id = parse_id(row.get("clip_id")) or (f"{start:g}-{end:g}" if start is not None and end is not None else "0")
        ref = ClipRef(
            key=f"{self.name}/{video_id}/{clip_id}",
            dataset=self.name,
            video_id=video_id,
            clip_id=clip_id,
            split=str(row.get("split") or row.get("mode") or "train").strip().lower(),
            text=str(row.get("text") or ""),
            label=None,
            media_path=str(media),
            language=str(row.get("language") or self.language),
            line=line,
            error=error,
        )
        if ref.error:
            return ref
        try:
            if not raw_path:
                raise RowError("path is empty")
            ref.split = normalise_split(ref.split)
            ref.label = parse_float(row.get("label"), "label", required=True)
            check_range(ref.label, self.low, self.high, self.name)
            if (start is None) != (end is None):
                raise RowError("a time-range clip needs both start and end")
            if start is not None and end is not None:
                ref.start, ref.end = max(0.0, start), end
                if ref.end <= ref.start:
                    raise RowError(f"empty time range: [{start:g}, {end:g}] s")
            media = inside_root(media, self.path.parent, self.cfg.allow_outside_root)
            ref.media_path = str(media)
            if not media.is_file():
                raise RowError(f"media file missing: {media}")
        except RowError as err:
            ref.error = str(err)
        return ref
