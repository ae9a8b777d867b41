"""Worker processes for CPU work (decoding clips, muxing request media), driven from asyncio.

A worker that dies (a crash inside FFmpeg) breaks its whole ProcessPoolExecutor and every job on it.
The pool is rebuilt at once, and each job that was on the broken pool runs again in quarantine: one
at a time, in a single-worker pool of its own. A job that crashes its quarantine pool is the one that
kills workers, and only it fails (WorkerCrashed); the innocent jobs it took down succeed.

Workers start through the forkserver (a clean process, not a fork of one holding threads and
sockets) and die with the run that started them. Their parent is the forkserver, not the run, and
the forkserver lives as long as any worker holds its "alive" pipe (every worker gets a copy), so
the kernel's parent-death signal alone leaves a SIGKILLed run's workers and forkserver alive
forever, holding memory and the run's output pipes. Each worker therefore also watches the run's
process and exits when it is gone; then the forkserver and the resource tracker exit too.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

PR_SET_PDEATHSIG = 1


class WorkerCrashed(Exception):
    """The job kills any worker process that runs it."""


WATCH_EVERY_S = 0.5


def _alive(pid: int) -> bool:
    """Whether a process runs. A killed run is a zombie until whoever started it reaps it, which may
    wait for our end of its output pipes: a zombie counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def die_with(run_pid: int) -> None:
    """Worker initializer: exit when the run process `run_pid` (or the forkserver, its parent) is gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while _alive(run_pid):
            time.sleep(WATCH_EVERY_S)
        os._exit(1)

    threading.Thread(target=watch, name="cotforge-watch-run", daemon=True).start()


def _context() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("forkserver")


class WorkerPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = self._new(workers)
        self._quarantine = asyncio.Lock()

    @staticmethod
    def _new(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=_context(), initializer=die_with, initargs=(os.getpid(),))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        pool = self._pool
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = self._new(self.workers)
                pool.shutdown(wait=False, cancel_futures=True)
        async with self._quarantine:
            alone = self._new(1)
            try:
                return await loop.run_in_executor(alone, fn, *args)
            except BrokenProcessPool:
                raise WorkerCrashed(f"a worker process crashed running {getattr(fn, '__name__', fn)}") from None
            finally:
                alone.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
