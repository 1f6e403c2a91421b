"""Audio alignment measured with a flash frame and a click, including audio that starts late or early."""

from __future__ import annotations

import numpy as np
import pytest

from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.media.audio import read_aligned_audio
from cyberhost.media.video import FrameReader
from data_prep.audio import clip_audio
from tests.data_prep.media import write_video

FLASH = 30  # the white frame of every test video: video time 1.2 s at 25 fps


def _click(audio: np.ndarray, at: float, rate: int) -> None:
    i0, n = round(at * rate), rate // 100
    audio[i0 : i0 + n] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / rate)


def _flash_video() -> np.ndarray:
    frames = np.full((50, 64, 64, 3), 20, np.uint8)
    frames[FLASH] = 255
    return frames


def _measure(path):
    reader = FrameReader(path, 25, 512)
    flash = int(np.argmax([f.mean() for _, f in reader]))
    signal, error = read_aligned_audio(path, reader.start_time)
    onsets = np.flatnonzero(np.abs(signal) > 0.05)
    return reader, flash, signal, error, onsets


@pytest.mark.parametrize(("rate", "suffix"), [(44_100, ".mp4"), (48_000, ".mkv"), (16_000, ".mp4")])
def test_audio_is_aligned_to_frames(tmp_path, rate, suffix):
    """A click written at the flash frame's time must land within 1 ms of it (measured: 0.06 ms)."""
    audio = np.zeros(2 * rate, np.float32)
    _click(audio, FLASH / 25, rate)
    path = write_video(tmp_path / f"sync{suffix}", _flash_video(), audio, audio_rate=rate)
    _, flash, signal, error, onsets = _measure(path)
    assert flash == FLASH and error is None
    assert abs(onsets[0] / AUDIO_SAMPLE_RATE - flash / 25) < 1e-3
    assert abs(len(signal) / AUDIO_SAMPLE_RATE - 2.0) < 0.06  # AAC pads at most one frame


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_starting_late_is_padded_with_silence(tmp_path, suffix):
    """Audio stream starting 0.3 s after the first video frame: 0.3 s of leading zeros, click still on the flash."""
    rate = 44_100
    audio = np.zeros(2 * rate, np.float32)
    _click(audio, FLASH / 25 - 0.3, rate)  # the flash's source time, on the audio stream's own clock
    path = write_video(tmp_path / f"late{suffix}", _flash_video(), audio, audio_rate=rate, audio_start=0.3)
    reader, flash, signal, error, onsets = _measure(path)
    assert reader.start_time == 0.0 and flash == FLASH and error is None
    assert abs(onsets[0] / AUDIO_SAMPLE_RATE - flash / 25) < 1e-3  # measured: 0.75 ms (.mp4 edit list), 0.06 ms (.mkv)
    lead = round(0.29 * AUDIO_SAMPLE_RATE)  # AAC priming may shift the stream start by < 1 ms
    assert not signal[:lead].any()
    assert abs(len(signal) / AUDIO_SAMPLE_RATE - 2.3) < 0.06
    # and the clip cut by frame index carries the click's energy in the flash frame's slot
    clip = clip_audio(signal, 25, 25, 25.0)  # frames 25..49, the flash is frame 5 of the clip
    assert int(np.argmax(np.abs(clip).reshape(25, -1).sum(axis=1))) == FLASH - 25


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_starting_early_is_trimmed(tmp_path, suffix):
    """Video starting 0.3 s after the audio: the first 0.3 s of audio (and a click in it) are cut off."""
    rate = 44_100
    audio = np.zeros(2 * rate, np.float32)
    _click(audio, 0.1, rate)  # before the first video frame: must not survive
    _click(audio, 0.3 + FLASH / 25, rate)  # the flash's source time
    pts = [300 + 40 * k for k in range(50)]  # video presentation times, ms
    path = write_video(tmp_path / f"early{suffix}", _flash_video(), audio, audio_rate=rate, pts=pts)
    reader, flash, signal, error, onsets = _measure(path)
    assert reader.start_time == pytest.approx(0.3) and flash == FLASH and error is None
    assert abs(onsets[0] / AUDIO_SAMPLE_RATE - flash / 25) < 1e-3  # measured: 0.06 ms
    assert onsets[-1] - onsets[0] < rate // 100  # one click only: the early one was trimmed
    assert abs(len(signal) / AUDIO_SAMPLE_RATE - 1.7) < 0.06


def test_clip_audio_length_and_padding():
    signal = np.arange(50_000, dtype=np.float32)
    part = clip_audio(signal, 25, 50, 25.0)
    assert len(part) == 32_000 and part[0] == 16_000
    tail = clip_audio(signal, 50, 50, 25.0)
    assert len(tail) == 32_000 and tail[17_999] == 49_999 and not tail[18_000:].any()
