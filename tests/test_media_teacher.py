"""Request media is muxed once per clip: every request of a re-asked clip carries the same bytes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import pickle
from typing import Any

import av
import pytest

from cotforge.config import MediaConfig, ReaskConfig, SourceConfig, TeacherConfig
from cotforge.media.decode import decode_clip
from cotforge.sources import open_source
from cotforge.steps.teacher import TeacherStep
from cotforge.store.bundles import bundle_row
from cotforge.teacher.request import (
    ClipMedia, MediaPayload, PayloadText, body_json, build_request, encode_media, fill, materialize, media_uuid,
)
from cotforge.types import MOSI_SCALE, TeacherResponse
from cotforge.validate import ValidateConfig

WRONG = '{"discrimination": {"polarity": "negative"}}'  # never passes: every clip is asked samples + hint times


@pytest.fixture(scope="module")
def row(demo_factory) -> dict:
    demo = demo_factory("mosi", clips=8)
    ref = next(iter(open_source(SourceConfig(dataset="mosi", root=demo.root))))
    return {**bundle_row(decode_clip(ref, MediaConfig(size=160)), "test"), "label": 2.0}


class Client:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def ask(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherResponse:
        self.bodies.append(body)
        return TeacherResponse(contents=[WRONG], finish_reasons=["stop"], model="sim/test")


class Cache:
    def __init__(self) -> None:
        self.answers: dict[str, TeacherResponse] = {}

    def get(self, cache_key: str) -> TeacherResponse | None:
        found = self.answers.get(cache_key)
        return None if found is None else dataclasses.replace(found, cached=True)

    def put(self, cache_key: str, clip_key: str, prompt_version: str, hinted: bool, response: TeacherResponse) -> None:
        self.answers[cache_key] = response


def judge(row: dict, codec: str, cache: Cache) -> tuple[Client, list[str]]:
    """One clip through the teacher step; the client's bodies and what was run as media work."""
    client, ran = Client(), []

    async def run_media(fn, *args):  # noqa: ANN001, ANN202 - the executor's worker pool, in this process
        ran.append(fn.__name__)
        return fn(*args)

    step = TeacherStep(TeacherConfig(video_codec=codec), ReaskConfig(samples=3, hint=True),
                       ValidateConfig.for_dataset("mosi"), client, cache, run_media)
    outcome = asyncio.run(step.process(row))
    assert outcome.state == "rejected" and outcome.answer["requests"] == len(client.bodies)
    return client, ran


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
def test_a_re_asked_clip_is_muxed_once_and_sends_the_same_bytes(row: dict, codec: str) -> None:
    client, ran = judge(row, codec, Cache())
    assert len(client.bodies) == 4  # three samples and the hinted attempt
    assert ran == ["encode_media"]
    parts = [body["messages"][1]["content"][0] for body in client.bodies]
    assert len({p["video_url"]["url"] for p in parts}) == 1 and len({p["uuid"] for p in parts}) == 1
    mp4 = base64.b64decode(parts[0]["video_url"]["url"].split(",", 1)[1])
    assert parts[0]["uuid"] == media_uuid(mp4)  # the uuid names the bytes sent, as vLLM's encoder cache needs
    with av.open(io.BytesIO(mp4)) as container:
        assert container.streams.video[0].codec_context.name == codec
        assert len(list(container.decode(video=0))) == len(row["frames"])


def test_answers_from_the_cache_cost_no_muxing(row: dict) -> None:
    cache = Cache()
    judge(row, "h264", cache)
    client, ran = judge(row, "h264", cache)
    assert client.bodies == [] and ran == []


def test_fill_leaves_the_canonical_body_alone_and_matches_materialize(row: dict) -> None:
    cfg = TeacherConfig(media_mode="separate")
    body = build_request(row, cfg, MOSI_SCALE).body
    media = ClipMedia(row["frames"], row["frame_fps"], row["audio"])
    payloads = encode_media(body, media, "mjpeg")
    before = repr(body)
    filled = fill(body, payloads)
    assert repr(body) == before
    assert filled == materialize(body, media, "mjpeg")  # the mux is deterministic: the same clip gives the same bytes
    hinted = build_request(row, cfg, MOSI_SCALE, hint="positive", attempt=3).body
    assert fill(hinted, payloads)["messages"][1]["content"][:2] == filled["messages"][1]["content"][:2]


def test_a_body_is_posted_as_its_json_with_each_payload_escaped_once(row: dict) -> None:
    """What the client posts is the body's JSON; a clip's payloads are escaped once for all its requests."""
    cfg = TeacherConfig(media_mode="separate")
    media = ClipMedia(row["frames"], row["frame_fps"], row["audio"])
    payloads = encode_media(build_request(row, cfg, MOSI_SCALE).body, media, "mjpeg")
    first = fill(build_request(row, cfg, MOSI_SCALE).body, payloads)
    # base64 needs no escaping: its JSON form is made with the payload, by copying, and is what json.dumps makes
    assert all(p.data.__dict__["_json"] == json.dumps(str(p.data)).encode() for p in payloads.values())
    assert json.loads(body_json(first)) == first
    made = [p.data.json for p in payloads.values()]
    hinted = fill(build_request(row, cfg, MOSI_SCALE, hint="positive", attempt=1).body, payloads)
    assert json.loads(body_json(hinted)) == hinted and [p.data.json for p in payloads.values()] == made
    assert all(a is b for a, b in zip(made, [p.data.json for p in payloads.values()], strict=True))
    # a payload JSON must escape (a file:// URL with a quote, a backslash and non-ASCII in its path) is escaped right
    odd = PayloadText('file:///data/clips/a"b\\c-é.mp4')
    part = first["messages"][1]["content"][0]
    tricky = {**first, "messages": [first["messages"][0], {**first["messages"][1], "content": [
        {**part, "video_url": {"url": odd}}, *first["messages"][1]["content"][1:]]}]}
    assert json.loads(body_json(tricky))["messages"][1]["content"][0]["video_url"]["url"] == str(odd)
    # from a media worker a payload travels as its JSON form alone and arrives as the same text
    for sent in (*payloads.values(), MediaPayload(odd, "x")):
        arrived = pickle.loads(pickle.dumps(sent))
        assert arrived == sent and type(arrived.data) is PayloadText and arrived.data.__dict__["_json"] == sent.data.json
        assert len(pickle.dumps(sent)) < len(sent.data.json) + 200  # the JSON form only, not the text beside it
    with pytest.raises(ValueError, match="needs escaping"):
        PayloadText.of_ascii(str(odd))
    with pytest.raises(ValueError, match="needs escaping"):
        PayloadText.of_ascii(b'data:video/mp4;base64,"')
    with pytest.raises(UnicodeDecodeError):  # bytes are taken as ASCII only: nothing JSON would have to escape
        PayloadText.of_ascii("caf\u00e9".encode())
    as_bytes = PayloadText.of_ascii(b"data:video/mp4;base64,AAAA")
    assert as_bytes == PayloadText.of_ascii("data:video/mp4;base64,AAAA") and as_bytes.json == b'"data:video/mp4;base64,AAAA"'
    # any body a caller posts: one message with text content, or a payload in the only message
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert json.loads(body_json(plain)) == plain
    alone = {"model": "m", "messages": [{"role": "user", "content": [{**part, "video_url": {"url": odd}}]}]}
    assert json.loads(body_json(alone)) == alone


def test_mjpeg_mp4_carries_the_bundle_packets_unchanged(row: dict) -> None:
    """No encoding on the cheap path: the JPEG frames are the bundle's own, and so are the samples, as float PCM in
    [-1, 1] (what vLLM's audio loader reads unscaled; FLAC's int16 reached the model 32768 times too loud)."""
    import numpy as np

    from cotforge.media.encode import flac_to_pcm
    from cotforge.teacher.media import mux_mp4

    mp4 = mux_mp4(row["frames"], row["frame_fps"], row["audio"], "mjpeg")
    with av.open(io.BytesIO(mp4)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert float(video.average_rate) == pytest.approx(row["frame_fps"], rel=1e-3)
        assert [bytes(p) for p in container.demux(video) if p.size] == list(row["frames"])
    with av.open(io.BytesIO(mp4)) as container:
        assert container.streams.audio[0].codec_context.name == "pcm_f32le"
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert samples.dtype == np.float32 and np.array_equal(samples * 32768, flac_to_pcm(row["audio"])[0])
