"""Decode clips in worker processes with a bounded number in flight.

At most `in_flight` clips are submitted at once, so memory is bounded by the bundles being
decoded, not by the dataset. A worker that dies (a crash inside FFmpeg) breaks the pool; the pool
is rebuilt and the clips it held are tried once more in a fresh pool, then failed with a reason,
so one poisonous file cannot stop a run.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from cotforge.config import MediaConfig
from cotforge.media.decode import DecodeError, decode_clip
from cotforge.types import Bundle, ClipFailure, ClipRef


def decode_or_fail(ref: ClipRef, cfg: MediaConfig) -> Bundle | ClipFailure:
    """Worker entry point: every outcome is a value, never an exception across the process boundary."""
    began = time.process_time()
    try:
        return decode_clip(ref, cfg)
    except DecodeError as err:
        return ClipFailure(ref, str(err), "decode", time.process_time() - began)
    except Exception as err:  # noqa: BLE001 - an unexpected bug must fail one clip, not the run
        return ClipFailure(ref, f"decoder error: {type(err).__name__}: {err}", "decode", time.process_time() - began)


class DecodePool:
    def __init__(self, cfg: MediaConfig, workers: int, in_flight: int = 0) -> None:
        self.cfg = cfg
        self.workers = workers
        self.in_flight = in_flight or 2 * workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        self._executor = self._new_executor()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # forkserver: workers start from a clean process, not a fork of one holding threads and sockets
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("forkserver"))

    def map(self, refs: Iterable[ClipRef]) -> Iterator[Bundle | ClipFailure]:
        """Yield one result per ref, in completion order."""
        assert self._executor is not None, "use DecodePool as a context manager"
        pending: dict[Future, tuple[ClipRef, int]] = {}
        source = iter(refs)
        retry: list[tuple[ClipRef, int]] = []
        exhausted = False
        while True:
            while len(pending) < self.in_flight and (retry or not exhausted):
                if retry:
                    ref, tries = retry.pop()
                else:
                    ref = next(source, None)
                    if ref is None:
                        exhausted = True
                        break
                    tries = 0
                pending[self._executor.submit(decode_or_fail, ref, self.cfg)] = (ref, tries)
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                ref, tries = pending.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    broken = True
                    if tries >= 1:
                        yield ClipFailure(ref, "decoder process crashed on this clip (twice)", "decode")
                    else:
                        retry.append((ref, tries + 1))
            if broken:
                retry.extend(pending.values())
                pending.clear()
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
