"""Audio decoding and resampling with PyAV (FFmpeg's ``swr`` resampler).

Three readers of the first audio stream, over one resampling loop:

* :func:`read_audio` - mono ``float32`` at a chosen rate: what networks and metrics hear;
* :func:`read_aligned_audio` - 16 kHz mono on the clock of a video's first frame (data prep: sample
  ``n`` plays at source time ``video_start + n / 16000``; leading audio is trimmed, a late start
  padded with silence) and tolerant of a damaged stream;
* :class:`AudioFileTrack` / :func:`read_audio_track` - the track at its own rate and channels,
  what an output mp4 carries (:class:`~cyberhost.media.writer.VideoWriter` re-encodes it as AAC).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from cyberhost.media.video import open_media

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
"""Sample rates the AAC encoder takes; another rate is resampled to 48 kHz."""
MEDIA_ERRORS = (av.FFmpegError, OSError, ValueError)
"""What a damaged stream raises while decoding."""


@dataclass
class AudioTrack:
    """Audio at its own sample rate and channel layout, ready to encode.

    Attributes:
        samples: ``float32`` ``(C, S)`` in ``[-1, 1]``, planar.
        sample_rate: Hz.
        layout: ``"mono"`` or ``"stereo"``.
    """

    samples: np.ndarray
    sample_rate: int
    layout: str

    @classmethod
    def mono(cls, samples: np.ndarray, sample_rate: int) -> AudioTrack:
        """A mono track of ``(S,)`` samples."""
        return cls(np.asarray(samples, np.float32).reshape(1, -1), sample_rate, "mono")

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.samples.shape[1] / self.sample_rate

    def trimmed(self, seconds: float) -> AudioTrack:
        """The first ``seconds`` (all of it when shorter)."""
        return AudioTrack(self.samples[:, : round(seconds * self.sample_rate)], self.sample_rate, self.layout)

    def chunks(self) -> Iterator[np.ndarray]:
        """The samples as ``(C, n)`` chunks (what :class:`AudioFileTrack` streams)."""
        yield self.samples

    def resampled(self, rate: int, layout: str) -> AudioTrack:
        """This track at another rate and channel layout (FFmpeg's resampler, flushed)."""
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        source = av.AudioFrame.from_ndarray(np.ascontiguousarray(self.samples, np.float32), format="fltp",
                                            layout=self.layout)
        source.sample_rate, source.time_base = self.sample_rate, Fraction(1, self.sample_rate)
        chunks = [f.to_ndarray() for f in [*resampler.resample(source), *resampler.resample(None)]]
        return AudioTrack(np.ascontiguousarray(np.concatenate(chunks, axis=1), np.float32), rate, layout)


def _resampled(container: Any, resampler: av.AudioResampler, limit: int | None = None) -> Iterator[av.AudioFrame]:
    """Frames of the first audio stream through ``resampler``, flushed at the end.

    Stops after the frame that reaches ``limit`` samples (then without flushing: the caller trims).
    """
    total = 0
    for frame in container.decode(container.streams.audio[0]):
        for out in resampler.resample(frame):
            total += out.samples
            yield out
        if limit is not None and total >= limit:
            return
    yield from resampler.resample(None)  # flush the resampler's delay line


def _audio_container(path: str | Path) -> Any:
    container = open_media(path)
    if not container.streams.audio:
        container.close()
        raise ValueError(f"{path}: no audio stream")
    return container


def read_audio(path: str | Path, sr: int = 16_000) -> np.ndarray:
    """Decode the first audio stream as mono float32 at ``sr`` Hz.

    Args:
        path: any file with an audio stream (wav, mp3, m4a, the audio track of an mp4, ...).
        sr: output sample rate.

    Returns:
        ``float32`` ``(S,)`` in ``[-1, 1]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no audio stream.
    """
    with _audio_container(path) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = [f.to_ndarray().reshape(-1) for f in _resampled(container, resampler)]
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def read_aligned_audio(path: str | Path, video_start: float, sr: int = 16_000) -> tuple[np.ndarray, str | None]:
    """Mono float32 at ``sr`` Hz on the clock of the video: sample 0 plays at ``video_start``.

    Args:
        path: the media file.
        video_start: presentation time (s) of the first decoded video frame.
        sr: output sample rate.

    Returns:
        ``(signal, error)``: the aligned signal (empty when there is no audio stream), and why
        decoding stopped early (``None`` when it did not; what was decoded before is kept).
    """
    chunks: list[np.ndarray] = []
    first: float | None = None
    error = None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return np.zeros(0, np.float32), None
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                if first is None:
                    first = float(Fraction(frame.pts) * frame.time_base) if frame.pts is not None else video_start
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        except MEDIA_ERRORS as err:
            error = f"audio decoding stopped ({type(err).__name__})"
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    signal = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = round(((first if first is not None else video_start) - video_start) * sr)
    if shift > 0:
        signal = np.concatenate([np.zeros(shift, np.float32), signal])
    elif shift < 0:
        signal = signal[-shift:]
    return signal, error


class AudioFileTrack:
    """The first audio stream of a file at its own rate and channels, decoded as it is encoded (never all held).

    Mono stays mono; two or more channels become stereo (FFmpeg's downmix beyond two: the AAC
    encoder takes only some surround layouts). A rate the AAC encoder does not take becomes 48 kHz.

    Args:
        path: any file with an audio stream.
        max_seconds: the track ends after this much audio (``None``: all).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no audio stream.
    """

    def __init__(self, path: str | Path, max_seconds: float | None = None) -> None:
        with _audio_container(path) as container:
            ctx = container.streams.audio[0].codec_context
            rate = ctx.sample_rate or 48_000
            self.sample_rate = rate if rate in AAC_RATES else 48_000
            self.layout = "mono" if ctx.channels == 1 else "stereo"
        self.path, self.max_seconds = Path(path), max_seconds

    def chunks(self) -> Iterator[np.ndarray]:
        """Planar ``float32`` ``(C, n)`` chunks in order, cut at ``max_seconds``."""
        limit = None if self.max_seconds is None else round(self.max_seconds * self.sample_rate)
        left = limit
        with _audio_container(self.path) as container:
            resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.sample_rate)
            for frame in _resampled(container, resampler, limit):
                chunk = frame.to_ndarray()
                if left is not None:
                    chunk, left = chunk[:, :left], left - min(left, chunk.shape[1])
                if chunk.shape[1]:
                    yield np.ascontiguousarray(chunk, dtype=np.float32)

    def read(self) -> AudioTrack:
        """The whole track in memory."""
        channels = 1 if self.layout == "mono" else 2
        chunks = list(self.chunks())
        samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
        return AudioTrack(np.ascontiguousarray(samples, dtype=np.float32), self.sample_rate, self.layout)


def read_audio_track(path: str | Path, max_seconds: float | None = None) -> AudioTrack:
    """The first audio stream at its own rate and channels, in memory (:class:`AudioFileTrack`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no audio stream.
    """
    return AudioFileTrack(path, max_seconds).read()


__all__ = ["AAC_RATES", "AudioFileTrack", "AudioTrack", "read_aligned_audio", "read_audio", "read_audio_track"]
