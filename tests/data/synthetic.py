"""Synthetic clips that satisfy the schema, for shard and dataset tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from cyberhost.data.schema import AUDIO_SAMPLE_RATE, NUM_KEYPOINTS


def make_clip(key: str = "src_0-0000", frames: int = 8, size: tuple[int, int] = (48, 64), fps: float = 25.0, seed: int = 0) -> dict[str, Any]:
    """A random clip with every schema key; frames are smooth so JPEG keeps them close."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 128.0)], -1)
    video = np.stack([np.roll(base, 2 * i, axis=1) for i in range(frames)]).astype(np.uint8)
    kps = np.concatenate([rng.uniform(0, min(h, w), (frames, NUM_KEYPOINTS, 2)), rng.uniform(0, 1, (frames, NUM_KEYPOINTS, 1))], -1)
    hand_boxes = rng.uniform(0, 20, (frames, 2, 4)).astype(np.float32)
    hand_boxes[0, 1] = np.nan
    return {
        "key": key,
        "frames": video,
        "audio": rng.standard_normal(round(frames / fps * AUDIO_SAMPLE_RATE)).astype(np.float32),
        "keypoints": kps.astype(np.float32),
        "face_box": rng.uniform(0, 20, (frames, 4)).astype(np.float32),
        "hand_boxes": hand_boxes,
        "hand_clarity": rng.uniform(0, 50, (frames, 2)).astype(np.float32),
        "thorax": rng.uniform(0, 40, (frames, 2)).astype(np.float32),
        "movement_range": np.array([1, 2, 30, 40], np.float32),
        "fps": fps,
        "source": "talk/a.mp4",
        "start": 1.5,
        "end": 1.5 + frames / fps,
        "width": w,
        "height": h,
        "num_frames": frames,
        "backend": "synthetic",
    }
