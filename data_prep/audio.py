"""Step 2: each clip's audio, cut from the track on the clock of the decoded frames.

The track is decoded by :func:`cyberhost.media.audio.read_aligned_audio`: 16 kHz mono whose sample
``n`` plays at source time ``video_start + n / 16000``, where ``video_start`` is the presentation
time of the first decoded video frame (:attr:`cyberhost.media.video.FrameReader.start_time`). Audio
that starts later than the video is padded with leading silence, audio that starts earlier is
trimmed, so frame ``k`` of a clip and audio samples ``[k * 16000 / fps, (k + 1) * 16000 / fps)``
describe the same instant.

Measured in ``tests/data_prep/test_audio.py`` on H.264 + AAC files written by PyAV, with a click
placed at a flash frame's time: the click lands 0.06 ms from the flash when audio and video
start together (mp4 at 44.1/16 kHz, mkv at 48 kHz) and when the audio starts 0.3 s early
(trimmed) or late (padded, mkv); 0.75 ms when the audio of an mp4 starts 0.3 s late (the mp4
edit list's rounding). All are below one video frame (40 ms) and below 1 ms. FFmpeg's mp4
demuxer drops the AAC encoder priming samples via the edit list, so they cause no offset.
"""

from __future__ import annotations

import numpy as np

from cyberhost.data.schema import AUDIO_SAMPLE_RATE


def clip_audio(signal: np.ndarray, start_frame: int, num_frames: int, fps: float) -> np.ndarray:
    """Audio samples of frames ``[start_frame, start_frame + num_frames)``, zero-padded past the end.

    Args:
        signal: aligned 16 kHz signal from :func:`cyberhost.media.audio.read_aligned_audio`.
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
