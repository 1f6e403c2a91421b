"""Streaming H.264 + AAC writer (PyAV): frames are encoded as they are decoded, never all held.

:func:`cyberhost.evaluation.io.write_video` takes every frame at once; a 60-second 640x384
generation is 1,500 frames (1.1 GB as uint8), so generation writes frame chunks as they leave
the VAE and adds the audio track (AAC, at the input's own rate and channels) when the video
ends. Optionally every frame is also saved as a PNG.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from cyberhost.evaluation.io import AudioTrack, encode_audio


class VideoWriter:
    """Write RGB frames in chunks to an mp4 (H.264 yuv420p), then mux the audio as AAC.

    Args:
        path: output ``.mp4`` (parent folders are created).
        fps: frame rate.
        size: ``(height, width)``, both even.
        audio: the track to mux (its rate and layout are kept), mono float32 samples in
            ``[-1, 1]`` at ``sample_rate``, or None.
        sample_rate: rate of ``audio`` when it is an array.
        crf: x264 constant rate factor.
        frames_dir: also write ``frame_000000.png``... here when given.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], audio: AudioTrack | np.ndarray | None = None,
                 sample_rate: int = 16_000, crf: int = 18, frames_dir: str | Path | None = None) -> None:
        height, width = size
        if height % 2 or width % 2:
            raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if audio is not None and not isinstance(audio, AudioTrack):
            audio = AudioTrack(np.asarray(audio, np.float32).reshape(1, -1), sample_rate, "mono")
        self.size, self.audio = size, audio
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        if self.frames_dir is not None:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._container = av.open(str(self.path), mode="w")
        self._video = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf)}
        self._audio = (self._container.add_stream("aac", rate=audio.sample_rate, layout=audio.layout)
                       if audio is not None else None)
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Encode ``(N, H, W, 3)`` uint8 RGB frames."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or tuple(frames.shape[1:3]) != self.size:
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
                encode_audio(self._container, self._audio, self.audio)
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
