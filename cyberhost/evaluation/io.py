"""Video and audio reading (and a small writer) with PyAV, shared by evaluation, inference and callbacks.

Frames come back as RGB ``uint8`` arrays ``(F, H, W, 3)`` in decode order; audio as mono
``float32`` in ``[-1, 1]`` resampled by FFmpeg's resampler (``swr``) to the requested rate.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["read_audio", "read_video", "write_video"]


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
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames: list[np.ndarray] = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no decodable video frame")
    return np.stack(frames), fps


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
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


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
            _encode_audio(container, astream, np.asarray(audio, dtype=np.float32), sr)


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray, sr: int) -> None:
    frame_size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, len(audio), frame_size):
        chunk = np.ascontiguousarray(audio[start : start + frame_size].reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate, frame.pts = sr, pts
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
