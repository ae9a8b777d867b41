"""Reader for the MMSA raw layout of CMU-MOSI, CMU-MOSEI, CH-SIMS and CH-SIMS v2.

Layout: `label.csv` (SIMS v2: `meta.csv`) with columns video_id, clip_id, text, label, label_T,
label_A, label_V, annotation, mode, and the media at `Raw/<video_id>/<clip_id>.mp4`. Columns are
read by name, never by position (third-party copies reorder them), ids stay text (`0001`), and the
file is read with the csv module so quoted commas and newlines in transcripts survive.

MOSEI as CMU distributes it (full videos with segment times) is read when the label file has
`start`/`end` columns, or with `segments: transcripts` from CMU's segmented transcript files
(`<vid>___<seg>___<start>___<end>___<text>`); the clip is then a time range of
`Raw/Videos/Full/Combined/<video_id>.mp4` and is decoded without writing the cut to disk.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from cotforge.config import SourceConfig
from cotforge.sources import SourceError
from cotforge.sources.rows import (
    KeyRegistry,
    RowError,
    check_range,
    normalise_split,
    parse_float,
    parse_id,
    inside_root,
    resolve_clip_file,
    row_digest,
)
from cotforge.types import DATASETS, ClipRef

REQUIRED = ("video_id", "clip_id", "text", "label", "mode")
UNIMODAL = ("label_T", "label_A", "label_V")
TRANSCRIPT_DIR = "Raw/Transcript/Segmented/Combined"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class MMSASource:
    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.root = cfg.root
        self.spec = DATASETS[cfg.dataset]
        self.label_path = self.root / (cfg.label_file or self.spec.label_file)
        scale = cfg.scale()
        self.low, self.high = scale.low, scale.high
        self.language = scale.language
        self._columns: dict[str, str] = {}
        self._transcripts: dict[str, dict[str, tuple[float, float, str]]] = {}
        self._listing: dict[Path, list[Path]] = {}

    def check(self) -> None:
        """Fail before the run starts on anything that makes the whole file unreadable."""
        if not self.label_path.is_file():
            alt = [p.name for p in self.root.glob("*.csv")]
            hint = f" (CSV files there: {', '.join(alt)}; pass --label-file)" if alt else ""
            raise SourceError(
                f"{self.label_path}: label file not found{hint}; point source.root (--root, or "
                "--set source.root=DIR) at the dataset folder that holds label.csv and Raw/"
            )
        raw = self.label_path.read_bytes()
        try:
            raw.decode(self.cfg.encoding)
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise SourceError(
                f"{self.label_path}, line {line}: not valid {self.cfg.encoding} text ({err.reason} at byte "
                f"{err.start}). Re-save the file as UTF-8 (e.g. `iconv -f GBK -t UTF-8`) or pass "
                f"--set source.encoding=<codec>."
            ) from None
        with self._open() as handle:
            reader = csv.reader(handle, strict=True)
            header = next(reader, None)
            if header is None:
                raise SourceError(f"{self.label_path}, line 1: the file is empty; it needs a header row")
            self._columns = {name.strip().lower(): name for name in header}
            missing = [c for c in REQUIRED if c.lower() not in self._columns]
            if missing:
                raise SourceError(
                    f"{self.label_path}, line 1: missing required column(s) {', '.join(missing)}; found "
                    f"{', '.join(header)}. The MMSA layout needs {', '.join(REQUIRED)}."
                )
            try:
                for _ in reader:
                    pass
            except csv.Error as err:
                raise SourceError(
                    f"{self.label_path}, line {reader.line_num}: malformed CSV ({err}); check the quoting "
                    "of that row (a transcript with a stray quote?)"
                ) from None

    def _open(self):
        return self.label_path.open(encoding=self.cfg.encoding, newline="")

    def _col(self, row: dict[str, str], name: str) -> str | None:
        column = self._columns.get(name.lower())
        return row.get(column) if column else None

    def __iter__(self) -> Iterator[ClipRef]:
        if not self._columns:
            self.check()
        keys = KeyRegistry()
        with self._open() as handle:
            reader = csv.DictReader(handle, strict=True)
            _ = reader.fieldnames  # reads the header, so line_num counts from it
            line = reader.line_num + 1
            for row in reader:
                ref = self._parse(row, line)
                line = reader.line_num + 1
                yield keys.claim(ref)

    def _parse(self, row: dict[str, str], line: int) -> ClipRef:
        dataset = self.cfg.dataset
        video_id = parse_id(self._col(row, "video_id"))
        clip_id = parse_id(self._col(row, "clip_id"))
        text = self._col(row, "text") or ""
        ref = ClipRef(
            key=f"{dataset}/{video_id or '?'}/{clip_id or 'row-' + row_digest(sorted(row.items(), key=str))}",
            dataset=dataset,
            video_id=video_id,
            clip_id=clip_id,
            split=(self._col(row, "mode") or "").strip().lower(),
            text=text,
            label=None,
            media_path="",
            language=self.language,
            line=line,
            annotation=(self._col(row, "annotation") or "").strip() or None,
        )
        try:
            if None in row:
                raise RowError(f"too many fields: the row has {len(row) - 1 + len(row[None])}, the header {len(row) - 1}")
            if not video_id or not clip_id:
                raise RowError("video_id or clip_id is empty")
            ref.split = normalise_split(self._col(row, "mode") or "")
            ref.label = parse_float(self._col(row, "label"), "label", required=True)
            check_range(ref.label, self.low, self.high, dataset)
            for name in UNIMODAL:
                setattr(ref, name, parse_float(self._col(row, name), name, required=False))
            self._locate_media(ref, row)
        except RowError as err:
            ref.error = str(err)
        return ref

    def _locate_media(self, ref: ClipRef, row: dict[str, str]) -> None:
        start = parse_float(self._col(row, "start"), "start", required=False)
        end = parse_float(self._col(row, "end"), "end", required=False)
        if self.cfg.segments == "transcripts" and start is None:
            start, end, text = self._transcript_segment(ref.video_id, ref.clip_id)
            ref.text = ref.text or text
        if start is None and end is None or self.cfg.segments == "off":
            folder = inside_root(self.root / "Raw" / ref.video_id, self.root, self.cfg.allow_outside_root, folder=True)
            path = resolve_clip_file(folder, ref.clip_id, self._listing)
            if path is None:
                ref.media_path = str(self.root / "Raw" / ref.video_id / f"{ref.clip_id}.mp4")
                raise RowError(f"media file missing: {ref.media_path}")
            ref.media_path = str(inside_root(path, self.root, self.cfg.allow_outside_root))
            ref.clip_id = path.stem
            ref.key = f"{ref.dataset}/{ref.video_id}/{ref.clip_id}"
            return
        if start is None or end is None:
            raise RowError("a time-range clip needs both start and end")
        ref.start, ref.end = max(0.0, start), end
        if ref.end <= ref.start:
            raise RowError(f"empty time range: [{start:g}, {end:g}] s")
        candidates = [self.root / (self.cfg.full_video_dir or self.spec.full_video_dir) / f"{ref.video_id}.mp4", self.root / "Raw" / f"{ref.video_id}.mp4"]
        candidates = [inside_root(p, self.root, self.cfg.allow_outside_root) for p in candidates]
        found = next((p for p in candidates if p.is_file()), None)
        ref.media_path = str(found or candidates[0])
        if found is None:
            raise RowError(f"media file missing: {candidates[0]}")

    def _transcript_segment(self, video_id: str, clip_id: str) -> tuple[float, float, str]:
        if video_id not in self._transcripts:
            self._transcripts[video_id] = self._read_transcript(video_id)
        segments = self._transcripts[video_id]
        if clip_id not in segments:
            raise RowError(f"segment not in transcript: {clip_id} not in {TRANSCRIPT_DIR}/{video_id}.txt")
        return segments[clip_id]

    def _read_transcript(self, video_id: str) -> dict[str, tuple[float, float, str]]:
        path = self.root / TRANSCRIPT_DIR / f"{video_id}.txt"
        if not path.is_file():
            return {}
        segments: dict[str, tuple[float, float, str]] = {}
        for raw in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
            parts = raw.split("___", 4)
            if len(parts) != 5:
                continue
            try:
                segments[parse_id(parts[1])] = (float(parts[2]), float(parts[3]), parts[4].strip())
            except ValueError:
                continue
        return segments
