"""Check a chat request the way vLLM's OpenAI server does, and measure it.

The simulator is only useful as a stand-in if what it accepts a real server accepts too, so the
refusals below copy vLLM's status codes and, where known, its exact messages (research notes:
`vllm-serving.md`, `vllm-omni-cpu.md`). Checks that vLLM skips are not added, with one exception
worth its cost: fields vLLM silently ignores since 0.12 (`guided_*`) are flagged for the request log.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import xxhash

from cotforge.sim.config import MODALITIES, SimConfig
from cotforge.sim.media import (
    MediaError,
    Visual,
    audio_tokens,
    decode_base64,
    image_tokens,
    probe_audio,
    probe_image,
    probe_jpeg_frames,
    probe_video,
    read_local,
    split_data_url,
    video_tokens,
)
from cotforge.teacher.plan import estimate_text_tokens

REMOVED_FIELDS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_whitespace_pattern",
    "guided_decoding_backend",
)
"""Removed in vLLM 0.12; since the request model allows extra fields, vLLM answers them unconstrained."""
ROLES = ("system", "user", "assistant")
PART_MODALITY = {"image_url": "image", "video_url": "video", "input_audio": "audio", "audio_url": "audio"}
PART_TYPES = ("text", *PART_MODALITY)
MAX_CHOICES = 64
"""Larger `n` is refused so that one request cannot occupy a load test."""
MESSAGE_TOKENS = 4
"""Chat-template tokens around each message (`<|im_start|>role` ... `<|im_end|>`)."""
MEDIA_MARKER_TOKENS = 2
"""Begin/end markers around each media item (`<|vision_bos|>` ... `<|vision_eos|>`)."""
GENERATION_PROMPT_TOKENS = 3
_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError", 500: "InternalServerError"}
_TRANSCRIPT = re.compile(r'(?:Transcript|台词)\s*[:：]\s*"(.*)"')


class SimError(Exception):
    """A refused request: the HTTP status and the OpenAI-style error body vLLM sends with it."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _ERROR_TYPES[self.status], "param": self.param, "code": self.status}}


class ProbeNeeded(Exception):
    """A request's media must be decoded to be checked (see `check_request`'s `probe`)."""


def invalid(message: str, param: str | None = None, value: object = None) -> SimError:
    """A 400 worded like vLLM's `VLLMValidationError`, which appends its parameter and value to the message."""
    extras = [f"{name}={item}" for name, item in (("parameter", param), ("value", value)) if item is not None]
    return SimError(400, f"{message} ({', '.join(extras)})" if extras else message, param)


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One decoded media part: what it costs and what the request log says of it (never its payload)."""

    part_type: str
    mime: str
    size: int
    tokens: int
    track_seconds: float | None = None
    """A video's own audio track, in seconds; None for other parts or a silent video."""

    def summary(self) -> dict[str, Any]:
        return {"type": self.part_type, "mime": self.mime, "bytes": self.size}


@dataclass(frozen=True, slots=True)
class MediaOptions:
    """What `mm_processor_kwargs` and `media_io_kwargs` change about loading and counting media."""

    use_audio_in_video: bool = False
    fps: float | None = None
    num_frames: int | None = None
    allowed_local_media_path: Path | None = None


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request that a vLLM server would run, with what the simulator needs to answer it."""

    n: int
    max_tokens: int | None
    structured: bool
    seeded: bool
    prompt_tokens: int
    part_types: tuple[str, ...]
    media: tuple[MediaItem, ...]
    flags: tuple[str, ...]
    transcript: str


def check_request(body: Any, cfg: SimConfig, probe: bool = True) -> CheckedRequest:
    """Refuse (SimError) what vLLM would refuse, roughly in the order vLLM checks; else measure the request.

    With `probe=False` no media is decoded: media not seen before raises ProbeNeeded (the server then runs
    the check again off its event loop), so the common case, a re-ask's known media, costs no thread."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
    if body.get("model") not in (None, cfg.model):
        raise SimError(404, f"The model `{body['model']}` does not exist.", "model")
    options = replace(_media_options(body, cfg.trust_request_mm_kwargs), allowed_local_media_path=cfg.allowed_local_media_path)
    n = _int_field(body, "n", 1, MAX_CHOICES) or 1
    max_tokens = _int_field(body, "max_completion_tokens", 1, None) or _int_field(body, "max_tokens", 1, None)
    structured = _structured(body)
    parts = _parts(body.get("messages"))
    _check_limits([part["type"] for _, part in parts], options.use_audio_in_video, cfg.limit_mm_per_prompt)
    media = tuple(_load(where, part, options, probe) for where, part in parts if part["type"] != "text")
    if options.use_audio_in_video and any(m.part_type == "video_url" and m.track_seconds is None for m in media):
        raise invalid("Video doesn't have audio track with `audio_in_video=True`")
    texts = [part["text"] for _, part in parts if part["type"] == "text"]
    prompt_tokens = _prompt_tokens(len(body["messages"]), texts, media, options.use_audio_in_video)
    _check_context(prompt_tokens, max_tokens, cfg.max_model_len)
    return CheckedRequest(
        n=n,
        max_tokens=max_tokens,
        structured=structured,
        seeded=body.get("seed") is not None,
        prompt_tokens=prompt_tokens,
        part_types=tuple(part["type"] for _, part in parts),
        media=media,
        flags=tuple(f"removed-field:{name}" for name in REMOVED_FIELDS if name in body),
        transcript=_transcript(texts),
    )


def _media_options(body: dict[str, Any], trusted: bool) -> MediaOptions:
    for name, what in (("mm_processor_kwargs", "preprocessing"), ("media_io_kwargs", "media loading")):
        if body.get(name) and not trusted:
            raise invalid(
                f"Per-request {name} are disabled by default because they can change multimodal {what} resource "
                "usage. Start the server with --trust-request-mm-kwargs only when clients are trusted.",
                param=name,
            )
    processor = _object(body, "mm_processor_kwargs")
    video_io = _object(_object(body, "media_io_kwargs"), "video", "media_io_kwargs.")
    fps, num_frames = video_io.get("fps"), video_io.get("num_frames")
    if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0):
        raise invalid("media_io_kwargs.video.fps must be a positive number", param="media_io_kwargs", value=fps)
    if num_frames is not None and (not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames == 0 or num_frames < -1):
        raise invalid("media_io_kwargs.video.num_frames must be a positive integer, or -1 for every frame",
                      param="media_io_kwargs", value=num_frames)
    return MediaOptions(bool(processor.get("use_audio_in_video", False)), fps, num_frames)


def _object(body: dict[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{prefix}{name} must be an object", param=(prefix + name).split(".")[0])
    return value


def _int_field(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise invalid(f"{name} must be an integer {bounds}", param=name, value=value)
    return value


def _structured(body: dict[str, Any]) -> bool:
    """Whether the answer is grammar-constrained JSON (else the model writes prose around it)."""
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise invalid("response_format.type must be one of text, json_object, json_schema", param="response_format", value=kind)
        if kind == "json_schema" and not isinstance(response_format.get("json_schema"), dict):
            raise invalid("response_format of type json_schema needs a json_schema object", param="response_format")
        return kind != "text"
    constraint = body.get("structured_outputs")
    if constraint is None:
        return False
    if not isinstance(constraint, dict):
        raise invalid("structured_outputs must be an object", param="structured_outputs")
    kinds = [kind for kind in _STRUCTURED_KINDS if constraint.get(kind) is not None]
    if len(kinds) != 1:
        raise invalid(
            f"You must use exactly one kind of structured outputs constraint, got {kinds or 'none'}", param="structured_outputs"
        )
    if kinds[0] not in ("json", "json_object"):
        raise invalid(f"the simulator answers JSON only; structured_outputs.{kinds[0]} is not simulated", param="structured_outputs")
    return True


def _parts(messages: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every content part, as (where, part); a string content is one text part."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list", param="messages")
    parts: list[tuple[str, dict[str, Any]]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object", param="messages")
        if message.get("role") not in ROLES:
            raise invalid(f"{where}: unknown role {message.get('role')!r}; expected one of {', '.join(ROLES)}", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            parts.append((f"{where}.content", {"type": "text", "text": content}))
        elif isinstance(content, list):
            parts.extend((f"{where}.content[{j}]", _part(f"{where}.content[{j}]", part)) for j, part in enumerate(content))
        elif not (content is None and message["role"] == "assistant"):
            raise invalid(f"{where}.content must be a string or a list of content parts", param="messages")
    return parts


def _part(where: str, part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in PART_TYPES:
        raise invalid(f"Unknown part type: {kind}" if isinstance(part, dict) else f"{where} must be an object", param="messages")
    if kind == "text":
        required = isinstance(part.get("text"), str)
    elif kind == "input_audio":
        body = part.get("input_audio")
        required = isinstance(body, dict) and isinstance(body.get("data"), str) and isinstance(body.get("format"), str)
    else:
        required = isinstance(part.get(kind), dict) and isinstance(part[kind].get("url"), str)
    if not required:
        shape = {"text": '"text": str', "input_audio": '"input_audio": {"data": str, "format": str}'}.get(kind, f'"{kind}": {{"url": str}}')
        raise invalid(f"{where}: a {kind} part needs {shape}", param="messages")
    return part


def _check_limits(part_types: list[str], use_audio_in_video: bool, limits: dict[str, int]) -> None:
    """vLLM's per-prompt media limits; with `use_audio_in_video` each video's track takes an audio slot."""
    counts = Counter(PART_MODALITY[kind] for kind in part_types if kind in PART_MODALITY)
    if use_audio_in_video:
        counts["audio"] += counts["video"]
    for modality in MODALITIES:
        limit = limits.get(modality, 999)
        if counts[modality] > limit:
            raise invalid(f"At most {limit} {modality}(s) may be provided in one prompt.", param=modality)
    if use_audio_in_video and counts["audio"] != counts["video"]:
        raise invalid(
            "use_audio_in_video requires equal number of audio and video items, "
            f"got num_audios={counts['audio']}, num_videos={counts['video']}"
        )


def _load(where: str, part: dict[str, Any], options: MediaOptions, probe: bool = True) -> MediaItem:
    kind = part["type"]
    try:
        if kind == "input_audio":
            size, seconds = _probe_inline("audio", part["input_audio"]["data"], where, probe)
            return MediaItem(kind, f"audio/{part['input_audio']['format']}", size, audio_tokens(seconds))
        url = part[kind]["url"]
        if url.startswith("file://"):
            if not probe:
                raise ProbeNeeded
            data = read_local(url, options.allowed_local_media_path, where)
            return _video_item("video/mp4", len(data), probe_video(data, where), options) if kind == "video_url" else \
                MediaItem(kind, "audio/wav", len(data), audio_tokens(probe_audio(data, where)))
        mime, payload = split_data_url(url, where)
        if kind == "video_url" and mime == "video/jpeg":
            size, video = _probe_inline("jpeg frames", payload, where, probe)
            return _video_item(mime, size, video, options)
        if kind == "video_url":
            size, video = _probe_inline("video", payload, where, probe)
            return _video_item(mime, size, video, options)
        if kind == "image_url":
            size, dims = _probe_inline("image", payload, where, probe)
            return MediaItem(kind, mime, size, image_tokens(*dims))
        size, seconds = _probe_inline("audio", payload, where, probe)
        return MediaItem(kind, mime, size, audio_tokens(seconds))
    except MediaError as exc:
        raise invalid(str(exc)) from None


_PROBES: dict[str, Callable[[bytes, str], Any]] = {
    "video": probe_video,
    "image": probe_image,
    "audio": probe_audio,
}


def _probe_inline(what: str, payload: str, where: str, probe: bool = True) -> tuple[int, Any]:
    """(decoded size, probe result) of a base64 payload. A client sends a clip's media again with each
    re-ask of it; on the 2-core machines the load tests run on, decoding and probing it again would take
    the CPU the client under test needs. So results are kept for recent payloads, keyed by a hash of the
    payload itself (its 128-bit xxh3, not its uuid): what is refused is still refused every time."""
    key = (what, xxhash.xxh3_128_digest(payload.encode()))
    with _PROBED_LOCK:
        hit = _PROBED.get(key)
        if hit is not None:
            _PROBED.move_to_end(key)
            return hit
    if not probe:
        raise ProbeNeeded
    if what == "jpeg frames":
        result: tuple[int, Any] = (len(payload) * 3 // 4, probe_jpeg_frames(payload, where))
    else:
        data = decode_base64(payload, where)
        result = (len(data), _PROBES[what](data, where))
    with _PROBED_LOCK:
        _PROBED[key] = result
        while len(_PROBED) > PROBED_KEPT:
            _PROBED.popitem(last=False)
    return result


PROBED_KEPT = 4096
"""Payloads whose probe is kept: a clip's re-asks come after the requests of every other clip in flight."""
_PROBED: OrderedDict[tuple[str, bytes], tuple[int, Any]] = OrderedDict()
_PROBED_LOCK = threading.Lock()


def _video_item(mime: str, size: int, video: Visual, options: MediaOptions) -> MediaItem:
    return MediaItem("video_url", mime, size, video_tokens(video, options.fps, options.num_frames), video.audio_seconds)


def _prompt_tokens(messages: int, texts: list[str], media: tuple[MediaItem, ...], use_audio_in_video: bool) -> int:
    tokens = messages * MESSAGE_TOKENS + GENERATION_PROMPT_TOKENS + sum(estimate_text_tokens(text) for text in texts)
    for item in media:
        tokens += item.tokens + MEDIA_MARKER_TOKENS
        if use_audio_in_video and item.track_seconds is not None:
            tokens += audio_tokens(item.track_seconds) + MEDIA_MARKER_TOKENS
    return tokens


def _check_context(prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> None:
    requested = max_tokens or 0
    # A prompt that fills the context leaves no room for even one generated token.
    if prompt_tokens + max(requested, 1) > max_model_len:
        raise invalid(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested {requested} output "
            f"tokens and your prompt contains at least {prompt_tokens} input tokens, for a total of at least "
            f"{prompt_tokens + requested} tokens. Please reduce the length of the input prompt or the number of "
            "requested output tokens.",
            param="input_tokens",
            value=prompt_tokens,
        )


def _transcript(texts: list[str]) -> str:
    """The quoted transcript of cotforge's teacher prompt (en or zh), if a text part holds one."""
    for text in texts:
        match = _TRANSCRIPT.search(text)
        if match:
            return match[1].strip()
    return ""


def completion_budget(max_tokens: int | None, prompt_tokens: int, max_model_len: int) -> int:
    """Tokens the answer may use: vLLM's default is whatever the context has left."""
    return max_tokens if max_tokens is not None else max(1, max_model_len - prompt_tokens)

