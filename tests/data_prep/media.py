"""Write small test videos with PyAV: chosen frames, timestamps, rotation, audio, container.

These are the odd inputs data prep must survive (variable frame rate, display rotation, audio
that starts before the video, other codecs and containers, audio-only files), which the
project's own writer, :class:`cyberhost.media.VideoWriter`, never makes; written here with PyAV
directly, they are also made independently of the code under test.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLES = Path(__file__).resolve().parents[2] / "data_prep" / "samples"


def sample_frames(name: str = "grace_hopper", count: int = 50) -> np.ndarray:
    """The first ``count`` RGB frames of a committed sample video."""
    with av.open(str(SAMPLES / f"{name}.mp4")) as c:
        frames = []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


def tone(seconds: float, rate: int = 44_100, freq: float = 220.0) -> np.ndarray:
    """A quiet sine, float32 mono."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_video(
    path: Path,
    frames: np.ndarray | None,
    audio: np.ndarray | None = None,
    audio_rate: int = 44_100,
    fps: int = 25,
    pts: list[int] | None = None,
    rotation: int | None = None,
    codec: str = "libx264",
    audio_start: float = 0.0,
) -> Path:
    """Encode ``frames`` (RGB uint8) and/or mono ``audio`` into ``path`` (container from the suffix).

    Args:
        pts: per-frame timestamps in units of 1/1000 s (variable frame rate), default ``k / fps``.
        rotation: display-matrix rotation in degrees (as phones write it).
        audio_start: presentation time (s) of the first audio sample; with ``pts`` starting above 0
            this writes audio that starts before the video.
    """
    fmt = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov"}[path.suffix]
    with av.open(str(path), "w", format=fmt) as c:
        a = c.add_stream("aac", rate=audio_rate, layout="mono") if audio is not None else None
        v = c.add_stream(codec, rate=fps) if frames is not None else None
        if v is not None:
            v.height, v.width = frames.shape[1:3]
            v.pix_fmt = "yuv420p"
            v.options = {"threads": "1"}
            if pts is not None:
                v.codec_context.time_base = Fraction(1, 1000)
            if rotation is not None:
                v.set_display_rotation(rotation)
        if a is not None:
            frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = audio_rate, round(audio_start * audio_rate), Fraction(1, audio_rate)
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=audio_rate)
            for f in [*resampler.resample(frame), *resampler.resample(None)]:
                c.mux(a.encode(f))
            c.mux(a.encode(None))
        if v is not None:
            for i, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                if pts is not None:
                    vf.pts, vf.time_base = pts[i], Fraction(1, 1000)
                c.mux(v.encode(vf))
            c.mux(v.encode(None))
    return path
