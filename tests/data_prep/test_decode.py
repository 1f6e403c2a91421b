"""Frames by timestamp (VFR), rotation and downscale (audio alignment: test_audio.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cyberhost.media.video import FrameReader, output_size
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


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied_and_large_frames_are_downscaled(tmp_path, rotation):
    src = sample_frames(count=5)  # 320 wide, 384 tall
    path = write_video(tmp_path / "rot.mp4", src, tone(0.3), rotation=rotation)
    reader = FrameReader(path, 25, 256)
    frames = [f for _, f in reader]
    k = rotation // 90  # display-matrix rotation is counter-clockwise, like np.rot90
    upright = np.rot90(src[0], k)
    h, w = upright.shape[:2]
    size = (256, round(h * 256 / w / 2) * 2) if w < h else (round(w * 256 / h / 2) * 2, 256)
    assert reader.rotation == rotation and frames[0].shape == (size[1], size[0], 3)
    import cv2

    want = cv2.resize(np.ascontiguousarray(upright), size, interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].astype(int) - want).mean() < 4
    # a wrong turn (e.g. clockwise instead of counter-clockwise) is far off
    other = cv2.resize(np.ascontiguousarray(np.rot90(src[0], (k + 2) % 4)), size, interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].astype(int) - other).mean() > 10


def test_output_size():
    assert output_size(3840, 2160, 512) == (910, 512)
    assert output_size(200, 100, 512) == (200, 100)
