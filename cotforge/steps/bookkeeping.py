"""The bookkeeping step: the single writer of a run's ledger, response cache and bundle parts.

Every other step hands its results here, so that one object (on one thread, or on a cluster's
driver) decides what a clip's state is. That is what makes resume, the counts and "never pay
twice" hold whatever executor ran the work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from cotforge.config import MediaConfig, SourceConfig
from cotforge.steps.base import Step
from cotforge.store.bundles import BundleWriter, bundle_row, iter_bundles
from cotforge.store.cache import ResponseCache
from cotforge.store.ledger import LABEL_FIELDS, Ledger
from cotforge.store.run import RunDir
from cotforge.types import Bundle, ClipFailure, ClipRef, ClipState, TeacherResponse, reason_kind


def overlay(row: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, Any]:
    """A bundle row with the source's current labels, text and split (labels on disk win)."""
    if ref is None:
        return row
    return {**row, **{name: ref.get(name) for name in LABEL_FIELDS}}


class Bookkeeping(Step):
    name = "bookkeeping"

    def __init__(self, run_dir: RunDir, source: SourceConfig, media: MediaConfig, part_rows: int) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.ledger: Ledger = run_dir.open_ledger()
        run_dir.bind(self.ledger, source, media)
        self.media_config = media.fingerprint()
        self.part_rows = part_rows
        self._writer: BundleWriter | None = None
        self._cache: ResponseCache | None = None

    # --- the run's files -------------------------------------------------------------------------

    @property
    def cache(self) -> ResponseCache:
        """The response cache, opened on first use (a bundle-only run never creates it)."""
        if self._cache is None:
            self._cache = ResponseCache(self.run_dir.cache_path)
        return self._cache

    @property
    def writer(self) -> BundleWriter:
        if self._writer is None:
            self._writer = BundleWriter(self.run_dir.bundles, self.media_config, self.part_rows)
        return self._writer

    def close(self) -> None:
        """Write the last bundle part and commit; what is done survives any later failure."""
        try:
            if self._writer is not None:
                self._mark(self._writer.flush())
        finally:
            self.ledger.commit()
            self.ledger.close()
            if self._cache is not None:
                self._cache.close()

    # --- reading the source ----------------------------------------------------------------------

    def admit(self, ref: ClipRef, retry_failed: bool = False) -> bool:
        """Record a row; True when it has to be decoded."""
        state = self.ledger.admit(ref, retry_failed)
        if state is not ClipState.PENDING:
            self.stats.inc("skipped")
            self.ledger.commit()
            return False
        if ref.error:
            self.ledger.fail(ref.key, "source", ref.error)
            self.stats.inc("failed")
            self.stats.inc(f"reasons/{reason_kind(ref.error)}")
            self.ledger.commit()
            return False
        self.ledger.commit()
        return True

    def removed(self, seen: set[str]) -> int:
        """After a complete pass over the source: rows no longer in it leave the counts and outputs."""
        n = self.ledger.mark_removed(seen)
        self.ledger.commit()
        self.stats.inc("removed", n)
        return n

    # --- decoding --------------------------------------------------------------------------------

    def decoded(self, result: Bundle | ClipFailure) -> dict[str, Any] | None:
        """Record a decode result; the bundle row for the teacher, or None when the clip failed."""
        if isinstance(result, ClipFailure):
            self.ledger.fail(result.ref.key, result.stage, result.reason, result.seconds)
            self.ledger.commit()
            return None
        self._mark(self.writer.add(result))
        return bundle_row(result, self.media_config)

    def _mark(self, written: list[tuple[str, str, str, float]] | None) -> None:
        if written:
            self.ledger.mark_bundled(written)
            self.ledger.commit()
            self.stats.inc("parts")

    # --- the teacher -----------------------------------------------------------------------------

    def retarget(self, teacher_splits: list[str], judged_with: str) -> int:
        """Send clips to the teacher or hold them out as the settings say; count clips judged again."""
        again = self.ledger.retarget(teacher_splits, judged_with)
        self.ledger.commit()
        self.stats.inc("rejudge", again)
        return again

    def hold_out(self, row: dict[str, Any]) -> None:
        self.ledger.set_state([row["key"]], ClipState.HELD_OUT)
        self.ledger.commit()

    def waiting(self) -> tuple[Iterator[dict[str, Any]], int]:
        """Bundle rows (with the current labels) of clips that need the teacher: bundled, or failed at it before."""
        todo = set(self.ledger.keys_in_state(ClipState.BUNDLED)) | set(self.ledger.keys_failed_at("teacher"))
        locations = {k: v for k, v in self.ledger.bundle_locations().items() if k in todo}
        refs = self.ledger.refs(locations)
        rows = (overlay(row, refs.get(row["key"])) for row in iter_bundles(self.run_dir.bundles, locations))
        return rows, len(locations)

    def get(self, cache_key: str) -> TeacherResponse | None:
        return self.cache.get(cache_key)

    def put(self, cache_key: str, clip_key: str, prompt_version: str, hinted: bool, response: TeacherResponse) -> None:
        self.cache.put(cache_key, clip_key, prompt_version, hinted, response)
        self.stats.inc("responses")

    def judged(self, key: str, state: ClipState, reason: str | None, answer: dict[str, Any], judged_with: str) -> None:
        self.ledger.record_answer(key, state, reason, answer, judged_with if state is not ClipState.FAILED else None)
        self.ledger.commit()

    def set_meta(self, name: str, value: Any) -> None:
        self.ledger.set_meta(name, json.dumps(value, sort_keys=True))
        self.ledger.commit()

    def get_meta(self, name: str) -> Any:
        value = self.ledger.get_meta(name)
        return None if value is None else json.loads(value)
