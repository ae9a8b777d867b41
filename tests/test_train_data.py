"""Shards and eval sets -> student samples: reviews, refusals, media decoding, the SFT collator's labels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from train_fixtures import corpus_row, demo_run, tiny_omni_dir, write_shards  # noqa: F401

from cotforge.train.data import (
    CorpusError,
    MediaSpec,
    ReviewPolicy,
    audio_chunk_seconds,
    decode_frames,
    open_eval_split,
    open_shards,
)
from cotforge.types import MOSI_SCALE


def _review(verdict: str, teacher_target: str, edited: bool = False) -> dict:
    """A `review` value as `cotforge review apply` writes it (store.shards.REVIEW)."""
    return {"verdict": verdict, "edited": edited, "teacher_target": teacher_target, "polarity": None, "score": None,
            "rating": 4, "reviewer": "r", "reviewed_at": "2026-01-01T00:00:00Z"}


def _reviewed_shards(run: Path) -> Path:
    rows = [
        corpus_row("mosi/v/1", "fine", 1.0, "teacher 1"),
        corpus_row("mosi/v/2", "good", 2.0, "teacher 2", review=_review("accept", "teacher 2")),
        # apply wrote the edit into the reviewed copy's target, the teacher's stays in the review
        corpus_row("mosi/v/3", "bad", -2.0, "edited 3", review=_review("edit", "teacher 3", edited=True)),
        corpus_row("mosi/v/4", "meh", 0.0, "teacher 4", review=_review("reject", "teacher 4")),
        corpus_row("mosi/v/5", "odd", 0.5, "teacher 5", review=_review("edit", "teacher 5")),
    ]
    return write_shards(run, rows)


def test_reviews_replace_edited_targets_and_drop_rejected_rows(tmp_path: Path) -> None:
    shards = _reviewed_shards(tmp_path / "run")
    corpus = open_shards(shards, text_only=True)
    assert list(corpus.dataset["key"]) == ["mosi/v/1", "mosi/v/2", "mosi/v/3", "mosi/v/5"]
    assert list(corpus.dataset["target"]) == ["teacher 1", "teacher 2", "edited 3", "teacher 5"]
    assert (corpus.review.unreviewed, corpus.review.accepted, corpus.review.edited, corpus.review.rejected_dropped,
            corpus.review.edit_without_text) == (1, 1, 1, 1, 1)
    assert corpus.scale == MOSI_SCALE


def test_review_policy_can_keep_the_teachers_chains(tmp_path: Path) -> None:
    shards = _reviewed_shards(tmp_path / "run")
    corpus = open_shards(shards, review=ReviewPolicy(edits=False, drop_rejected=False), text_only=True)
    assert list(corpus.dataset["target"]) == [f"teacher {i}" for i in range(1, 6)]
    assert corpus.review.rejected_kept == 1


def test_shards_without_inline_media_are_refused_for_the_omni_student(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "run", [corpus_row("mosi/v/1", "fine", 1.0, "t", source_path="/data/v/1.mp4")])
    with pytest.raises(CorpusError, match="export.media=path.*--text-only"):
        open_shards(shards)
    assert len(open_shards(shards, text_only=True)) == 1


def test_a_missing_split_names_the_splits_present(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "run", [corpus_row("mosi/v/1", "fine", 1.0, "t")])
    with pytest.raises(CorpusError, match="no shards for split 'valid'.*splits present: train"):
        open_shards(shards, split="valid", text_only=True)
    assert len(open_shards(tmp_path / "run", text_only=True)) == 1  # RUN works as well as RUN/shards


def test_eval_refuses_label_filtered_shards(demo_run: Path) -> None:
    for path in (demo_run / "shards", demo_run / "shards" / "test"):
        with pytest.raises(CorpusError, match="label-filtered"):
            open_eval_split(path, "test")


def test_eval_reads_every_bundled_clip_of_the_split_not_only_accepted_ones(demo_run: Path, tmp_path: Path) -> None:
    import shutil

    from cotforge.store.ledger import Ledger

    with Ledger(demo_run / "ledger.sqlite") as ledger:
        bundled = {key for key, part in ledger.bundle_locations().items() if part}
        states = dict(ledger.db.execute("SELECT key, state FROM clips WHERE split = 'valid'"))
    expected = {key for key in states if key in bundled}
    accepted = set(pq.read_table(demo_run / "shards" / "valid").column("key").to_pylist())
    corpus = open_eval_split(demo_run, "valid")  # RUN/eval/valid, written by export
    assert set(corpus.dataset["key"]) == expected and accepted <= expected
    # a run exported before eval sets existed: the run's bundles of the split, still unfiltered
    older = tmp_path / "run"
    shutil.copytree(demo_run, older, ignore=shutil.ignore_patterns("eval"))
    fallback = open_eval_split(older, "valid")
    assert set(fallback.dataset["key"]) == expected and fallback.source == older / "bundles"


def test_eval_prefers_the_runs_eval_folder(demo_run: Path, tmp_path: Path) -> None:
    from cotforge.store.bundles import BUNDLE_SCHEMA

    run = tmp_path / "run"
    bundles = pq.read_table(demo_run / "bundles").cast(BUNDLE_SCHEMA)
    test_rows = bundles.filter(pa.compute.equal(bundles.column("split"), "test")).slice(0, 2)
    folder = run / "eval" / "test"
    folder.mkdir(parents=True)
    table = test_rows.append_column("label_polarity", pa.array([MOSI_SCALE.polarity(y).value for y in test_rows.column("label").to_pylist()]))
    pq.write_table(table, folder / "part-00000.parquet")
    (run / "manifest.json").write_bytes((demo_run / "manifest.json").read_bytes())
    corpus = open_eval_split(run, "test")
    assert len(corpus) == 2 and corpus.source == folder


def _jpeg(width: int, height: int, value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def test_frames_are_strided_resized_onto_the_patch_grid_and_keep_their_rate() -> None:
    jpegs = [_jpeg(320, 180, 10 * i) for i in range(10)]
    frames, fps = decode_frames(jpegs, [i / 2 for i in range(10)], 2.0, MediaSpec(max_frames=4, max_pixels=128 * 28 * 28))
    assert frames.shape[0] == 4 and frames.dtype == np.uint8  # stride 3 -> frames 0, 3, 6, 9
    assert frames.shape[1] % 28 == 0 and frames.shape[2] % 28 == 0
    assert frames.shape[1] * frames.shape[2] <= 128 * 28 * 28
    assert fps == pytest.approx(2.0 / 3)
    _, derived = decode_frames(jpegs[:4], [0.0, 0.25, 0.5, 0.75], None, MediaSpec())
    assert derived == pytest.approx(4.0)
    assert audio_chunk_seconds(7.67) == 8 and audio_chunk_seconds(8.0) == 8 and audio_chunk_seconds(0.2) == 1


def _reference_patchify(video: np.ndarray, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, list[int]]:
    """transformers' Qwen2VLVideoProcessor.patchify (torch), after its rescale and CLIP normalisation."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 1, 3, 1, 1)
    videos = torch.from_numpy(video).permute(0, 3, 1, 2).unsqueeze(0).float() / 255.0
    videos = (videos - mean) / std
    batch, frames, channel, height, width = videos.shape
    if pad := -frames % temporal:
        videos = torch.cat((videos, videos[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
        frames += pad
    t, h, w = frames // temporal, height // patch, width // patch
    patches = videos.view(batch, t, temporal, channel, h // merge, merge, patch, w // merge, merge, patch)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return patches.reshape(t * h * w, channel * temporal * patch * patch), [t, h, w]


def test_numpy_video_processor_matches_qwen2_vl_patchify() -> None:
    from cotforge.train.processor import NumpyVideoProcessor

    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(5, 56, 84, 3), dtype=np.uint8)
    out = NumpyVideoProcessor()([[video]], return_tensors="pt")
    expected, grid = _reference_patchify(video, 14, 2, 2)
    assert out["video_grid_thw"].tolist() == [grid]
    assert torch.allclose(out["pixel_values_videos"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 28"):
        NumpyVideoProcessor()([video[:, :50]])


def test_sft_collator_labels_only_the_assistant_turn(demo_run: Path, tiny_omni_dir: Path) -> None:
    from transformers import AutoConfig

    from cotforge.train.collate import OmniSFTCollator
    from cotforge.train.processor import load_omni_processor

    processor = load_omni_processor(tiny_omni_dir, AutoConfig.from_pretrained(tiny_omni_dir).vision_config)
    corpus = open_shards(demo_run / "shards")
    rows = corpus.dataset.select(range(2)).to_list()
    batch = OmniSFTCollator(processor, corpus.scale, MediaSpec(max_frames=4, max_pixels=3136))(rows)
    for i, row in enumerate(rows):
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert processor.tokenizer.decode(labelled) == row["target"] + "<|im_end|>\n"
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_features"].shape[0] == 2 and batch["video_grid_thw"].shape == (2, 3)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert (batch["input_ids"] == audio_id).sum() > 0
