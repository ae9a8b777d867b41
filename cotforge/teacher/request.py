"""The one internal request format: an OpenAI chat-request dict, for every backend.

A request is first built in *canonical* form, where each media part holds only the media hash
(`uuid`) instead of its base64 payload. The cache key is the hash of that canonical form, so a
cache hit costs no media encoding at all, and the key changes exactly when the model, prompt
version, media, sampling or schema do. Just before sending, `encode_media` makes the payload of each
media part (in a worker process: muxing costs tens of ms) and `fill` puts them into a copy of the
body, setting each part's `uuid` to the SHA-256 of the bytes it carries. The payloads are keyed by
the canonical `uuid`, so a clip asked several times (more samples, the hinted attempt) encodes its
media once and sends the same bytes, under the same `uuid`, each time; `materialize` does both steps
for one request.

That `uuid` is what vLLM keys its encoder cache by, and the cache outlives a run and is shared by
every client of the server: a `uuid` reused for other bytes (another codec, mode or muxer version
of the same bundle) makes vLLM fail the request with a 500 (or, when the embedding counts happen to
match, silently answer about the old media). Hashing the bytes sent leaves no way to reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pybase64

from cotforge.config import TeacherConfig
from cotforge.resources import load_schema
from cotforge.teacher.headers import simulator_headers
from cotforge.teacher.media import RECIPES, data_url, mux_mp4, wav_bytes
from cotforge.teacher.prompts import prompt_version, render_teacher
from cotforge.types import Scale

MEDIA_PLACEHOLDER = "cotforge-media:"


@dataclass(slots=True)
class TeacherRequest:
    clip_key: str
    cache_key: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    hint: str | None = None
    prompt_version: str = ""


@dataclass(slots=True)
class ClipMedia:
    """What `encode_media` needs from a bundle (kept small so it pickles cheaply to a worker)."""

    frames: list[bytes]
    frame_fps: float
    audio_flac: bytes


def _structured(cfg: TeacherConfig) -> dict[str, Any]:
    schema = load_schema("dc_rationale")
    if cfg.structured == "response_format":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "dc_rationale", "schema": schema, "strict": True}}}
    if cfg.structured == "structured_outputs":
        return {"structured_outputs": {"json": schema}}
    return {}


def build_request(row: dict[str, Any], cfg: TeacherConfig, scale: Scale, hint: str | None = None, attempt: int = 0) -> TeacherRequest:
    """Canonical request for one bundle row (see store.bundles) on the run's scale; `attempt` > 0 varies the seed for re-asks."""
    system, instruction = render_teacher(row["text"], row["language"], scale, hint, cfg.prompt_dir)
    media_hash = row["media_hash"]
    parts: list[dict[str, Any]] = [
        {"type": "video_url", "video_url": {"url": f"{MEDIA_PLACEHOLDER}video"}, "uuid": f"{media_hash}:{cfg.media_mode}"}
    ]
    if cfg.media_mode == "separate":
        parts.append({"type": "input_audio", "input_audio": {"data": f"{MEDIA_PLACEHOLDER}audio", "format": "wav"}, "uuid": f"{media_hash}:wav"})
    parts.append({"type": "text", "text": instruction})
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": parts}],
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_tokens,
        "n": cfg.n,
    }
    if cfg.seed is not None:
        body["seed"] = cfg.seed + attempt
    body.update(_structured(cfg))
    if cfg.chat_template_kwargs:
        body["chat_template_kwargs"] = cfg.chat_template_kwargs
    if cfg.mm_kwargs == "request":
        if cfg.media_mode == "video_audio":
            body["mm_processor_kwargs"] = {"use_audio_in_video": True}
        # every frame of the MP4 (it holds exactly the bundle's frames, at their rate): a requested fps makes
        # vLLM resample, and a rounded fps silently drops frames (seen on a real server: 32 sent, 30 seen)
        body["media_io_kwargs"] = {"video": {"num_frames": -1}}
    canonical = json.dumps({"body": body, "codec": RECIPES[cfg.video_codec]}, sort_keys=True, ensure_ascii=False)
    headers = simulator_headers(row["key"], row["label"], scale, row["language"], hint) if cfg.simulated else {}
    return TeacherRequest(
        clip_key=row["key"],
        cache_key=hashlib.sha256(canonical.encode()).hexdigest(),
        body=body,
        headers=headers,
        hint=hint,
        prompt_version=prompt_version(row["language"], cfg.prompt_dir),
    )


PAYLOAD_FIELD = {"video_url": "url", "input_audio": "data"}
"""Media part type -> the field of its object that carries the payload."""


def _media_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in body["messages"][1]["content"] if p["type"] in PAYLOAD_FIELD]


def media_uuids(body: dict[str, Any]) -> list[str]:
    """The `uuid` of each media part of a canonical body: what `encode_media`'s payloads are keyed by."""
    return [p["uuid"] for p in _media_parts(body)]


class PayloadText(str):
    """A media payload's text that keeps its JSON form once made: a clip's payload (megabytes of base64) goes
    out with each of its requests, and encoding a body would otherwise scan every byte of it each time.
    Everywhere else it is the str it holds.

    It is made in a media worker and travels to the event loop as its JSON form only (`__reduce__`), so
    the escaping is paid in the worker and the loop rebuilds the text by decoding, not by parsing."""

    @property
    def json(self) -> bytes:
        """The JSON string literal, quotes included, as UTF-8."""
        cached = self.__dict__.get("_json")
        if cached is None:
            cached = self.__dict__["_json"] = json.dumps(str(self), ensure_ascii=False).encode()
        return cached

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _payload_from_json, (self.json,)

    @classmethod
    def of_ascii(cls, text: str | bytes) -> PayloadText:
        """A payload of characters JSON never escapes (base64, a data URL of it, a percent-encoded file URL):
        its JSON form is the text in quotes, made by copying instead of scanning for what to escape. Given
        as bytes (base64 as its encoder returns it), the JSON form is made from them in one copy and the
        text decoded from it: a megabyte payload is copied twice, not five times."""
        raw = text.encode() if isinstance(text, str) else text
        if b'"' in raw or b"\\" in raw:
            raise ValueError("a payload with a quote or a backslash needs escaping: use PayloadText(text)")
        literal = b"".join((b'"', raw, b'"'))
        payload = cls(memoryview(literal)[1:-1], "ascii")  # anything past ASCII raises a UnicodeDecodeError
        payload.__dict__["_json"] = literal
        return payload


def _payload_from_json(literal: bytes) -> PayloadText:
    """The PayloadText of a JSON string literal. Without a backslash the literal holds no escape (json.dumps
    escapes only with one), so its text is the bytes between the quotes; else it is parsed."""
    if b"\\" in literal:
        payload = PayloadText(json.loads(literal))
    else:
        # decoded from a view into the payload itself: slicing first, and then copying the text into a
        # PayloadText, cost twenty times the decode (two more megabyte allocations per clip)
        payload = PayloadText(memoryview(literal)[1:-1], "utf-8")
    payload.__dict__["_json"] = literal
    return payload


class MediaPayload(NamedTuple):
    """What one media part carries: `data` (a data or file:// URL, or base64 WAV) and `uuid`, the hash of its bytes."""

    data: PayloadText
    uuid: str


# Stands for a payload while the rest of a body is encoded; unguessable, so no transcript can hold it.
_STAND_IN = f"cotforge-payload-{os.urandom(8).hex()}"


def body_json(body: dict[str, Any]) -> bytes:
    """A filled body as the JSON bytes posted: the small rest encoded as usual, each PayloadText spliced
    in from its JSON form (made once per clip, not once per request). Any body may come here: one whose
    messages hold no PayloadText (a probe, a caller's own request) is plain JSON."""
    spliced: list[bytes] = []
    messages = []
    for message in body["messages"]:
        parts = message.get("content") if isinstance(message, dict) else None
        if isinstance(parts, list):
            message = {**message, "content": [_stand_in(part, spliced) for part in parts]}
        messages.append(message)
    text = json.dumps({**body, "messages": messages}, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    if not spliced:
        return text
    pieces = text.split(json.dumps(_STAND_IN).encode())
    if len(pieces) != len(spliced) + 1:  # only a body that already held the random stand-in could do this
        raise ValueError(f"{len(pieces) - 1} payload stand-ins in a body with {len(spliced)} payloads")
    out = [pieces[0]]
    for payload, piece in zip(spliced, pieces[1:], strict=True):
        out += [payload, piece]
    return b"".join(out)


def _stand_in(part: Any, spliced: list[bytes]) -> Any:
    """The part with its PayloadText (if it holds one) replaced by the stand-in, whose JSON goes to `spliced`."""
    kind = part.get("type") if isinstance(part, dict) else None
    value = part[kind].get(PAYLOAD_FIELD[kind]) if kind in PAYLOAD_FIELD and isinstance(part.get(kind), dict) else None
    if not isinstance(value, PayloadText):
        return part
    spliced.append(value.json)
    return {**part, kind: {**part[kind], PAYLOAD_FIELD[kind]: _STAND_IN}}


def encode_media(
    body: dict[str, Any], media: ClipMedia, codec: str, media_dir: Path | None = None
) -> dict[str, MediaPayload]:
    """canonical uuid -> payload of each media part of `body`: a data URL (or a file:// URL of an MP4
    under `media_dir`) for the video, base64 WAV for a separate audio part. Runs in a worker process."""
    parts = _media_parts(body)
    separate = any(p["type"] == "input_audio" for p in parts)
    payloads = {}
    for part in parts:
        if part["type"] == "video_url":
            if media_dir is not None:
                url, mp4 = _local_video(media_dir, part["uuid"], media, codec, separate)
            else:
                mp4 = mux_mp4(media.frames, media.frame_fps, None if separate else media.audio_flac, codec)
                url = data_url("video/mp4", mp4)
            payloads[part["uuid"]] = MediaPayload(PayloadText.of_ascii(url), media_uuid(mp4))
        else:
            wav = wav_bytes(media.audio_flac)
            payloads[part["uuid"]] = MediaPayload(PayloadText.of_ascii(pybase64.b64encode(wav)), media_uuid(wav))
    return payloads


def fill(body: dict[str, Any], payloads: dict[str, MediaPayload]) -> dict[str, Any]:
    """A copy of the canonical `body` with each media placeholder replaced by its payload and its `uuid`
    by the hash of the bytes sent (the body is not changed; only the parts on the way to the media are
    copied, so this is cheap in the event loop)."""
    messages = list(body["messages"])
    messages[1] = dict(messages[1])
    content = messages[1]["content"] = list(messages[1]["content"])
    for index, part in enumerate(content):
        kind = part["type"]
        if kind in PAYLOAD_FIELD:
            sent = payloads[part["uuid"]]
            content[index] = {**part, "uuid": sent.uuid, kind: {**part[kind], PAYLOAD_FIELD[kind]: sent.data}}
    return {**body, "messages": messages}


def materialize(body: dict[str, Any], media: ClipMedia, codec: str, media_dir: Path | None = None) -> dict[str, Any]:
    """`body` with its media filled in, for one request (a clip asked again should reuse `encode_media`'s payloads)."""
    return fill(body, encode_media(body, media, codec, media_dir))


def media_uuid(data: bytes) -> str:
    """The `uuid` of a media part: names exactly the bytes sent (see the module docstring)."""
    return hashlib.sha256(data).hexdigest()


def _local_video(media_dir: Path, uuid: str, media: ClipMedia, codec: str, separate: bool) -> tuple[str, bytes]:
    """(file:// URL, bytes) of the clip's MP4 in a shared folder: written once, so a re-ask or re-run reuses it."""
    path = media_dir / f"{uuid.replace(':', '-')}-{RECIPES[codec]}.mp4"  # the recipe: an older MJPEG file held FLAC
    if path.is_file():
        return path.resolve().as_uri(), path.read_bytes()
    mp4 = mux_mp4(media.frames, media.frame_fps, None if separate else media.audio_flac, codec)
    media_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(mp4)
    tmp.rename(path)
    return path.resolve().as_uri(), mp4


def ready() -> None:
    """Runs in a fresh media worker: importing this module has loaded PyAV, Pillow and the prompt templates."""

