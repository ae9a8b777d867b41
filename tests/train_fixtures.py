"""Fixtures of the training tests: a demo run, tiny students saved like checkpoints, hand-written shards.

Everything is built here, nothing is downloaded (HF_HUB_OFFLINE is set). The expensive pieces (the
demo run, the tiny students, the probe policy) are made once per test session: the fixtures call
module-level cached builders, so test modules that import the same fixture share one copy.

Torch runs on one thread: for models this small a second thread only adds contention.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# datasets caches every Parquet file it opens as Arrow; keep the tests' copies out of the home folder
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "cotforge-tests-hf-datasets"))

pytest.importorskip("trl", reason="training tests need the [train] extra")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from cotforge.store.shards import CORPUS_SCHEMA  # noqa: E402

torch.set_num_threads(1)

TINY_ARGS = [
    "report_to=none", "save_strategy=no", "logging_steps=1", "gradient_checkpointing=false", "dataloader_num_workers=0",
    "disable_tqdm=true",
]
"""--set items every test run shares: no loggers, no intermediate checkpoints, per-step logs, no progress bars."""
MEDIA_ARGS = ["max_frames=4", "frame_min_pixels=3136", "frame_max_pixels=3136"]
"""Tiny frames (56x56, 4 video tokens per temporal patch) keep the Omni tests fast."""


@functools.cache
def _demo_run(base: Path, clips: int) -> Path:
    out = base / f"train-demo-{clips}"
    done = subprocess.run(
        [sys.executable, "-m", "cotforge.cli", "demo", "--out", str(out), "--clips", str(clips), "-q"],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "run"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole demo run (shards, manifest, bundles, ledger) of 24 MOSI-layout clips against the simulator."""
    return _demo_run(tmp_path_factory.getbasetemp(), 24)


def shard_targets(run: Path) -> list[str]:
    return pq.read_table(run / "shards" / "train").column("target").to_pylist()


@functools.cache
def _tiny_omni_dir(base: Path, run: Path) -> Path:
    from cotforge.train.processor import save_omni_processor
    from cotforge.train.tiny import tiny_omni

    model, processor = tiny_omni(shard_targets(run))
    folder = base / "tiny-omni"
    model.save_pretrained(folder)
    save_omni_processor(processor, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_omni_dir(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2.5-Omni thinker and its processor, saved like a checkpoint folder."""
    return _tiny_omni_dir(tmp_path_factory.getbasetemp(), demo_run)


@functools.cache
def _tiny_text_dir(base: Path, run: Path) -> Path:
    from cotforge.train.tiny import tiny_text_lm

    model, tokenizer = tiny_text_lm(shard_targets(run) + [row["text"] for row in corpus_texts(run)])
    folder = base / "tiny-text"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def corpus_texts(run: Path) -> list[dict[str, Any]]:
    return pq.read_table(run / "shards" / "train", columns=["text"]).to_pylist()


@pytest.fixture(scope="session")
def tiny_text_dir(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small Qwen2 causal LM with a tokenizer trained on the demo corpus, saved like a checkpoint."""
    return _tiny_text_dir(tmp_path_factory.getbasetemp(), demo_run)


def corpus_row(key: str, text: str, label: float, target: str, **extra: Any) -> dict[str, Any]:
    """A shard row (CORPUS_SCHEMA) with the columns training reads; the rest stay null."""
    from cotforge.types import MOSI_SCALE

    return {"id": f"{key}#0", "key": key, "sample": 0, "dataset": "mosi", "split": "train", "language": "en",
            "text": text, "label": label, "label_polarity": MOSI_SCALE.polarity(label).value, "target": target,
            "teacher_score": label, "hinted": False, **extra}


def write_shards(run: Path, rows: list[dict[str, Any]], split: str = "train") -> Path:
    """RUN/shards/<split>/part-00000.parquet with `rows`, and a MOSI manifest; returns RUN/shards."""
    import json

    from cotforge.types import MOSI_SCALE

    folder = run / "shards" / split
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA), folder / "part-00000.parquet")
    (run / "manifest.json").write_text(json.dumps({"dataset": "mosi", "scale": MOSI_SCALE.as_dict()}))
    return run / "shards"


@functools.cache
def _probe_policy(base: Path) -> Path:
    from cotforge.train.tiny import train_probe_policy
    from cotforge.types import MOSI_SCALE

    return train_probe_policy(base / "probe-policy", MOSI_SCALE)


@pytest.fixture(scope="session")
def probe_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _probe_policy(tmp_path_factory.getbasetemp())


def logged(trainer: Any, name: str) -> list[float]:
    """Every value a trainer logged under `name`, in step order."""
    return [entry[name] for entry in trainer.state.log_history if name in entry]
