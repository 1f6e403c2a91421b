"""Video and audio reading (and a small writer) with PyAV, shared by evaluation, inference and callbacks.

Frames come back as RGB ``uint8`` arrays ``(F, H, W, 3)`` in decode order (or one at a time from
:func:`iter_video`); audio as mono ``float32`` in ``[-1, 1]`` resampled by FFmpeg's resampler
(``swr``) to the requested rate, or with :func:`read_audio_track` at its own rate and channels
(what an output mp4 carries).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

__all__ = ["AudioTrack", "count_frames", "encode_audio", "iter_video", "read_audio", "read_audio_track", "read_video",
           "video_fps", "write_video"]

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
"""Sample rates the AAC encoder takes; another rate is resampled to 48 kHz."""


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

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.samples.shape[1] / self.sample_rate

    def trimmed(self, seconds: float) -> AudioTrack:
        """The first ``seconds`` (all of it when shorter)."""
        return AudioTrack(self.samples[:, : round(seconds * self.sample_rate)], self.sample_rate, self.layout)


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot open {path} as a media file: {err}") from err


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream.

    Args:
        path: video file (any container/codec FFmpeg reads) or a still image.
        max_frames: stop after this many frames (``None``: all).

    Returns:
        ``(frames, fps)``: ``uint8`` RGB ``(F, H, W, 3)`` and the stream's average frame rate
        (``0.0`` when the container does not know it, e.g. a still image).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no video stream or no decodable frame.
    """
    fps = video_fps(path)
    frames: list[np.ndarray] = []
    for frame in iter_video(path):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    return np.stack(frames), fps


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        raise ValueError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def video_fps(path: str | Path) -> float:
    """Average frame rate of the first video stream (``0.0`` when the container does not know it)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.base_rate
        return float(rate) if rate else 0.0


def iter_video(path: str | Path) -> Iterator[np.ndarray]:
    """Decode the first video stream one ``uint8`` RGB ``(H, W, 3)`` frame at a time (one frame held).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no video stream or no decodable frame.
    """
    with _open(path) as container:
        count = 0
        for frame in container.decode(_video_stream(container, path)):
            count += 1
            yield frame.to_ndarray(format="rgb24")
    if not count:
        raise ValueError(f"{path}: no decodable video frame")


def count_frames(path: str | Path) -> int:
    """Decoded frames of the first video stream (decoded, not converted: what :func:`read_video` returns)."""
    with _open(path) as container:
        count = sum(1 for _ in container.decode(_video_stream(container, path)))
    if not count:
        raise ValueError(f"{path}: no decodable video frame")
    return count


def _resampled(container: Any, resampler: av.AudioResampler, limit: int | None = None) -> Iterator[np.ndarray]:
    """Chunks ``(channels, n)`` of the first audio stream through ``resampler``, flushed at the end.

    Stops after the chunk that reaches ``limit`` samples (then without flushing: the caller trims).
    """
    total = 0
    for frame in container.decode(container.streams.audio[0]):
        for out in resampler.resample(frame):
            chunk = out.to_ndarray()
            total += chunk.shape[-1]
            yield chunk
        if limit is not None and total >= limit:
            return
    for out in resampler.resample(None):  # flush the resampler's delay line
        yield out.to_ndarray()


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
    with _open(path) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = [c.reshape(-1) for c in _resampled(container, resampler)]
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def read_audio_track(path: str | Path, max_seconds: float | None = None) -> AudioTrack:
    """Decode the first audio stream at its own rate and channels (for muxing, not for features).

    Mono stays mono; two or more channels become stereo (FFmpeg's downmix beyond two: the AAC
    encoder takes only some surround layouts). A rate the AAC encoder does not take becomes 48 kHz.

    Args:
        path: any file with an audio stream.
        max_seconds: stop decoding after this much audio (``None``: all).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no audio stream.
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or 48_000
        rate = rate if rate in AAC_RATES else 48_000
        layout = "mono" if stream.codec_context.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        limit = None if max_seconds is None else round(max_seconds * rate)
        chunks = list(_resampled(container, resampler, limit))
    channels = 1 if layout == "mono" else 2
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    track = AudioTrack(np.ascontiguousarray(samples, dtype=np.float32), rate, layout)
    return track if max_seconds is None else track.trimmed(max_seconds)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sr: int = 16_000,
    crf: int = 18,
) -> None:
    """Encode frames as H.264 (yuv420p) with optional mono AAC audio.

    Args:
        path: output file; the container follows the suffix (``.mp4``).
        frames: ``uint8`` RGB ``(F, H, W, 3)``; H and W must be even (yuv420p).
        fps: frame rate (a float such as 25 or 29.97).
        audio: mono float32 samples in ``[-1, 1]`` or ``None``.
        sr: sample rate of ``audio``.
        crf: x264 constant rate factor (lower is closer to lossless; 0 is lossless).

    Raises:
        ValueError: wrong frame dtype/shape or odd frame size.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.options = {"crf": str(crf)}
        astream = container.add_stream("aac", rate=sr, layout="mono") if audio is not None else None
        for image in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None and audio is not None:
            encode_audio(container, astream, AudioTrack(np.asarray(audio, np.float32).reshape(1, -1), sr, "mono"))


def encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, track: AudioTrack) -> None:
    """Encode and mux ``track`` into ``stream`` (an AAC stream opened with the track's rate and layout)."""
    frame_size = stream.codec_context.frame_size or 1024
    for start in range(0, track.samples.shape[1], frame_size):
        chunk = np.ascontiguousarray(track.samples[:, start : start + frame_size])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=track.layout)
        frame.sample_rate, frame.pts = track.sample_rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
