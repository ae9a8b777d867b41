"""Turn a bundle's frames and audio into what the teacher request carries.

The default is one small MP4 that holds the sampled frames at their sampling rate and the audio
track, sent as a `video_url` data URL with `use_audio_in_video`: the teacher then sees exactly the
bundle, time-aligned, instead of vLLM re-sampling 32 frames uniformly. This runs in worker
processes (x264 costs tens of ms per clip), never in the event loop.
"""

from __future__ import annotations

import base64
import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from cotforge.media.encode import flac_to_pcm


def container_rate(fps: float) -> Fraction:
    """The frame rate mux_mp4 writes into the MP4 (what a server's video loader reads back)."""
    return Fraction(fps).limit_denominator(1000) if fps > 0 else Fraction(1)


def mux_mp4(frames: list[bytes], fps: float, audio_flac: bytes | None, codec: str = "h264") -> bytes:
    """JPEG frames (+ FLAC audio) -> MP4 bytes: H.264/AAC by default, or MJPEG/FLAC (10x cheaper to make)."""
    buf = io.BytesIO()
    rate = container_rate(fps)
    with av.open(buf, "w", format="mp4") as out:
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
            audio = out.add_stream("aac" if codec != "mjpeg" else "flac", rate=sample_rate)
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
    step = stream.codec_context.frame_size or 4096
    for offset in range(0, len(pcm), step):
        chunk = np.ascontiguousarray(pcm[offset : offset + step].reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
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


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
