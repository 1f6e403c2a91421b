"""Video decoding with PyAV: probing, whole or streamed reads, fixed-rate frames, in-memory segments.

Frames come back as RGB ``uint8`` arrays ``(F, H, W, 3)`` in decode order (or one at a time from
:func:`iter_video`). :class:`FrameReader` is data prep's decoder: frames picked by presentation
time on an even ``fps`` grid (variable frame rate, dropped frames and 30/50/60 fps sources all map
onto it), turned upright by the rotation metadata and downscaled.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class MediaError(ValueError):
    """A file that is not usable media; the message says why (data prep's report reason)."""


def open_media(path: str | Path) -> av.container.InputContainer:
    """Open a media file for reading.

    Raises:
        FileNotFoundError: the file does not exist.
        MediaError: FFmpeg cannot open it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise MediaError(f"cannot open {path} as a media file: {err}") from err


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` found.

    Attributes:
        width: coded frame width (before rotation).
        height: coded frame height.
        duration: container duration in seconds (0 when unknown).
        has_audio: the file has an audio stream.
        codec: video codec name.
    """

    width: int
    height: int
    duration: float
    has_audio: bool
    codec: str


def probe_media(path: str | Path) -> MediaInfo:
    """Open a file and describe its first video stream.

    Raises:
        MediaError: unreadable, not media, no streams (damaged header) or no video stream, with
            the reason as the message.
    """
    try:
        container = av.open(str(path))
    except PermissionError as err:
        raise MediaError(f"unreadable: {err.strerror or err}") from err
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise MediaError(f"not a readable media file ({type(err).__name__}: {getattr(err, 'strerror', None) or err})") from err
    with container:
        if not container.streams:
            raise MediaError("no media streams found (damaged or missing container header)")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            raise MediaError(f"no video stream (has: {', '.join(kinds)})")
        ctx = container.streams.video[0].codec_context
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        return MediaInfo(int(ctx.width or 0), int(ctx.height or 0), duration, bool(container.streams.audio),
                         ctx.name or "?")


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


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


def video_fps(path: str | Path) -> float:
    """Average frame rate of the first video stream (``0.0`` when the container does not know it)."""
    with open_media(path) as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.base_rate
        return float(rate) if rate else 0.0


def iter_video(path: str | Path) -> Iterator[np.ndarray]:
    """Decode the first video stream one ``uint8`` RGB ``(H, W, 3)`` frame at a time (one frame held).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no video stream or no decodable frame.
    """
    with open_media(path) as container:
        count = 0
        for frame in container.decode(_video_stream(container, path)):
            count += 1
            yield frame.to_ndarray(format="rgb24")
    if not count:
        raise MediaError(f"{path}: no decodable video frame")


def count_frames(path: str | Path) -> int:
    """Decoded frames of the first video stream (decoded, not converted: what :func:`read_video` returns)."""
    with open_media(path) as container:
        count = sum(1 for _ in container.decode(_video_stream(container, path)))
    if not count:
        raise MediaError(f"{path}: no decodable video frame")
    return count


def decode_video_bytes(data: bytes, indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames of an in-memory video (a shard's ``frames.mp4``), stopping after the last one asked for.

    Args:
        data: the encoded file.
        indices: frame indices to return, in that order (any order, repeats allowed); ``None``: all.

    Returns:
        ``(len(indices), H, W, 3)`` uint8 RGB.
    """
    wanted = None if indices is None else set(indices)
    last = None if indices is None else max(indices)
    got: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if wanted is None or i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if last is not None and i >= last:
                break
    order = sorted(got) if indices is None else list(indices)
    return np.stack([got[i] for i in order])


def copy_head(src: str | Path, dst: str | Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src``'s first video and audio streams remuxed (no re-encoding) into ``dst``."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (*inp.streams.video[:1], *inp.streams.audio[:1])}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is None or packet.pts is None or float(packet.pts * packet.time_base) >= seconds:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return Path(dst)


# ----------------------------------------------------------------------------- fixed-rate frames


def output_size(width: int, height: int, max_short_side: int) -> tuple[int, int]:
    """Frame size after downscaling so the short side is at most ``max_short_side`` (even sides).

    Args:
        width: source width.
        height: source height.
        max_short_side: largest allowed short side.

    Returns:
        ``(width, height)`` before rotation.
    """
    scale = min(1.0, max_short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class FrameReader:
    """Iterate ``(index, frame)`` of a video at a fixed frame rate.

    For every target time ``k / fps`` (measured from the first decoded frame) the source frame
    nearest in time is taken, so audio can be cut by the same clock. Decoding errors after the
    first frame end the stream early (a truncated file gives the frames before the damage);
    :attr:`error` says why.

    Args:
        path: the video.
        fps: target frame rate.
        max_short_side: downscale frames whose short side is larger.

    Attributes:
        start_time: presentation time (s) of the first decoded frame; frame ``k`` shows time
            ``start_time + k / fps`` of the source, which is what audio is aligned to.
        rotation: degrees the frames were turned to be upright (counter-clockwise).
        error: why decoding stopped early, or ``None``.
        source_frames: frames decoded from the file.

    Raises:
        MediaError: while iterating, when not even the first frame decodes.
    """

    def __init__(self, path: Path, fps: float, max_short_side: int) -> None:
        self.path, self.fps, self.max_short_side = path, Fraction(fps).limit_denominator(1001), max_short_side
        self.start_time: float | None = None
        self.rotation = 0
        self.error: str | None = None
        self.source_frames = 0
        self.size: tuple[int, int] | None = None
        self.frames_out = 0

    def _decoded(self) -> Iterator[tuple[Fraction, av.VideoFrame]]:
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base or Fraction(1, 1000)
            rate = stream.average_rate or stream.guessed_rate or self.fps
            last: Fraction | None = None
            try:
                for frame in container.decode(stream):
                    if frame.pts is not None:
                        t = Fraction(frame.pts) * tb
                    else:
                        t = Fraction(0) if last is None else last + 1 / Fraction(rate)
                    if last is not None and t <= last:  # non-monotonic or duplicated stamps
                        continue
                    last = t
                    self.source_frames += 1
                    yield t, frame
            except (av.FFmpegError, OSError, ValueError) as err:
                if self.source_frames == 0:
                    raise MediaError(f"cannot decode video ({type(err).__name__}: {err})") from err
                self.error = f"decoding stopped after {float(last - self._t0):.2f} s ({type(err).__name__})"

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:  # fixed by the first frame, so a mid-stream size change cannot break a clip
            self.size = output_size(frame.width, frame.height, self.max_short_side)
        w, h = self.size
        img = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
        k = round((frame.rotation or 0) / 90) % 4
        self.rotation = 90 * k
        return np.ascontiguousarray(np.rot90(img, k)) if k else img

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(k, frame)`` for target times ``k / fps``, frames RGB uint8 ``(H, W, 3)``."""
        k, prev, prev_t, prev_img = 0, None, Fraction(0), None
        self._t0 = Fraction(0)
        for t, frame in self._decoded():
            if prev is None:
                self._t0, self.start_time = t, float(t)
            t = t - self._t0
            img = None
            while k / self.fps <= t:
                target = k / self.fps
                if prev is not None and target - prev_t < t - target:
                    prev_img = prev_img if prev_img is not None else self._to_array(prev)
                    yield k, prev_img
                else:
                    img = img if img is not None else self._to_array(frame)
                    yield k, img
                k += 1
            prev, prev_t, prev_img = frame, t, img
        self.frames_out = k
        if prev is None:
            raise MediaError("video stream has no decodable frames")
        while k / self.fps <= prev_t + 1 / (2 * self.fps):  # the last frame still covers this target
            prev_img = prev_img if prev_img is not None else self._to_array(prev)
            yield k, prev_img
            k += 1
            self.frames_out = k


__all__ = [
    "FrameReader", "MediaError", "MediaInfo", "copy_head", "count_frames", "decode_video_bytes", "iter_video",
    "open_media", "output_size", "probe_media", "read_video", "video_fps",
]  # fmt: skip
