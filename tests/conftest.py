"""Shared fixtures: demo datasets are generated once per test session (encoding is the slow part)."""

from __future__ import annotations

from pathlib import Path

import hypothesis  # noqa: F401 - imported early: its plugin importing it at the end of a run trips a CPython 3.11 AST bug
import pytest

from cotforge.demo.writer import DemoDataset, make_demo_dataset


@pytest.fixture(scope="session")
def demo_factory(tmp_path_factory: pytest.TempPathFactory):
    made: dict[tuple, DemoDataset] = {}

    def make(dataset: str = "mosi", clips: int = 8, corrupt: int = 0, full_videos: bool = False,
             min_seconds: float = 1.0, max_seconds: float = 4.0, seed: int = 0) -> DemoDataset:
        key = (dataset, clips, corrupt, full_videos, min_seconds, max_seconds, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"demo-{dataset}")
            made[key] = make_demo_dataset(out, dataset, clips, corrupt=corrupt, seed=seed, full_videos=full_videos,
                                          min_seconds=min_seconds, max_seconds=max_seconds)
        return made[key]

    return make


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
