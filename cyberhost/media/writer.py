"""The one H.264 + AAC writer (PyAV): frames are encoded as they come, never all held.

Every mp4 the project writes goes through :class:`VideoWriter`: generated videos (chunks of
frames as they leave the VAE), evaluation fixtures (:func:`write_video`), training sample
videos, shard segments in memory (:func:`encode_video_bytes`) and the committed sample videos.
Video is H.264 ``yuv420p`` (x264 options per caller: quality, preset, GOP); the audio track, when
there is one, is encoded as AAC at its own rate and channels after the last frame, read chunk by
chunk from its source (an :class:`~cyberhost.media.audio.AudioFileTrack` is decoded only then),
with each AAC frame stamped by its first sample so the mp4 edit list removes the encoder's
priming samples and audio starts with the first frame.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import av
import cv2
import numpy as np

from cyberhost.media.audio import AudioTrack


class AudioSource(Protocol):
    """An audio track to encode: its rate, layout and planar ``float32`` chunks (``AudioTrack``, ``AudioFileTrack``)."""

    sample_rate: int
    layout: str

    def chunks(self) -> Iterator[np.ndarray]:
        """``(C, n)`` chunks in order."""
        ...


class VideoWriter:
    """Write RGB frames in chunks to an mp4 (H.264 yuv420p), then the audio as AAC.

    Args:
        target: output file (parent folders are created) or a writable binary file object.
        fps: frame rate (a float such as 25 or 29.97).
        size: ``(height, width)``, both even.
        audio: the track to mux (its rate and layout are kept), or None.
        crf: x264 constant rate factor (lower is closer to lossless; 0 is lossless); None = x264's default.
        options: more x264/codec options (``{"preset": "slow", "threads": "1", "g": "8"}``).
        audio_bit_rate: AAC bit rate; None = the encoder's default.
        container_format: FFmpeg muxer name; None = from the file suffix (needed for file objects).
        frames_dir: also write ``frame_000000.png``... here when given.

    Raises:
        ValueError: an odd frame size.
    """

    def __init__(self, target: str | Path | IO[bytes], fps: float, size: tuple[int, int],
                 audio: AudioSource | None = None, *, crf: int | None = 18, options: Mapping[str, str] | None = None,
                 audio_bit_rate: int | None = None, container_format: str | None = None,
                 frames_dir: str | Path | None = None) -> None:
        height, width = size
        if height % 2 or width % 2:
            raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
        if isinstance(target, str | Path):
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            target = str(target)
        self.size, self.audio = size, audio
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        if self.frames_dir is not None:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._container = av.open(target, mode="w", format=container_format)
        self._video = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {**({"crf": str(crf)} if crf is not None else {}), **(options or {})}
        self._audio = None
        if audio is not None:
            self._audio = self._container.add_stream("aac", rate=audio.sample_rate, layout=audio.layout)
            if audio_bit_rate is not None:
                self._audio.bit_rate = audio_bit_rate
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Encode ``(N, H, W, 3)`` uint8 RGB frames."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or tuple(frames.shape[1:3]) != self.size or frames.shape[3] != 3:
            raise ValueError(f"frames must be uint8 (N, {self.size[0]}, {self.size[1]}, 3), got {frames.dtype} {frames.shape}")
        for image in frames:
            for packet in self._video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                self._container.mux(packet)
            if self.frames_dir is not None:
                cv2.imwrite(str(self.frames_dir / f"frame_{self.count:06d}.png"), image[..., ::-1])
            self.count += 1

    def close(self) -> None:
        """Flush the video encoder, encode the audio, close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._video.encode():
                self._container.mux(packet)
            if self._audio is not None and self.audio is not None:
                self._encode_audio(self.audio)
        finally:
            self._container.close()

    def _encode_audio(self, track: AudioSource) -> None:
        """AAC frames of ``frame_size`` samples, each stamped with its first sample's index."""
        size = self._audio.codec_context.frame_size or 1024
        pending, start = np.zeros((1 if track.layout == "mono" else 2, 0), np.float32), 0
        for chunk in track.chunks():
            pending = np.concatenate([pending, chunk], axis=1) if pending.shape[1] else chunk
            full = pending.shape[1] // size * size
            for i in range(0, full, size):
                self._encode_frame(pending[:, i : i + size], start, track)
                start += size
            pending = pending[:, full:]
        if pending.shape[1]:
            self._encode_frame(pending, start, track)
        for packet in self._audio.encode():
            self._container.mux(packet)

    def _encode_frame(self, samples: np.ndarray, pts: int, track: AudioSource) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=track.layout)
        frame.sample_rate, frame.pts = track.sample_rate, pts
        for packet in self._audio.encode(frame):
            self._container.mux(packet)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")


def write_video(path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray | AudioSource | None = None,
                sr: int = 16_000, crf: int | None = 18) -> None:
    """Encode frames held in memory as H.264 (yuv420p) with optional AAC audio (:class:`VideoWriter`).

    Args:
        path: output file; the container follows the suffix (``.mp4``).
        frames: ``uint8`` RGB ``(F, H, W, 3)``; H and W must be even (yuv420p).
        fps: frame rate.
        audio: mono float32 samples in ``[-1, 1]`` at ``sr``, a track, or ``None``.
        sr: sample rate of ``audio`` when it is an array.
        crf: x264 constant rate factor (0 is lossless; None = x264's default).

    Raises:
        ValueError: wrong frame dtype/shape or odd frame size.
    """
    _check_frames(frames)
    track = AudioTrack.mono(audio, sr) if isinstance(audio, np.ndarray) else audio
    with VideoWriter(path, fps, frames.shape[1:3], track, crf=crf) as writer:
        writer.write(frames)


def even_crop(frames: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` cut to even H and W (what yuv420p takes)."""
    return frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]


def encode_video_bytes(frames: np.ndarray, fps: float, crf: int, options: Mapping[str, str] | None = None) -> bytes:
    """An in-memory mp4 of ``(F, H, W, 3)`` uint8 frames (sides cut to even sizes), no audio."""
    _check_frames(frames)
    frames = even_crop(frames)
    buf = io.BytesIO()
    with VideoWriter(buf, fps, frames.shape[1:3], crf=crf, options=options, container_format="mp4") as writer:
        writer.write(frames)
    return buf.getvalue()


__all__ = ["AudioSource", "VideoWriter", "encode_video_bytes", "even_crop", "write_video"]
