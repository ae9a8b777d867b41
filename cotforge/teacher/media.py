"""Turn a bundle's frames and audio into what the teacher request carries.

The default is one small MP4 that holds the sampled frames at their sampling rate and the audio
track, sent as a `video_url` data URL with `use_audio_in_video`: the teacher then sees exactly the
bundle, time-aligned, instead of vLLM re-sampling 32 frames uniformly. This runs in worker
processes (x264 and AAC cost tens of ms per clip), never in the event loop, once per clip.
"""

from __future__ import annotations

import base64
import contextlib
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
    """JPEG frames (+ FLAC audio) -> MP4 bytes: H.264/AAC by default, or MJPEG/FLAC, which copies the
    bundle's JPEG and FLAC packets as they are (no encoding at all: about a ms a clip, against tens)."""
    buf = io.BytesIO()
    rate = container_rate(fps)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(av.open(buf, "w", format="mp4"))
        flac = stack.enter_context(av.open(io.BytesIO(audio_flac), format="flac")) if audio_flac and codec == "mjpeg" else None
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
        if flac is not None:
            audio = out.add_stream_from_template(flac.streams.audio[0])
        elif audio_flac:
            pcm, sample_rate = flac_to_pcm(audio_flac)
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
        if flac is not None:
            for packet in flac.demux(flac.streams.audio[0]):
                if packet.size:
                    packet.stream = audio
                    out.mux(packet)
        elif audio is not None and pcm is not None and len(pcm):
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
