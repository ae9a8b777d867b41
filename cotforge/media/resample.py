"""Audio to mono 16-bit at one rate, in output frames of a fixed size: the FFmpeg filter graph PyAV's
`AudioResampler` builds (abuffer -> aformat -> abuffersink), pulled only when a whole frame can be there.

PyAV's resampler pulls after every frame it is given. With output frames of a second, the graph holds
none for most of them (a 1,024-sample AAC frame at 48 kHz makes 341 samples at 16 kHz), so nearly every
call ended in FFmpeg's EAGAIN, raised and caught: a third of the resampling's CPU in a clip's bundle.
The samples are the same, since the graph and its frame size are; only the pulls are fewer
(tests/test_media_resample.py holds them to `av.AudioResampler`'s).
"""

from __future__ import annotations

from errno import EAGAIN

import av
import av.error
import av.filter

# Output the graph may still hold back when the input says a frame is due (the resampling filter's delay).
_SLACK = 256


class MonoResampler:
    def __init__(self, rate: int, frame_size: int) -> None:
        self.rate = rate
        self.frame_size = frame_size
        self._graph: av.filter.Graph | None = None
        self._source: av.filter.FilterContext | None = None
        self._sink: av.filter.FilterContext | None = None
        self._input: tuple[str, str, int] | None = None
        self._due = 0.0  # output samples the input so far makes, less those pulled

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """The output frames ready after `frame`; None flushes the rest (the last frame may be short)."""
        if frame is None:
            if self._graph is None:
                return []
            self._source.push(None)
            return self._pull()
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._graph is None:
            self._open(frame)
            self._input = shape
        elif shape != self._input:
            raise ValueError(f"audio frame {shape} differs from the stream's first {self._input}")
        self._source.push(frame)
        self._due += frame.samples * self.rate / frame.sample_rate
        return self._pull() if self._due >= self.frame_size + _SLACK else []

    def _open(self, frame: av.AudioFrame) -> None:
        graph = av.filter.Graph()
        extra = {"time_base": str(frame.time_base)} if frame.time_base is not None else {}
        self._source = graph.add(
            "abuffer", sample_rate=str(frame.sample_rate), sample_fmt=frame.format.name, channel_layout=frame.layout.name, **extra
        )
        convert = graph.add("aformat", sample_rates=str(self.rate), sample_fmts="s16", channel_layouts="mono")
        self._sink = graph.add("abuffersink")
        self._source.link_to(convert)
        convert.link_to(self._sink)
        graph.configure()
        graph.set_audio_frame_size(self.frame_size)
        self._graph = graph

    def _pull(self) -> list[av.AudioFrame]:
        out = []
        while True:
            try:
                frame = self._sink.pull()
            except EOFError:
                break
            except av.error.FFmpegError as err:
                if err.errno != EAGAIN:
                    raise
                break
            self._due -= frame.samples
            out.append(frame)
        return out
