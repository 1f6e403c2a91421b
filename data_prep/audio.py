"""Step 2: the audio track as 16 kHz mono float32, on the same clock as the decoded frames.

Alignment rule: sample ``n`` of the returned signal plays at source time
``video_start + n / 16000``, where ``video_start`` is the presentation time of the first decoded
video frame (:attr:`data_prep.video.FrameReader.start_time`). Audio that starts later than the
video is padded with leading silence, audio that starts earlier is trimmed, so frame ``k`` of a
clip and audio samples ``[k * 16000 / fps, (k + 1) * 16000 / fps)`` describe the same instant.

Measured in ``tests/data_prep/test_audio.py`` on H.264 + AAC files written by PyAV, with a click
placed at a flash frame's time: the click lands 0.06 ms from the flash when audio and video
start together (mp4 at 44.1/16 kHz, mkv at 48 kHz) and when the audio starts 0.3 s early
(trimmed) or late (padded, mkv); 0.75 ms when the audio of an mp4 starts 0.3 s late (the mp4
edit list's rounding). All are below one video frame (40 ms) and below 1 ms. FFmpeg's mp4
demuxer drops the AAC encoder priming samples via the edit list, so they cause no offset.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cyberhost.data.schema import AUDIO_SAMPLE_RATE


def load_audio(path: Path, video_start: float) -> tuple[np.ndarray, str | None]:
    """Decode, downmix and resample the first audio stream, aligned to the video clock.

    Args:
        path: the media file.
        video_start: presentation time (s) of the first decoded video frame.

    Returns:
        ``(signal, error)``: float32 mono at 16 kHz (empty when there is no audio stream), and why
        decoding stopped early (``None`` when it did not).
    """
    chunks: list[np.ndarray] = []
    first: float | None = None
    error = None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return np.zeros(0, np.float32), None
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                if first is None:
                    first = float(Fraction(frame.pts) * frame.time_base) if frame.pts is not None else video_start
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        except (av.FFmpegError, OSError, ValueError) as err:
            error = f"audio decoding stopped ({type(err).__name__})"
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    signal = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = round(((first if first is not None else video_start) - video_start) * AUDIO_SAMPLE_RATE)
    if shift > 0:
        signal = np.concatenate([np.zeros(shift, np.float32), signal])
    elif shift < 0:
        signal = signal[-shift:]
    return signal, error


def clip_audio(signal: np.ndarray, start_frame: int, num_frames: int, fps: float) -> np.ndarray:
    """Audio samples of frames ``[start_frame, start_frame + num_frames)``, zero-padded past the end.

    Args:
        signal: aligned 16 kHz signal from :func:`load_audio`.
        start_frame: first frame of the clip.
        num_frames: clip length in frames.
        fps: frame rate.

    Returns:
        ``round(num_frames / fps * 16000)`` float32 samples.
    """
    a0 = round(start_frame / fps * AUDIO_SAMPLE_RATE)
    n = round(num_frames / fps * AUDIO_SAMPLE_RATE)
    out = signal[a0 : a0 + n]
    if len(out) < n:
        out = np.concatenate([out, np.zeros(n - len(out), np.float32)])
    return out
