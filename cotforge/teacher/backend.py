"""The teacher backend a config names; each answers `ask(body, headers)` with a TeacherResponse."""

from __future__ import annotations

from cotforge.config import TeacherConfig
from cotforge.teacher.client import TeacherClient


def make_teacher(cfg: TeacherConfig, spent_requests: int = 0, spent_tokens: int = 0):  # noqa: ANN201
    """TeacherClient, or OfflineTeacher (vLLM imported only when chosen); `spent_*` is what the run used before."""
    if cfg.backend == "vllm-offline":
        from cotforge.teacher.offline import OfflineTeacher

        return OfflineTeacher(cfg)
    return TeacherClient(cfg, spent_requests, spent_tokens)
