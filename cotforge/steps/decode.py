"""The decode step: ClipRef -> Bundle, or a ClipFailure with the reason that goes into the ledger.

`process` is a pure function of the ref and the media settings, so an executor can run it in any
worker process; the parent `count`s what comes back (CPU seconds are measured inside the worker).
"""

from __future__ import annotations

import time

from cotforge.config import MediaConfig
from cotforge.media.decode import DecodeError, decode_clip
from cotforge.steps.base import Step
from cotforge.types import Bundle, ClipFailure, ClipRef, reason_kind


class DecodeStep(Step):
    name = "decode"

    def __init__(self, cfg: MediaConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def process(self, ref: ClipRef) -> Bundle | ClipFailure:
        """Every outcome is a value, never an exception, so nothing crosses a process boundary as a traceback."""
        began = time.process_time()
        try:
            return decode_clip(ref, self.cfg)
        except DecodeError as err:
            return ClipFailure(ref, str(err), "decode", time.process_time() - began)
        except Exception as err:  # noqa: BLE001 - an unexpected bug must fail one clip, not the run
            return ClipFailure(ref, f"decoder error: {type(err).__name__}: {err}", "decode", time.process_time() - began)

    def count(self, result: Bundle | ClipFailure) -> None:
        if isinstance(result, ClipFailure):
            self.stats.inc("failed")
            self.stats.inc(f"reasons/{reason_kind(result.reason)}")
            self.stats.add_seconds("decode_cpu", result.seconds)
        else:
            self.stats.inc("bundled")
            self.stats.add_seconds("decode_cpu", result.decode_seconds)
            self.stats.add_seconds("media", result.duration)
