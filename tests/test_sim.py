"""`cotforge teacher-sim` seen through the real openai client: vLLM's refusals, DC answers, capacity and faults."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletion
from PIL import Image
from pydantic import ValidationError

from cotforge.dc import Polarity, Rationale, load_schema
from cotforge.sim.media import Visual, video_tokens
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.teacher.headers import SIMULATOR_OWNER

MODEL = "sim/qwen3-omni"
SECRET = "sk-sim-test-3f9c1b7e-never-logged"
TRANSCRIPT = 'Transcript: "well that went better than I ever expected"\nJudge the sentiment.'
OPENAI_KEYS = ("model", "messages", "temperature", "top_p", "max_tokens", "seed", "n", "response_format")


def _mp4(audio: bool = True) -> bytes:
    """A 1 s 64x64 H.264 clip at 10 fps, with a 16 kHz AAC tone unless `audio` is False."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=10)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(10):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")))
        if sound is not None:
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16 * 1024) / 16000)).astype(np.float32)[None, :]
            for start in range(0, tone.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                out.mux(sound.encode(frame))
        for stream in out.streams:
            out.mux(stream.encode(None))
    return buf.getvalue()


def _wav(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def clip() -> bytes:
    return _mp4()


@pytest.fixture(scope="module")
def silent_clip() -> bytes:
    return _mp4(audio=False)


def _config(**changes: Any) -> SimConfig:
    return SimConfig(**{"port": 0, "latency_ms": 5, **changes})


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim") / "requests.jsonl"


@pytest.fixture(scope="module")
def server(log_file: Path) -> Iterator[SimProcess]:
    """The default simulator (no faults), shared by the tests that need nothing special."""
    with SimProcess(_config(log_path=log_file)) as sim:
        yield sim


def _client(sim: SimProcess, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url, api_key=SECRET, max_retries=0, **options)


def _body(video: bytes, **changes: Any) -> dict[str, Any]:
    """cotforge's request shape; a change to None removes that key."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are an expert annotator of speaker sentiment."},
            {"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{_b64(video)}"}, "uuid": "media-sha"},
                {"type": "text", "text": TRANSCRIPT},
            ]},
        ],
        "temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "seed": 1234, "n": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "dc_rationale", "schema": load_schema(), "strict": True}},
        "mm_processor_kwargs": {"use_audio_in_video": True},
        "media_io_kwargs": {"video": {"fps": 2.0}},
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def _headers(key: str = "clip-1", gold: float = 2.0, low: int = -3, high: int = 3, **extra: str) -> dict[str, str]:
    return {"X-Cotforge-Key": key, "X-Cotforge-Gold": repr(gold), "X-Cotforge-Range": f"{low},{high}", **extra}


GOLD = _headers()


def _split(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(typed openai arguments, extra_body), as cotforge's client sends a body."""
    typed = {key: value for key, value in body.items() if key in OPENAI_KEYS}
    return typed, {key: value for key, value in body.items() if key not in OPENAI_KEYS}


def _ask(client: openai.OpenAI, body: dict[str, Any], headers: dict[str, str] = GOLD) -> ChatCompletion:
    typed, extra = _split(body)
    return client.chat.completions.create(**typed, extra_body=extra, extra_headers=headers)


def _with_audio_part(body: dict[str, Any]) -> dict[str, Any]:
    body["messages"][1]["content"].insert(1, {"type": "input_audio", "input_audio": {"data": _b64(_wav()), "format": "wav"}})
    return body


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _polarity(score: float, low: float, high: float) -> Polarity:
    band, inclusive = (0.1, True) if high - low <= 2 else (0.5, False)
    if score == 0 or abs(score) < band or (inclusive and abs(score) == band):
        return Polarity.NEUTRAL
    return Polarity.POSITIVE if score > 0 else Polarity.NEGATIVE


def _rationale(completion: ChatCompletion, index: int = 0) -> Rationale:
    return Rationale.model_validate_json(completion.choices[index].message.content or "")


# --- answers -----------------------------------------------------------------------------------


def test_valid_request_gets_schema_shaped_answer_in_range(server: SimProcess, clip: bytes) -> None:
    completion = _ask(_client(server), _body(clip))
    content = completion.choices[0].message.content or ""
    parsed = json.loads(content)
    assert list(parsed) == ["discrimination", "calibration"]
    assert list(parsed["discrimination"]) == ["cues", "summary", "polarity"]
    assert list(parsed["calibration"]) == ["reasoning", "score"]
    rationale = _rationale(completion)
    assert -3 <= rationale.calibration.score <= 3
    assert rationale.discrimination.polarity == _polarity(rationale.calibration.score, -3, 3)
    assert "went better than" in rationale.discrimination.cues.text
    assert completion.model == MODEL and completion.id.startswith("chatcmpl-sim-")
    assert completion.choices[0].finish_reason == "stop"
    # 2 frames (1 s at 2 fps) of 64x64 lifted to 384x384 = 144 tokens, plus 1.024 s of audio and text.
    assert completion.usage is not None and completion.usage.prompt_tokens > 144 + 13
    assert completion.usage.completion_tokens > 0


def test_same_seed_same_answer_on_fresh_servers(clip: bytes) -> None:
    answers = []
    for _ in range(2):
        with SimProcess(_config(seed=7)) as sim:
            answers.append(_ask(_client(sim), _body(clip)).choices[0].message.content)
    assert answers[0] == answers[1]


def test_n_returns_distinct_draws(server: SimProcess, clip: bytes) -> None:
    completion = _ask(_client(server), _body(clip, n=3, seed=99), _headers(key="clip-n"))
    contents = [choice.message.content for choice in completion.choices]
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert len(set(contents)) > 1
    for index in range(3):
        _rationale(completion, index)


def test_unstructured_answer_wraps_json_in_a_fence(server: SimProcess, clip: bytes) -> None:
    content = _ask(_client(server), _body(clip, response_format=None)).choices[0].message.content or ""
    prose, fenced = content.split("```json\n", 1)
    assert prose.strip() and fenced.endswith("```")
    Rationale.model_validate_json(fenced.removesuffix("```"))


def test_structured_outputs_variant_is_plain_json(server: SimProcess, clip: bytes) -> None:
    body = _body(clip, response_format=None, structured_outputs={"json": load_schema()})
    assert _rationale(_ask(_client(server), body))


def test_chinese_answer_for_zh_clips(server: SimProcess, clip: bytes) -> None:
    completion = _ask(_client(server), _body(clip), _headers(key="sims-1", gold=0.6, low=-1, high=1, **{"X-Cotforge-Language": "zh"}))
    rationale = _rationale(completion)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in rationale.texts())
    assert -1 <= rationale.calibration.score <= 1


def test_without_gold_the_answer_is_neutral_ish(server: SimProcess, clip: bytes) -> None:
    score = _rationale(_ask(_client(server), _body(clip), {})).calibration.score
    assert abs(score) <= 1.5


def test_hard_clips_are_wrong_unless_hinted(clip: bytes) -> None:
    with SimProcess(_config(hard_share=1.0, flip_rate=0.0, noise=0.0)) as sim:
        client = _client(sim)
        cases = [(2.0, Polarity.NEGATIVE), (-1.5, Polarity.POSITIVE)]
        for gold, wrong in cases:
            assert _rationale(_ask(client, _body(clip), _headers(key=f"hard{gold}", gold=gold))).discrimination.polarity == wrong
        neutral = _rationale(_ask(client, _body(clip), _headers(key="hard-neutral", gold=0.0)))
        assert neutral.discrimination.polarity != Polarity.NEUTRAL
        hinted = _rationale(_ask(client, _body(clip), _headers(key="hard2.0", gold=2.0, **{"X-Cotforge-Hint": "positive"})))
        assert hinted.discrimination.polarity == Polarity.POSITIVE
        assert abs(hinted.calibration.score - 2.0) <= 1.0


# --- refusals like vLLM's ------------------------------------------------------------------------


def test_wrong_model_is_not_found_and_models_lists_the_served_name(server: SimProcess, clip: bytes) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError, match="The model `Qwen/Qwen3-Omni-30B-A3B-Instruct` does not exist."):
        _ask(client, _body(clip, model="Qwen/Qwen3-Omni-30B-A3B-Instruct"))
    assert [model.id for model in client.models.list()] == [MODEL]
    assert httpx.get(f"{server.root}/health", trust_env=False).status_code == 200


def test_models_card_has_vllms_fields_and_marks_the_simulator(server: SimProcess) -> None:
    [card] = httpx.get(f"{server.url}/models", trust_env=False).json()["data"]
    assert card["id"] == card["root"] == MODEL and card["object"] == "model" and card["parent"] is None
    assert card["owned_by"] == SIMULATOR_OWNER == "cotforge-teacher-sim"
    assert card["max_model_len"] == 32768
    [listed] = _client(server).models.list().data  # what cotforge's client reads, through the openai package
    assert listed.owned_by == SIMULATOR_OWNER and (listed.model_extra or {})["max_model_len"] == 32768


def test_nothing_in_the_pipeline_imports_the_simulator() -> None:
    package = Path(__file__).resolve().parent.parent / "cotforge"
    importers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.parent.name not in ("sim", "cli") and re.search(r"cotforge\.sim\b|from cotforge import sim", path.read_text())
    ]
    assert importers == []


def test_audio_part_beside_audio_in_video_exceeds_the_audio_limit(server: SimProcess, clip: bytes) -> None:
    with pytest.raises(openai.BadRequestError, match=r"At most 1 audio\(s\) may be provided in one prompt\."):
        _ask(_client(server), _with_audio_part(_body(clip)))


def test_audio_in_video_needs_equal_audio_and_video_counts(clip: bytes) -> None:
    with SimProcess(_config(limit_mm_per_prompt={"image": 0, "video": 1, "audio": 2})) as sim:
        expected = "use_audio_in_video requires equal number of audio and video items, got num_audios=2, num_videos=1"
        with pytest.raises(openai.BadRequestError, match=expected):
            _ask(_client(sim), _with_audio_part(_body(clip)))


def test_audio_in_video_needs_an_audio_track_and_the_fallback_does_not(server: SimProcess, silent_clip: bytes) -> None:
    client = _client(server)
    with pytest.raises(openai.BadRequestError, match="Video doesn't have audio track with `audio_in_video=True`"):
        _ask(client, _body(silent_clip))
    assert _rationale(_ask(client, _with_audio_part(_body(silent_clip, mm_processor_kwargs=None))))


def test_media_seen_before_is_judged_by_its_bytes_not_its_uuid(server: SimProcess, clip: bytes, silent_clip: bytes) -> None:
    """The simulator keeps what it learnt of recent payloads (re-asks resend a clip's media), keyed by the bytes:
    other media under a reused uuid is judged afresh, and a refused payload is refused each time."""
    client = _client(server)
    first = _ask(client, _body(clip))
    for _ in range(2):  # the silent clip carries the uuid the good one was sent with
        with pytest.raises(openai.BadRequestError, match="Video doesn't have audio track"):
            _ask(client, _body(silent_clip))
    again = _ask(client, _body(clip, seed=99))
    assert again.usage.prompt_tokens == first.usage.prompt_tokens


def test_untrusted_request_mm_kwargs_are_refused(clip: bytes) -> None:
    with SimProcess(_config(trust_request_mm_kwargs=False)) as sim:
        client = _client(sim)
        with pytest.raises(openai.BadRequestError, match="Per-request mm_processor_kwargs are disabled by default") as info:
            _ask(client, _body(clip))
        assert "--trust-request-mm-kwargs" in info.value.message
        with pytest.raises(openai.BadRequestError, match="Per-request media_io_kwargs are disabled by default"):
            _ask(client, _with_audio_part(_body(clip, mm_processor_kwargs=None)))
        assert _rationale(_ask(client, _with_audio_part(_body(clip, mm_processor_kwargs=None, media_io_kwargs=None))))


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, shade, shade)).save(buf, format="JPEG")
    return buf.getvalue()


def test_images_are_over_the_default_limit_of_zero(server: SimProcess, clip: bytes) -> None:
    body = _body(clip)
    body["messages"][1]["content"].insert(0, {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{_b64(_jpeg(90))}"}})
    with pytest.raises(openai.BadRequestError, match=r"At most 0 image\(s\) may be provided in one prompt\."):
        _ask(_client(server), body)


def test_jpeg_frame_list_video_with_separate_audio(server: SimProcess, clip: bytes) -> None:
    body = _with_audio_part(_body(clip, mm_processor_kwargs=None))
    frames = ",".join(_b64(_jpeg(shade)) for shade in (40, 80, 120, 160))
    body["messages"][1]["content"][0]["video_url"]["url"] = f"data:video/jpeg;base64,{frames}"
    assert _rationale(_ask(_client(server), body))


def test_prompt_and_max_tokens_must_fit_the_context(server: SimProcess, clip: bytes) -> None:
    with pytest.raises(openai.BadRequestError, match="This model's maximum context length is 32768 tokens"):
        _ask(_client(server), _body(clip, max_tokens=32768))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("data:video/mp4;base64,not*base64", "not valid base64"),
        (f"data:video/mp4;base64,{_b64(b'plain text, not a video')}", "could not load the video"),
        ("https://example.org/clip.mp4", "expected a data URL"),
    ],
)
def test_undecodable_video_is_refused(server: SimProcess, clip: bytes, url: str, reason: str) -> None:
    body = _body(clip)
    body["messages"][1]["content"][0]["video_url"]["url"] = url
    with pytest.raises(openai.BadRequestError, match=reason):
        _ask(_client(server), body)


def test_removed_guided_json_is_answered_unconstrained_and_flagged(server: SimProcess, clip: bytes, log_file: Path) -> None:
    body = _body(clip, response_format=None, guided_json=load_schema())
    content = _ask(_client(server), body, _headers(key="guided-1")).choices[0].message.content or ""
    assert "```json" in content and not content.startswith("{")
    [record] = [entry for entry in _log(log_file) if entry["key"] == "guided-1"]
    assert "removed-field:guided_json" in record["flags"]


def test_log_keeps_no_secret_and_no_payload(server: SimProcess, clip: bytes, log_file: Path) -> None:
    _ask(_client(server), _body(clip), _headers(key="log-1"))
    text = log_file.read_text(encoding="utf-8")
    assert SECRET not in text and SECRET not in server.output()
    assert _b64(clip)[:200] not in text
    [record] = [entry for entry in _log(log_file) if entry["key"] == "log-1"]
    assert record["status"] == 200 and record["parts"] == ["text", "video_url", "text"]
    assert record["media"] == [{"type": "video_url", "mime": "video/mp4", "bytes": len(clip)}]
    assert "mm_processor_kwargs" in record["body_keys"] and "body" not in record


def test_log_bodies_keeps_the_media(tmp_path: Path, clip: bytes) -> None:
    log = tmp_path / "bodies.jsonl"
    with SimProcess(_config(log_path=log, log_bodies=True)) as sim:
        _ask(_client(sim), _body(clip))
    [record] = _log(log)
    url = record["body"]["messages"][1]["content"][0]["video_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == clip
    assert SECRET not in log.read_text(encoding="utf-8")


# --- faults and capacity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("rate_429", openai.RateLimitError),
        ("rate_500", openai.InternalServerError),
        ("rate_reset", openai.APIConnectionError),
        ("rate_timeout", openai.APITimeoutError),
    ],
)
def test_error_faults_reach_the_client(kind: str, error: type[openai.OpenAIError], clip: bytes) -> None:
    with SimProcess(_config(**{kind: 1.0, "timeout_hold_s": 3.0})) as sim:
        with pytest.raises(error) as info:
            _ask(_client(sim, timeout=1.0), _body(clip))
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
    assert stats["faults"] == {kind.removeprefix("rate_"): 1}
    if kind == "rate_reset":
        assert not isinstance(info.value, openai.APITimeoutError)
    if kind == "rate_429":
        assert isinstance(info.value, openai.RateLimitError) and info.value.response.headers["retry-after"] == "0.2"


@pytest.mark.parametrize(("kind", "finish_reason"), [("rate_malformed", "stop"), ("rate_truncated", "length")])
def test_bad_content_faults_reach_the_client(kind: str, finish_reason: str, clip: bytes) -> None:
    with SimProcess(_config(**{kind: 1.0})) as sim:
        choice = _ask(_client(sim), _body(clip)).choices[0]
    content = choice.message.content or ""
    assert choice.finish_reason == finish_reason
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    assert content.startswith('{"discrimination"') if kind == "rate_truncated" else "{" not in content


def test_a_retry_of_the_same_body_draws_its_fault_again(clip: bytes) -> None:
    with SimProcess(_config(rate_500=0.5)) as sim:
        client = _client(sim)
        outcomes = set()
        for _ in range(8):
            try:
                outcomes.add(_ask(client, _body(clip)).choices[0].message.content)
            except openai.InternalServerError:
                outcomes.add("500")
    # Some attempts fail and the others all give the one answer of this seeded body.
    assert "500" in outcomes and len(outcomes) == 2


def test_capacity_queues_requests_beyond_it(clip: bytes) -> None:
    capacity, latency_ms = 4, 100

    async def burst(sim: SimProcess) -> float:
        async with openai.AsyncOpenAI(base_url=sim.url, api_key=SECRET, max_retries=0) as client:
            typed, extra = _split(_body(clip))
            started = time.perf_counter()
            await asyncio.gather(*(
                client.chat.completions.create(**typed, extra_body=extra, extra_headers=_headers(key=f"load-{i}"))
                for i in range(3 * capacity)
            ))
            return time.perf_counter() - started

    with SimProcess(_config(capacity=capacity, latency_ms=latency_ms)) as sim:
        wall = asyncio.run(burst(sim))
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
        metrics = httpx.get(f"{sim.root}/metrics", trust_env=False).text
    assert stats["max_running"] == capacity and stats["max_waiting"] >= 1
    assert stats["requests"] == {"200": 3 * capacity}
    assert 0.3 <= wall < 2.0
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in metrics
    assert "vllm:num_requests_waiting" in metrics


# --- configuration and token estimates ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"host": "0.0.0.0"}, "loopback"),
        ({"host": "192.168.1.5"}, "loopback"),
        ({"model": "qwen3-omni"}, "must start with 'sim/'"),
        ({"rate_429": 0.6, "rate_500": 0.6}, "at most 1"),
        ({"limit_mm_per_prompt": {"vision": 1}}, "unknown modalities"),
        ({"latency": 5}, "Extra inputs"),
    ],
)
def test_config_refuses_unsafe_or_mistyped_settings(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SimConfig(**changes)


def test_loopback_hosts_are_accepted() -> None:
    assert [SimConfig(host=host).host for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1")]


@pytest.mark.parametrize(("width", "height", "cells"), [(640, 360, 220), (1280, 720, 720), (64, 64, 144)])
def test_frame_cells_follow_qwen_resizing(width: int, height: int, cells: int) -> None:
    assert video_tokens(Visual(width=width, height=height, frames=2), fps=None, num_frames=None) == cells


def test_video_tokens_of_a_ten_second_360p_clip() -> None:
    assert video_tokens(Visual(width=640, height=360, seconds=10.0), fps=2.0, num_frames=None) == 2200
