"""Request building: the exact keys sent, media that decodes back to the bundle, cache keys, token plan."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
import soundfile as sf

from cotforge.config import MediaConfig, SourceConfig, TeacherConfig
from cotforge.media.decode import decode_clip
from cotforge.sources import open_source
from cotforge.store.bundles import bundle_row
from cotforge.teacher.plan import QWEN3_OMNI, QWEN25_OMNI
from cotforge.teacher.prompts import prompt_version, render_teacher
from cotforge.types import DATASETS, MOSI_SCALE
from cotforge.teacher.request import ClipMedia, build_request, materialize

REMOVED = {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_whitespace_pattern", "guided_decoding_backend"}


@pytest.fixture(scope="module")
def row(demo_factory) -> dict:
    demo = demo_factory("mosi", clips=8)
    ref = next(iter(open_source(SourceConfig(dataset="mosi", root=demo.root))))
    return bundle_row(decode_clip(ref, MediaConfig(fps=2.0, size=160)), "test")


def test_exact_keys_sent_for_vllm(row: dict) -> None:
    request = build_request(row, TeacherConfig(), MOSI_SCALE)
    body = request.body
    assert set(body) == {"model", "messages", "temperature", "top_p", "max_tokens", "n", "seed", "response_format",
                         "mm_processor_kwargs", "media_io_kwargs"}
    assert not REMOVED & set(body)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["discrimination"]
    assert body["mm_processor_kwargs"] == {"use_audio_in_video": True}
    assert body["media_io_kwargs"] == {"video": {"num_frames": -1}}  # every frame of the MP4, never resampled
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["video_url", "text"]
    assert parts[0]["uuid"].startswith(row["media_hash"])
    assert request.headers == {}  # gold labels only ever go to a simulator


def test_structured_outputs_and_separate_media_variants(row: dict) -> None:
    body = build_request(row, TeacherConfig(structured="structured_outputs", media_mode="separate"), MOSI_SCALE).body
    assert "response_format" not in body and set(body["structured_outputs"]) == {"json"}
    assert "mm_processor_kwargs" not in body
    assert [p["type"] for p in body["messages"][1]["content"]] == ["video_url", "input_audio", "text"]
    plain = build_request(row, TeacherConfig(structured="none", mm_kwargs="server"), MOSI_SCALE).body
    assert not {"response_format", "structured_outputs", "mm_processor_kwargs", "media_io_kwargs"} & set(plain)


def test_cache_key_is_stable_and_changes_with_what_matters(row: dict) -> None:
    cfg = TeacherConfig()
    key = build_request(row, cfg, MOSI_SCALE).cache_key
    assert build_request(dict(row), cfg, MOSI_SCALE).cache_key == key
    assert build_request(row, TeacherConfig(concurrency=3, timeout_s=5), MOSI_SCALE).cache_key == key  # speed knobs do not count
    assert build_request(row, TeacherConfig(temperature=0.2), MOSI_SCALE).cache_key != key
    assert build_request(row, cfg, MOSI_SCALE, attempt=1).cache_key != key
    assert build_request(row, cfg, MOSI_SCALE, hint="positive").cache_key != key
    assert build_request({**row, "media_hash": "other"}, cfg, MOSI_SCALE).cache_key != key


def test_materialized_video_decodes_back_to_the_bundle(row: dict) -> None:
    request = build_request(row, TeacherConfig(), MOSI_SCALE)
    filled = materialize(request.body, ClipMedia(row["frames"], row["frame_fps"], row["audio"]), "h264")
    url = filled["messages"][1]["content"][0]["video_url"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    with av.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert float(video.average_rate) == pytest.approx(row["frame_fps"], rel=1e-3)
        frames = list(container.decode(video=0))
    assert len(frames) == len(row["frames"])
    assert (frames[0].width, frames[0].height) == (row["frame_width"], row["frame_height"])
    with av.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples / 16000 - row["audio_num_samples"] / 16000) < 0.07  # within one AAC frame
    assert "cotforge-media:video" in str(request.body)  # the canonical request (and its cache key) stays unfilled


def test_separate_mode_sends_wav_equal_to_the_bundle_audio(row: dict) -> None:
    body = build_request(row, TeacherConfig(media_mode="separate"), MOSI_SCALE).body
    filled = materialize(body, ClipMedia(row["frames"], row["frame_fps"], row["audio"]), "mjpeg")
    part = filled["messages"][1]["content"][1]
    wav, rate = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])), dtype="int16")
    flac, _ = sf.read(io.BytesIO(row["audio"]), dtype="int16")
    assert rate == 16000 and np.array_equal(wav, flac)
    video = base64.b64decode(filled["messages"][1]["content"][0]["video_url"]["url"].split(",", 1)[1])
    with av.open(io.BytesIO(video)) as container:
        assert not container.streams.audio and container.streams.video[0].codec_context.name == "mjpeg"


def test_prompts_per_language_and_hint() -> None:
    system, user = render_teacher("IT WAS GREAT", "en", MOSI_SCALE, hint="positive")
    assert "+3.0 = strongly positive" in user and "IT WAS GREAT" in user and "positive" in user.split("Note:")[1]
    _, zh = render_teacher("不错", "zh", DATASETS["sims"].scale)
    assert "-1.0 到 1.0" in zh and "Note" not in zh
    assert prompt_version("en") != prompt_version("zh") and prompt_version("en").startswith("dc-en-")


def test_token_rules_match_the_processors() -> None:
    # 10 s at 2 fps = 10 two-frame groups (vllm-serving notes, from the processors' smart_resize)
    assert QWEN3_OMNI.video_tokens(20, 640, 360) == 2200
    assert QWEN25_OMNI.video_tokens(20, 640, 360) == 2990
    assert QWEN3_OMNI.video_tokens(20, 1280, 720) == 7200
    assert QWEN3_OMNI.audio_tokens(10.0) == 130
    assert QWEN25_OMNI.audio_tokens(10.0) == 250
    # 3 s clip measured on a real vLLM server: 301 mel frames -> 75 audio tokens (Qwen2.5-Omni)
    assert QWEN25_OMNI.audio_tokens(3.01) == 75


def test_a_template_edited_mid_run_is_not_rendered_under_the_old_version(tmp_path) -> None:
    """prompt_version hashes a prompt_dir's templates once per process, so rendering must read them once too:
    a request is never built from one text and cached under the hash of another."""
    from cotforge.resources import resource_dir

    for name in ("system.en.j2", "teacher_dc.en.j2"):
        (tmp_path / name).write_bytes((resource_dir("prompts") / name).read_bytes())
    version = prompt_version("en", tmp_path)
    system, instruction = render_teacher("a line", "en", MOSI_SCALE, prompt_dir=tmp_path)
    (tmp_path / "system.en.j2").write_text("an edited system prompt", encoding="utf-8")
    assert prompt_version("en", tmp_path) == version
    assert render_teacher("a line", "en", MOSI_SCALE, prompt_dir=tmp_path) == (system, instruction)
