"""Local executor: the steps on this machine, decoding in worker processes and the teacher on asyncio.

One event loop on one thread drives everything: it reads the source (a thread hop per row), keeps
at most `exec.queue_size` clips decoding in a process pool, hands bundles to at most
`teacher.concurrency` plus max(2 x teacher.media_workers, concurrency / 4) clips in the teacher step
through a bounded queue (the clips beyond the concurrency have their media muxed while they wait for
a request slot, so a slot freed when many clips finish at once is not left waiting on the media
workers), and records every result through the bookkeeping step. When the teacher is the
bottleneck, decoding waits (backpressure), so memory is bounded by those limits and never grows
with the dataset. Only scheduling lives here; what happens to a clip is the steps' business.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress, TaskID

from cotforge.config import BundleConfig, PipelineConfig, TeacherConfig
from cotforge.executors import executor_for
from cotforge.executors.pools import WorkerCrashed, WorkerPool
from cotforge.executors.progress import make_progress
from cotforge.stats import Stats
from cotforge.steps.bookkeeping import Bookkeeping
from cotforge.steps.decode import DecodeStep
from cotforge.steps.export import ExportStep
from cotforge.steps.merge import bind_shard
from cotforge.steps.read import ReadStep
from cotforge.steps.teacher import ClipOutcome, RunMedia, TeacherStep
from cotforge.store.run import RunDir, RunError
from cotforge.teacher.backend import make_teacher
from cotforge.teacher.client import ServedModel, TeacherBudgetReached
from cotforge.types import Bundle, ClipFailure, ClipRef
from cotforge.validate import ValidateConfig

_END = object()


@dataclass
class PipelineResult:
    """Each stage's stats for one command: bundle (read + decode + bookkeeping), synth (teacher + client), export."""

    bundle: Stats = field(default_factory=Stats)
    synth: Stats = field(default_factory=Stats)
    export: Stats = field(default_factory=Stats)
    wall_seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    """What the teacher client noted (endpoints taken out, outages): the user is told, not only stats.json."""


def check_teacher(books: Bookkeeping, cfg: PipelineConfig, force: bool) -> None:
    """Refuse, before any request, to ask with settings that make every cached answer useless, unless forced.

    Changes of validation, re-asking, labels or scale are fine: clips are judged again from the cache.
    """
    known = books.get_meta("teacher")
    current = cfg.teacher_identity()
    if known is not None and known != current and not force:
        changed = ", ".join(f"{k} {known.get(k)!r} -> {current[k]!r}" for k in current if known.get(k) != current[k])
        raise RunError(
            f"{books.run_dir.path} was asked with other teacher settings ({changed}); every clip would be asked "
            "again and paid for. Use another --run folder, or --force to re-ask in this one"
        )


class LocalExecutor:
    """Runs a command's steps over one run directory; `result` holds their stats afterwards."""

    def __init__(self, cfg: PipelineConfig, command: str, quiet: bool = False) -> None:
        assert cfg.run is not None, "the config names its run directory"
        self.run_dir = RunDir(cfg.run)
        self.cfg = cfg.for_run(self.run_dir.recorded_teacher())
        self.command = command
        self.quiet = quiet
        self.result = PipelineResult()
        self.steps: dict[str, Any] = {}
        self.budget_error: TeacherBudgetReached | None = None

    # --- the commands ----------------------------------------------------------------------------

    def bundle(self, retry_failed: bool = False) -> PipelineResult:
        """Decode every pending clip into bundle parts; no teacher."""
        return self._run(decode=True, teach=False, export=False, retry_failed=retry_failed)

    def synth(self, force: bool = False) -> PipelineResult:
        """Ask the teacher for every bundled clip (and clips to judge again); no decoding."""
        return self._run(decode=False, teach=True, export=False, force=force)

    def pipeline(self, force: bool = False) -> PipelineResult:
        """All stages at once, then shards, eval sets and manifest."""
        return self._run(decode=True, teach=True, export=True, force=force)

    def export(self) -> PipelineResult:
        began = time.time()
        step = ExportStep(self.cfg, self.run_dir)
        try:
            step.run()
        finally:
            self.result.export = step.stats
            self.run_dir.append_stats(self.command, {"export": step.stats}, began)
        return self.result

    # --- scheduling ------------------------------------------------------------------------------

    def _run(self, decode: bool, teach: bool, export: bool, force: bool = False, retry_failed: bool = False) -> PipelineResult:
        began = time.time()
        cfg = self.cfg
        reader = ReadStep(cfg.source, *cfg.exec.shard_index()) if decode else None
        if reader is not None:
            reader.check()
        elif not self.run_dir.exists():
            raise RunError(f"{self.run_dir.path} is not a run directory (no ledger.sqlite); run `cotforge bundle` first")
        books = Bookkeeping(self.run_dir, cfg.source, cfg.media, cfg.exec.bundle_part_rows)
        self.steps = {"read": reader, "decode": DecodeStep(cfg.media) if decode else None, "bookkeeping": books}
        interrupted: str | None = None
        try:
            bind_shard(books, cfg.exec.shard, reads_source=decode)
            if teach:
                check_teacher(books, cfg, force)
            saved = cfg.public_dump()
            # the resolved config goes with the run (secrets removed); a bundle-only command has no teacher to record
            self.run_dir.save_config(saved if teach else {k: saved[k] for k in ("source", "media", "exec")})
            books.ledger.reset_unbundled()
            with make_progress(self.quiet) as progress:
                asyncio.run(self._main(books, reader, teach, retry_failed, progress))
        except BaseException as err:
            interrupted = type(err).__name__
            raise
        finally:
            books.close()
            self._collect()
            stages = {name: step.stats for name, step in self.steps.items() if step is not None}
            self.run_dir.append_stats(self.command, stages, began, interrupted)
        if export:
            export_began = time.time()
            step = ExportStep(cfg, self.run_dir)
            try:
                step.run()
            finally:
                self.result.export = step.stats
                self.run_dir.append_stats(f"{self.command}/export", {"export": step.stats}, export_began)
        self.result.wall_seconds = time.time() - began
        return self.result

    def _collect(self) -> None:
        bundle = Stats()
        for name in ("read", "decode", "bookkeeping"):
            if self.steps.get(name) is not None:
                bundle = bundle.merge(self.steps[name].stats)
        self.result.bundle = bundle
        synth = Stats()
        if self.steps.get("teacher") is not None:
            synth = self.steps["teacher"].stats
        if self.steps.get("client") is not None:
            synth = synth.merge(http_faults(self.steps["client"].stats))
            self.result.events = list(getattr(self.steps["client"], "log", []))
        self.result.synth = synth

    async def _main(self, books: Bookkeeping, reader: ReadStep | None, teach: bool, retry_failed: bool, progress: Progress) -> None:
        cfg = self.cfg
        self.budget_reached = asyncio.Event()
        async with AsyncExitStack() as stack:
            decode_pool, run_media = self._workers(stack, reader is not None, teach)
            client = None
            if teach:
                spent = self.run_dir.totals("client")  # what was sent, answered or not: the budget is the run's
                client = make_teacher(cfg.teacher, spent["requests"], spent["prompt_tokens"] + spent["completion_tokens"])
                await stack.enter_async_context(client)
                # a wrong URL or model costs seconds, not a decode pass: the server answers before any work
                await client.preflight()
                books.set_meta("teacher", cfg.teacher_identity())
                teacher_cfg = served_settings(cfg.teacher, getattr(client, "served", None))
            # every row is admitted before any clip is judged: a label changed on disk is known first
            todo = await self._admit(books, reader, retry_failed) if reader is not None else []
            queue: asyncio.Queue | None = None
            producers: list[asyncio.Task] = []
            consumers: list[asyncio.Task] = []
            teacher_task: TaskID | None = None
            if teach:
                validator = ValidateConfig.for_scale(cfg.source.scale(), **cfg.validate_.overrides())
                step = TeacherStep(teacher_cfg, cfg.reask, validator, client, books, run_media)
                self.steps["teacher"], self.steps["client"] = step, client
                books.retarget(cfg.teacher.splits, cfg.judge_fingerprint())
                waiting, total = books.waiting()
                teacher_task = progress.add_task("teacher", total=total, info="")
                # past the concurrency, clips get their media ready while they wait for a slot (see the docstring)
                limit = cfg.teacher.concurrency * max(1, len(cfg.teacher.endpoints)) + max(2 * cfg.teacher.media_workers, cfg.teacher.concurrency // 4)
                queue = asyncio.Queue(maxsize=max(2, cfg.teacher.concurrency))
                consumers = [asyncio.create_task(self._teach(step, client, books, queue, progress, teacher_task)) for _ in range(limit)]
                producers.append(asyncio.create_task(self._feed(_iterate(waiting), queue)))
            if reader is not None:
                producers.append(asyncio.create_task(self._decode(books, todo, decode_pool, queue, progress, teacher_task)))
            closer: list[asyncio.Task] = []
            budget = asyncio.create_task(self.budget_reached.wait())
            try:
                await _first_error([*producers, *consumers, budget], until=producers, stop=budget)
                if budget.done():
                    # the run's budget is spent: nothing new is decoded or asked; clips in progress finish
                    for task in producers:
                        task.cancel()
                if consumers:
                    # the end marks go in beside the consumers, so one that died with a fatal error is seen
                    closer.append(asyncio.create_task(_close(queue, len(consumers))))
                await _first_error([*consumers, *closer], until=consumers)
            finally:
                for task in [*producers, *consumers, *closer, budget]:
                    task.cancel()
                await asyncio.gather(*producers, *consumers, *closer, budget, return_exceptions=True)
            if self.budget_error is not None:
                raise self.budget_error

    def _workers(self, stack: AsyncExitStack, decode: bool, teach: bool) -> tuple[WorkerPool | None, RunMedia | None]:
        """Where CPU work runs: the decode pool (for `_decode`) and the media runner the teacher step awaits."""
        decode_pool = WorkerPool(self.cfg.exec.workers) if decode else None
        media_pool = WorkerPool(self.cfg.teacher.media_workers) if teach else None
        for pool in (decode_pool, media_pool):
            if pool is not None:
                # workers start with the first job: a run with nothing left to do (a warm re-run) starts none
                stack.callback(pool.shutdown)
        return decode_pool, media_pool.run if media_pool is not None else None

    async def _feed(self, rows: AsyncIterator[dict[str, Any]], queue: asyncio.Queue) -> None:
        async for row in rows:
            await queue.put(row)

    async def _admit(self, books: Bookkeeping, reader: ReadStep, retry_failed: bool) -> list[ClipRef]:
        """Record every row of the source in the ledger; the refs that need decoding."""
        todo = [ref async for ref in _iterate(reader.run()) if books.admit(ref, retry_failed)]
        if reader.complete:
            books.removed(reader.seen)
        return todo

    async def _decode(
        self, books: Bookkeeping, todo: list[ClipRef], pool: WorkerPool, queue: asyncio.Queue | None,
        progress: Progress, teacher_task: TaskID | None,
    ) -> None:
        cfg = self.cfg
        decoder: DecodeStep = self.steps["decode"]
        task = progress.add_task("decode", total=len(todo), info="")
        slots = asyncio.Semaphore(cfg.exec.queue_size or 2 * cfg.exec.workers)
        running: set[asyncio.Task] = set()
        errors: list[BaseException] = []

        def finished(job: asyncio.Task) -> None:
            running.discard(job)
            if not job.cancelled() and job.exception() is not None:
                errors.append(job.exception())

        async def one(ref: ClipRef) -> None:
            try:
                try:
                    result: Bundle | ClipFailure = await pool.run(decoder.process, ref)
                except WorkerCrashed:
                    result = ClipFailure(ref, "decoder process crashed on this clip", "decode")
                await self._decoded(books, result, queue, progress, task, teacher_task)
            finally:
                slots.release()

        for ref in todo:
            if errors:
                raise errors[0]
            await slots.acquire()
            job = asyncio.create_task(one(ref))
            running.add(job)
            job.add_done_callback(finished)
        if running:
            await asyncio.wait(set(running))
        if errors:
            raise errors[0]

    async def _decoded(
        self, books: Bookkeeping, result: Bundle | ClipFailure, queue: asyncio.Queue | None,
        progress: Progress, task: TaskID, teacher_task: TaskID | None,
    ) -> None:
        """One decode result, whichever executor produced it: counted, recorded, then held out or queued for the teacher."""
        decoder: DecodeStep = self.steps["decode"]
        decoder.count(result)
        row = books.decoded(result)
        d = decoder.stats
        progress.update(task, advance=1, info=f"ok {d['bundled']} failed {d['failed']}")
        if row is None:
            return
        if row["split"] not in self.cfg.teacher.splits:
            books.hold_out(row)
        elif queue is not None:
            if teacher_task is not None:
                progress.update(teacher_task, total=(progress.tasks[teacher_task].total or 0) + 1)
            await queue.put(row)

    async def _teach(
        self, step: TeacherStep, client: Any, books: Bookkeeping, queue: asyncio.Queue, progress: Progress, task: TaskID
    ) -> None:
        judged_with = self.cfg.judge_fingerprint()
        began = time.perf_counter()
        while (row := await queue.get()) is not _END:
            if self.budget_reached.is_set():
                continue  # left for the next run: bundled, resumable
            try:
                outcome: ClipOutcome = await step.process(row)
            except TeacherBudgetReached as err:
                self.budget_error = err
                self.budget_reached.set()
                continue
            step.count(outcome)
            books.judged(outcome.key, outcome.state, outcome.reason, outcome.answer, judged_with)
            s = step.stats
            rate = (s["prompt_tokens"] + s["completion_tokens"]) / max(time.perf_counter() - began, 1e-6)
            retries = sum(client.stats.group("retries").values())
            progress.update(
                task, advance=1,
                info=f"asked {s['requests']} accepted {s['accepted']} rejected {s['rejected']} failed {s['failed']} "
                f"cache {s['cache_hits']} retries {retries} {rate:,.0f} tok/s",
            )


def served_settings(teacher: TeacherConfig, served: ServedModel | None) -> TeacherConfig:
    """What the server told at preflight fills what the config left open: whether it is the simulator
    (which then gets the gold label in headers) and its context length (the clips' token budget)."""
    updates: dict[str, Any] = {}
    if teacher.simulated is None:
        updates["simulated"] = bool(served and served.simulated)
    if teacher.max_model_len is None and served is not None and served.max_model_len:
        updates["max_model_len"] = served.max_model_len
    return teacher.model_copy(update=updates)


def http_faults(client: Stats) -> Stats:
    """The client's retries and failures by kind and its in-flight peak (its request counts are the teacher step's)."""
    counters = {k: v for k, v in client.counters.items() if k.startswith(("retries/", "failures/"))}
    return Stats(Counter(counters), peaks=dict(client.peaks))


async def _close(queue: asyncio.Queue, consumers: int) -> None:
    for _ in range(consumers):
        await queue.put(_END)


async def _iterate(items: Iterator[Any]) -> AsyncIterator[Any]:
    """An iterator that reads files (a label file, bundle parts), walked without blocking the loop."""
    while (item := await asyncio.to_thread(next, items, _END)) is not _END:
        yield item


async def _first_error(tasks: list[asyncio.Task], until: list[asyncio.Task], stop: asyncio.Task | None = None) -> None:
    """Wait until every task in `until` is done (or `stop` is); the first exception of any task is raised."""
    pending = set(tasks)
    while any(not t.done() for t in until) and not (stop is not None and stop.done()):
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                raise task.exception()


def run_bundle(cfg: BundleConfig | PipelineConfig, run, retry_failed: bool = False, quiet: bool = False) -> Stats:
    """`cotforge bundle`: decode every pending clip of the source into bundle parts."""
    pipeline = cfg if isinstance(cfg, PipelineConfig) else PipelineConfig(source=cfg.source, media=cfg.media, exec=cfg.exec)
    pipeline = pipeline.model_copy(update={"run": run})
    return executor_for(pipeline)(pipeline, "bundle", quiet).bundle(retry_failed).bundle


def run_synth(cfg: PipelineConfig, run, quiet: bool = False) -> Stats:
    """`cotforge synth`: the teacher over every bundled clip of a run (and clips to judge again)."""
    return executor_for(cfg)(cfg.model_copy(update={"run": run}), "synth", quiet).synth().synth


def run_pipeline(cfg: PipelineConfig, run, force: bool = False, quiet: bool = False) -> PipelineResult:
    """`cotforge run`: decode -> teacher -> validate -> shards, all stages at once."""
    return executor_for(cfg)(cfg.model_copy(update={"run": run}), "run", quiet).pipeline(force)


def run_export(cfg: PipelineConfig, run, force: bool = False) -> Stats:
    """`cotforge export`: shards, eval sets and manifest from the ledger and cache (no teacher call)."""
    return LocalExecutor(cfg.model_copy(update={"run": run}), "export", quiet=True).export().export
