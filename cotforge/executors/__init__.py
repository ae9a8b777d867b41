"""Executors run the pipeline's steps: on this machine (local) or with the CPU work on a Ray cluster (ray)."""

from __future__ import annotations

from typing import Any


def executor_for(cfg: Any) -> type:
    """The executor class `exec.executor` names; Ray is imported only when it is chosen."""
    if cfg.exec.executor == "ray":
        from cotforge.executors.ray import RayExecutor

        return RayExecutor
    from cotforge.executors.local import LocalExecutor

    return LocalExecutor
