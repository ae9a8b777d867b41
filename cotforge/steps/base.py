"""What every step is: a name, its Stats, and `process` for one record (or `run` over a stream).

The shape follows datatrove's `PipelineStep`: an executor may call `run` over a stream, or call
`process` record by record wherever it likes (a worker process, an asyncio task, a Ray task) and
then `count` the result in the parent, since stats gathered inside a worker process would be lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, ClassVar

from cotforge.stats import Stats


class Step:
    """A synchronous step. Subclasses implement `process`, and `count` when results come back from elsewhere."""

    name: ClassVar[str] = "step"

    def __init__(self) -> None:
        self.stats = Stats()

    def process(self, record: Any) -> Any:
        raise NotImplementedError

    def count(self, result: Any) -> None:
        """Account for a result `process` returned (possibly in another process); default: nothing."""

    def run(self, records: Iterable[Any]) -> Iterator[Any]:
        for record in records:
            result = self.process(record)
            self.count(result)
            yield result


class AsyncStep(Step):
    """A step whose `process` awaits (network calls); `run` keeps one record in progress at a time."""

    async def process(self, record: Any) -> Any:  # type: ignore[override]
        raise NotImplementedError

    async def run(self, records: AsyncIterable[Any]) -> AsyncIterator[Any]:  # type: ignore[override]
        async for record in records:
            result = await self.process(record)
            self.count(result)
            yield result
