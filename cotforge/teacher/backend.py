"""The teacher backend a config names; each answers `ask(body, headers)` with a TeacherResponse."""

from __future__ import annotations

from cotforge.config import TeacherConfig
from cotforge.teacher.client import TeacherClient


def make_teacher(cfg: TeacherConfig):  # noqa: ANN201 - TeacherClient or OfflineTeacher (vLLM imported only when chosen)
    if cfg.backend == "vllm-offline":
        from cotforge.teacher.offline import OfflineTeacher

        return OfflineTeacher(cfg)
    return TeacherClient(cfg)
