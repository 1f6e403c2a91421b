"""Step 1b: decode frames at the target fps, by timestamp (VFR-safe), upright and downscaled.

Frames are picked by presentation time, not by count: for every target time ``k / fps``
(measured from the first decoded frame) the source frame nearest in time is taken, so variable
frame rate, dropped frames and 30/50/60 fps sources all map onto an even 25 fps grid, and audio
can be cut by the same clock. Rotation metadata (the display matrix, e.g. phone videos) is applied
so frames are stored upright. Decoding errors after the first frame end the stream early (a
truncated file gives the clips before the damage); :attr:`FrameReader.error` says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data_prep.probe import SkipInput


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
                    raise SkipInput(f"cannot decode video ({type(err).__name__}: {err})") from err
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
            raise SkipInput("video stream has no decodable frames")
        while k / self.fps <= prev_t + 1 / (2 * self.fps):  # the last frame still covers this target
            prev_img = prev_img if prev_img is not None else self._to_array(prev)
            yield k, prev_img
            k += 1
            self.frames_out = k
