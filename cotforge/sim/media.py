"""Media the teacher simulator is sent: decode it as vLLM would, and estimate its prompt tokens.

vLLM refuses media it cannot decode, so the simulator opens every data URL too; a request that
passes here would reach the model on a real server. Token estimates follow Qwen3-Omni's processors
(research notes: `vllm-serving.md` §4) closely enough for budgets and load tests, not exactly.
"""

from __future__ import annotations

import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import av
import pybase64
from PIL import Image, UnidentifiedImageError

from cotforge.teacher.plan import QWEN3_OMNI

IMAGE_CELLS = (4, 16384)
"""Fewest and most 32-px cells of a still image (a video frame's are [128, 768]): frames sent as images
cost about twice as much as the same frames sent as a video."""
DEFAULT_FPS = 2.0

# The head of a base64 data URL; the payload is the rest. Matched on its own, not as a pattern over the
# whole URL: a clip's URL is a megabyte, and the regex walked every byte of it on every request.
_DATA_URL_HEAD = re.compile(r"data:(?P<mime>[^;,]*)(?:;[^;,]*)*?;base64,")


class MediaError(ValueError):
    """Media vLLM could not load; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Visual:
    """A decoded image or video: its frame size, and for a video its length in seconds or frames."""

    width: int
    height: int
    seconds: float = 0.0
    frames: int | None = None
    audio_seconds: float | None = None
    """Length of the video's own audio track; None when it has none."""


def split_data_url(url: str, where: str) -> tuple[str, str]:
    """(MIME type, base64 payload) of a `data:<mime>;base64,` URL."""
    match = _DATA_URL_HEAD.match(url)
    if match is None:
        scheme = url.split(":", 1)[0] if ":" in url else url[:16]
        raise MediaError(
            f"{where}: expected a data URL 'data:<mime>;base64,<payload>', got one starting {scheme!r}; "
            "the simulator fetches nothing, so send media inline"
        )
    return match["mime"], url[match.end():]


def read_local(url: str, allowed: Path | None, where: str) -> bytes:
    """A file:// media URL, read only under the allowed folder, as vLLM's --allowed-local-media-path does."""
    if allowed is None:
        raise MediaError(f"{where}: Cannot load local files without `--allowed-local-media-path`.")
    path = Path(unquote(urlparse(url).path)).resolve()
    if not path.is_relative_to(Path(allowed).resolve()):
        raise MediaError(f"{where}: The file path {path} must be a subpath of `--allowed-local-media-path` {allowed}.")
    if not path.is_file():
        raise MediaError(f"{where}: no such file {path}")
    return path.read_bytes()


def decode_base64(payload: str, where: str) -> bytes:
    try:
        # pybase64 (SIMD, the strict alphabet and padding as validate=True): the standard decoder took
        # over a millisecond per megabyte, on the cores the client under test shares in load tests
        data = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{where}: the payload is not valid base64 ({exc})") from None
    if not data:
        raise MediaError(f"{where}: the payload is empty")
    return data


def probe_video(data: bytes, where: str) -> Visual:
    """Open a video container with PyAV and decode its first frame, as vLLM's loader would."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise MediaError(f"{where}: the data holds no video stream (streams: {_stream_kinds(container)})")
            stream = container.streams.video[0]
            # One frame is all that is decoded: FFmpeg's default decoder threads would cost more to start.
            stream.codec_context.thread_count = 1
            next(container.decode(stream))
            audio = container.streams.audio[0] if container.streams.audio else None
            return Visual(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                seconds=_seconds(stream, container),
                audio_seconds=None if audio is None else _seconds(audio, container),
            )
    except StopIteration:
        raise MediaError(f"{where}: the video stream holds no decodable frame") from None
    except av.FFmpegError as exc:
        raise MediaError(f"{where}: could not load the video ({exc})") from None


def probe_jpeg_frames(payload: str, where: str) -> Visual:
    """A `data:video/jpeg;base64,<f1>,<f2>,...` video: vLLM reads it as a list of JPEG frames."""
    frames = [decode_base64(chunk, f"{where} frame {i}") for i, chunk in enumerate(payload.split(","))]
    width, height = probe_image(frames[0], where)
    return Visual(width=width, height=height, frames=len(frames))


def probe_image(data: bytes, where: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MediaError(f"{where}: could not load the image ({exc})") from None


def probe_audio(data: bytes, where: str) -> float:
    """Seconds of audio in a WAV/MP3/FLAC/... file."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise MediaError(f"{where}: the data holds no audio stream (streams: {_stream_kinds(container)})")
            return _seconds(container.streams.audio[0], container)
    except av.FFmpegError as exc:
        raise MediaError(f"{where}: could not load the audio ({exc})") from None


def _stream_kinds(container: av.container.InputContainer) -> str:
    return ", ".join(stream.type for stream in container.streams) or "none"


def _seconds(stream: av.stream.Stream, container: av.container.InputContainer) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / av.time_base


def video_tokens(video: Visual, fps: float | None, num_frames: int | None) -> int:
    """Frames sampled at `fps` (or exactly `num_frames`; -1: every frame), merged two by two in time, an odd last
    frame dropped as vLLM's processor does: groups x cells per frame (Qwen3-Omni's `smart_resize` within the video
    budget: 640x360 -> 220 a group, 1280x720 -> 720, 64x64 -> 144)."""
    if video.frames is not None:
        frames = video.frames
    elif num_frames is not None and num_frames > 0:
        frames = num_frames
    else:
        frames = max(1, round(video.seconds * (fps or DEFAULT_FPS)))
    return QWEN3_OMNI.video_tokens(frames, video.width, video.height)


def image_tokens(width: int, height: int) -> int:
    return QWEN3_OMNI.frame_cells(width, height, *IMAGE_CELLS)


def audio_tokens(seconds: float) -> int:
    return max(1, QWEN3_OMNI.audio_tokens(seconds))
