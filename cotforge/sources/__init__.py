"""Dataset readers: each turns a dataset on disk into a stream of ClipRef records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from cotforge.config import SourceConfig
from cotforge.types import ClipRef


class SourceError(Exception):
    """The dataset cannot be read at all (bad label file); the run stops before it starts."""


class Source(Protocol):
    def check(self) -> None:
        """Read the label file's header and encoding; raise SourceError naming file, line and fix."""

    def __iter__(self) -> Iterator[ClipRef]:
        """Every row of the dataset, in file order, whatever its split (the read step filters)."""


def open_source(cfg: SourceConfig) -> Source:
    if cfg.dataset == "manifest":
        from cotforge.sources.manifest import ManifestSource

        return ManifestSource(cfg)
    from cotforge.sources.mmsa import MMSASource

    return MMSASource(cfg)
