"""Ray executor: the local executor's steps and scheduling, with the CPU work on a Ray cluster.

What runs where:
- **On the cluster**: decoding, as a Ray Data stream (the clips to decode become a Dataset;
  `DecodeStep.process` runs in CPU tasks on any node; Ray re-runs the tasks of a node that is lost),
  and the media muxing of each clip's teacher requests (`encode_media`, one MP4 per clip, reused by
  its re-asks), as Ray tasks.
- **In this process (the driver)**: reading the label file and admission, the bookkeeping step
  (the one writer of ledger, response cache and bundle parts), the teacher step with the run's one
  client, and export. Resume, the counts and "never pay twice" therefore hold exactly as locally:
  a cached answer is found before anything is muxed or sent, and nothing else writes the run.

Teacher requests leave from the driver rather than from a pool of actors: the requests are
network-bound (the GPU servers do the work), one asyncio loop holds thousands of them, and the one
client spreads them over every endpoint (least outstanding first, per-endpoint concurrency, circuit
breakers) with a single view of which server is down. Actors would each need their own copy of
that view and a round trip to the driver's cache for every request. The CPU-heavy part of a
request, muxing its media, is what goes to the cluster.

Backpressure: the driver pulls decode results only as fast as the teacher queue takes them, so the
bundles in this process are bounded as locally (`teacher.concurrency` + the consumers), and Ray
Data holds back its tasks when its output is not read. Decoding may use every CPU of the cluster;
mux tasks take no CPU slot (at most `teacher.media_workers` run at once, like the local media
pool), so decode tasks waiting on an unread output can never starve the requests that would let
the driver read it.

Loopback: a private Ray instance (no `exec.ray_address`) is started with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps every Ray process on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import pickle
import resource
import threading
import warnings
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID

from cotforge.config import ExecConfig, MediaConfig, PipelineConfig
from cotforge.executors.local import LocalExecutor, PipelineResult
from cotforge.stats import Stats
from cotforge.steps.bookkeeping import Bookkeeping
from cotforge.steps.decode import DecodeStep
from cotforge.steps.teacher import RunMedia
from cotforge.store.run import RunError
from cotforge.teacher.request import ready as media_ready
from cotforge.types import ClipFailure, ClipRef

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CLIPS_PER_TASK = 16
"""Clips one decode task takes: Ray Data's cost per task (~0.05 s on a busy node) stays small against
decoding them, and a lost node costs the driver no more than 16 clips decoded again."""
TASK_RETRIES = 3
"""Retries of a decode or mux task whose worker or node died (an exception in the code is not retried)."""
LOCAL_OBJECT_STORE = 512 * 2**20
"""Object store of a private Ray instance: decoded clips waiting for the driver, a few hundred MB at most."""

_END = object()


def import_ray() -> Any:
    """Ray, or a message with the pip line (the [ray] extra is optional)."""
    # no Ray call may start a Ray instance of its own (Ray Data's thread after the session ended did)
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the extra is ray[data]
    except ImportError:
        raise RunError("exec.executor=ray needs Ray Data: pip install 'cotforge[ray]'") from None
    return ray


@contextmanager
def ray_session(exec_cfg: ExecConfig, cpus: int) -> Iterator[Any]:
    """Join the cluster at exec.ray_address, or start a private instance on 127.0.0.1 with `cpus` CPUs.

    A session this process already has (a notebook, a test) is used as it is and left open.
    """
    if exec_cfg.ray_address is None:
        # read by Ray when it is first imported, here and in every process it starts
        os.environ.setdefault(LOOPBACK_ENV, "0")
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    common = {"logging_level": logging.WARNING, "log_to_driver": False}
    if exec_cfg.ray_address is None:
        ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE, include_dashboard=False, **common)
    else:
        ray.init(address=exec_cfg.ray_address, **common)
    try:
        yield ray
    finally:
        ray.shutdown()


def _on_cluster(fn: Any, *args: Any) -> tuple[Any, str]:
    """Runs in a Ray worker: `fn(*args)` and the node it ran on."""
    import ray

    return fn(*args), ray.get_runtime_context().get_node_id()


def _decode_batch(media: dict[str, Any], batch: dict[str, Any]) -> dict[str, list]:
    """A Ray Data task: decode a few clips with the decode step; each result pickled, with the node it ran on."""
    import ray

    step = DecodeStep(MediaConfig.model_validate(media))
    node = ray.get_runtime_context().get_node_id()
    keys, results = [], []
    for text in batch["ref"]:
        ref = ClipRef.from_dict(json.loads(text))
        keys.append(ref.key)
        results.append(pickle.dumps(step.process(ref), protocol=pickle.HIGHEST_PROTOCOL))
    return {"key": keys, "result": results, "node": [node] * len(keys)}


class Pump:
    """A blocking iterator (Ray Data's rows) read on a thread of its own, one item ahead of an asyncio consumer.

    The thread waits until the consumer takes each item, so nothing piles up in this process; `stop`
    ends it, and the iterator is closed by the thread that reads it (which stops the Dataset's execution).
    """

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="cotforge-ray-rows", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._items:
                if not self._hand(item):
                    return
            self._hand(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._hand(_Failed(err))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def _hand(self, item: Any) -> bool:
        if self._stop.is_set():
            return False
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while True:
            try:
                future.result(timeout=0.1)
                return True
            except concurrent.futures.TimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    return False

    async def get(self) -> Any:
        item = await self._queue.get()
        if isinstance(item, _Failed):
            raise item.error
        return item

    def stop(self, wait_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(wait_s)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ClusterStats:
    """The executor's own stats in RUN/stats.json (stage `cluster`): nodes that decoded and muxed, retries, driver memory."""

    name = "cluster"

    def __init__(self) -> None:
        self.stats = Stats()

    def driver_memory(self) -> None:
        """The driver's peak RSS so far; on Linux also its heap and the object-store pages it has mapped now
        (Ray hands blocks over zero-copy: those pages are the object store's, bounded by its size, not copies)."""
        self.stats.peak("driver_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        try:
            status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        except OSError:
            return
        for name, field in (("driver_heap_mb", "RssAnon"), ("driver_object_store_pages_mb", "RssShmem")):
            if field in status:
                self.stats.peak(name, int(status[field].split()[0]) / 1024)


class RayExecutor(LocalExecutor):
    """`LocalExecutor` with decoding and muxing on Ray; everything that writes the run stays in this process."""

    def __init__(self, cfg: PipelineConfig, command: str, quiet: bool = False) -> None:
        super().__init__(cfg, command, quiet)
        self.cluster = ClusterStats()
        self.ray: Any = None
        self._remote: Any = None
        self._muxing: asyncio.Semaphore | None = None

    def _run(self, *args: Any, **kwargs: Any) -> PipelineResult:
        with ray_session(self.cfg.exec, self.cfg.exec.workers) as ray:
            self.ray = ray
            # no CPU slot: decoding may hold every one; the semaphore bounds muxing as the local media pool does
            self._remote = ray.remote(num_cpus=0, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD")(_on_cluster)
            self._muxing = asyncio.Semaphore(self.cfg.teacher.media_workers)
            nodes = [n for n in ray.nodes() if n["Alive"]]
            self.cluster.stats.peak("nodes", len(nodes))
            self.cluster.stats.peak("cpus", ray.cluster_resources().get("CPU", 0))
            return super()._run(*args, **kwargs)

    # --- the hooks of the local executor ---------------------------------------------------------

    def _workers(self, stack: AsyncExitStack, decode: bool, teach: bool) -> tuple[None, RunMedia | None]:
        self.steps["cluster"] = self.cluster
        stack.callback(self.cluster.driver_memory)  # ru_maxrss is the peak of the whole command so far
        # workers import the media libraries while the server answers the preflight and rows are admitted
        for _ in range(sum(node["Alive"] for node in self.ray.nodes())):
            self._remote.remote(media_ready)
        return None, self._mux if teach else None

    async def _mux(self, fn: Any, *args: Any) -> Any:
        """The teacher step's media runner: `fn(*args)` as a Ray task on any node."""
        try:
            async with self._muxing:
                result, node = await self._remote.remote(fn, *args)
        except self.ray.exceptions.RayTaskError as err:
            raise (err.cause if isinstance(err.cause, Exception) else err) from None
        self.cluster.stats.inc(f"mux_nodes/{node}")
        return result

    async def _decode(
        self, books: Bookkeeping, todo: list[ClipRef], pool: None, queue: asyncio.Queue | None,
        progress: Progress, teacher_task: TaskID | None,
    ) -> None:
        """Decode on the cluster as a Ray Data stream; every result is recorded here, once, as it arrives."""
        task = progress.add_task("decode", total=len(todo), info="")
        if not todo:
            return
        done: set[str] = set()
        rows = Pump(self._decode_stream(todo))
        try:
            while (row := await rows.get()) is not _END:
                if row["key"] in done:
                    self.cluster.stats.inc("decode_repeats")  # a retried task that had already delivered
                    continue
                done.add(row["key"])
                self.cluster.stats.inc(f"decode_nodes/{row['node']}")
                await self._decoded(books, pickle.loads(row["result"]), queue, progress, task, teacher_task)
        finally:
            rows.stop()  # a run that ends early stops the Dataset before the Ray session ends
        # clips whose task failed for good (a worker crashing on them, or nodes lost again and again): one
        # at a time, so only a clip that really kills its worker fails
        decoder: DecodeStep = self.steps["decode"]
        for ref in (r for r in todo if r.key not in done):
            self.cluster.stats.inc("decode_alone")
            try:
                result, node = await self._remote.options(max_retries=1).remote(decoder.process, ref)
                self.cluster.stats.inc(f"decode_nodes/{node}")
            except (self.ray.exceptions.RayError, OSError) as err:
                result = ClipFailure(ref, f"decoder process crashed on this clip ({type(err).__name__})", "decode")
            await self._decoded(books, result, queue, progress, task, teacher_task)

    def _decode_stream(self, todo: list[ClipRef]) -> Iterator[dict[str, Any]]:
        ray = self.ray
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.max_errored_blocks = -1  # a block that fails for good is decoded again clip by clip, not the end of the run
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices would break cotforge's progress lines
        items = [{"ref": json.dumps(ref.as_dict(), ensure_ascii=False)} for ref in todo]
        # at least one task per CPU when there are few clips, so a small run spreads over the cluster too
        blocks = max(math.ceil(len(items) / CLIPS_PER_TASK), min(len(items), int(ray.cluster_resources().get("CPU", 1))))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        del items  # the Dataset holds its own copy for as long as the run reads it
        with warnings.catch_warnings():
            # Ray Data's own default is to retry forever: a clip that crashes its worker would stop the run.
            # max_retries is deprecated from Ray 2.60 (gone in 2.64) with no replacement yet, hence the pin.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(partial(_decode_batch, self.cfg.media.model_dump(mode="json")), batch_size=None, num_cpus=1,
                                max_retries=TASK_RETRIES)
        yield from ds.iter_rows()
