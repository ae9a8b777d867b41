"""Turn a bundle's frames and audio into what the teacher request carries.

The default is one small MP4 that holds the sampled frames at their sampling rate and the audio
track, sent as a `video_url` data URL with `use_audio_in_video`: the teacher then sees exactly the
bundle, time-aligned, instead of vLLM re-sampling 32 frames uniformly. This runs in worker
processes, never in the event loop, once per clip (its re-asks reuse the bytes): MJPEG, the default,
copies the bundle's JPEGs and costs a few ms; x264 and AAC cost tens.
"""

from __future__ import annotations

import contextlib
import io
from fractions import Fraction

import av
import numpy as np
import pybase64
from PIL import Image

from cotforge.media.encode import flac_to_pcm


def container_rate(fps: float) -> Fraction:
    """The frame rate mux_mp4 writes into the MP4 (what a server's video loader reads back)."""
    return Fraction(fps).limit_denominator(1000) if fps > 0 else Fraction(1)


# What each `teacher.video_codec` puts in the MP4; part of a request's cache key, so that answers given to
# other media are not reused. MJPEG once carried the bundle's FLAC, which vLLM's PyAV audio loader hands
# to the model unscaled (int16 values as floats, 32768 times too loud: tests/test_vllm_cpu.py); float PCM
# is read as the same samples in [-1, 1] that AAC decodes to.
RECIPES = {"h264": "h264", "mjpeg": "mjpeg-pcm_f32le"}


def mux_mp4(frames: list[bytes], fps: float, audio_flac: bytes | None, codec: str = "mjpeg") -> bytes:
    """JPEG frames (+ FLAC audio) -> MP4 bytes. MJPEG copies the bundle's JPEG packets as they are and
    stores the audio as 32-bit float PCM (no encoding at all: a few ms a clip); H.264/AAC encodes both
    (about ten times the CPU, and a lossy second generation of the frames and audio)."""
    buf = io.BytesIO()
    rate = container_rate(fps)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(av.open(buf, "w", format="mp4"))
        if frames:
            first = Image.open(io.BytesIO(frames[0]))
            if codec == "mjpeg":
                video = out.add_stream("mjpeg", rate=rate)
                video.pix_fmt = "yuvj420p"
            else:
                video = out.add_stream("libx264", rate=rate)
                video.pix_fmt = "yuv420p"
                video.options = {"preset": "ultrafast", "crf": "23"}
            video.width, video.height = first.size
            video.codec_context.thread_count = 1
        audio = None
        pcm = None
        if audio_flac:
            pcm, sample_rate = flac_to_pcm(audio_flac)
            if codec == "mjpeg":
                audio = out.add_stream("pcm_f32le", rate=sample_rate)
            else:
                # FFmpeg's default AAC coder (twoloop) costs 3x the fast one, which is no worse on 16 kHz speech.
                audio = out.add_stream("aac", rate=sample_rate, options={"aac_coder": "fast"})
            audio.layout = "mono"
        if frames:
            if codec == "mjpeg":
                for index, data in enumerate(frames):
                    packet = av.Packet(data)
                    packet.stream = video
                    packet.time_base = Fraction(1) / rate
                    packet.pts = packet.dts = index
                    packet.duration = 1
                    packet.is_keyframe = True
                    out.mux(packet)
            else:
                for index, data in enumerate(frames):
                    frame = av.VideoFrame.from_image(Image.open(io.BytesIO(data)).convert("RGB"))
                    frame.pts = index
                    frame.time_base = Fraction(1) / rate
                    out.mux(video.encode(frame))
                out.mux(video.encode(None))
        if audio is not None and pcm is not None and len(pcm):
            _encode_audio(out, audio, pcm)
    return buf.getvalue()


def _encode_audio(out: av.container.OutputContainer, stream: av.AudioStream, pcm: np.ndarray) -> None:
    rate = stream.rate
    if stream.codec_context.name == "pcm_f32le":
        # int16 / 32768 is exact in float32: the samples are the bundle's, in one frame
        step, pcm, fmt = len(pcm), pcm.astype(np.float32) / 32768, "flt"
    else:
        step, fmt = stream.codec_context.frame_size or 4096, "s16"
    for offset in range(0, len(pcm), step):
        chunk = np.ascontiguousarray(pcm[offset : offset + step].reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = offset
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def wav_bytes(audio_flac: bytes) -> bytes:
    """FLAC -> WAV for the fallback `input_audio` part (OpenAI's audio formats are wav and mp3)."""
    import soundfile as sf

    pcm, rate = flac_to_pcm(audio_flac)
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def data_url(mime: str, data: bytes) -> bytes:
    """A base64 data URL as ASCII bytes (see `request.PayloadText.of_ascii`). pybase64 (SIMD): the standard
    encoder took about a millisecond of a media worker per megabyte, once per clip."""
    return b"".join((b"data:", mime.encode("ascii"), b";base64,", pybase64.b64encode(data)))
