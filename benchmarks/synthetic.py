"""Synthetic clips of a drawn, moving figure, written as real shards (tests, benchmark, smoke runs).

The figure has a head, a torso and two arms with hands; its COCO-WholeBody keypoints, boxes,
thorax track and clarity are consistent with the drawing, so crops, maps and boxes can be
checked by eye and by test. Nothing here is used by a real training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cyberhost.data.regions import face_boxes, hand_boxes, hand_clarity, movement_range, thorax
from cyberhost.data.schema import (
    AUDIO_SAMPLE_RATE,
    FACE,
    LEFT_HAND,
    LEFT_SHOULDER,
    LEFT_WRIST,
    NOSE,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    RIGHT_SHOULDER,
    RIGHT_WRIST,
)
from cyberhost.data.shards import ClipShardWriter


def _figure_keypoints(h: int, w: int, t: float, rng: np.random.Generator) -> np.ndarray:
    """Keypoints ``(133, 3)`` of a figure centred at the frame, swaying with phase ``t``."""
    kps = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    cx = w / 2 + 0.05 * w * np.sin(t)
    head = np.array([cx, 0.25 * h])
    r = 0.09 * min(h, w)
    kps[NOSE] = [*head, 1]
    kps[LEFT_SHOULDER] = [cx + 0.15 * w, 0.45 * h, 1]
    kps[RIGHT_SHOULDER] = [cx - 0.15 * w, 0.45 * h, 1]
    for wrist, side in ((LEFT_WRIST, 1), (RIGHT_WRIST, -1)):
        kps[wrist] = [cx + side * 0.2 * w, 0.75 * h - 0.1 * h * np.sin(t + side), 1]
    ang = np.linspace(0, 2 * np.pi, FACE.stop - FACE.start, endpoint=False)
    kps[FACE, 0], kps[FACE, 1], kps[FACE, 2] = head[0] + r * np.cos(ang), head[1] + r * np.sin(ang), 1
    for part, wrist in ((LEFT_HAND, LEFT_WRIST), (RIGHT_HAND, RIGHT_WRIST)):
        n = part.stop - part.start
        kps[part, :2] = kps[wrist, :2] + rng.normal(0, 0.02 * min(h, w), (n, 2))
        kps[part, 2] = 1
    return kps


def _draw(kps: np.ndarray, h: int, w: int) -> np.ndarray:
    img = np.full((h, w, 3), 40, np.uint8)
    img[:, :, 2] = np.linspace(40, 160, w, dtype=np.uint8)[None]
    head = kps[NOSE, :2]
    r = int(0.09 * min(h, w))
    sh = kps[[LEFT_SHOULDER, RIGHT_SHOULDER], :2]
    cv2.rectangle(img, tuple(int(v) for v in sh[1]), (int(sh[0, 0]), h - 1), (60, 90, 200), -1)
    for s, wr in ((LEFT_SHOULDER, LEFT_WRIST), (RIGHT_SHOULDER, RIGHT_WRIST)):
        cv2.line(img, tuple(int(v) for v in kps[s, :2]), tuple(int(v) for v in kps[wr, :2]), (60, 90, 200), max(2, r // 2))
        cv2.circle(img, tuple(int(v) for v in kps[wr, :2]), max(2, r // 2), (230, 190, 160), -1)
    cv2.circle(img, (int(head[0]), int(head[1])), r, (230, 190, 160), -1)
    cv2.circle(img, (int(head[0] - r / 3), int(head[1] - r / 4)), max(1, r // 6), (20, 20, 20), -1)
    cv2.circle(img, (int(head[0] + r / 3), int(head[1] - r / 4)), max(1, r // 6), (20, 20, 20), -1)
    return img


def make_clip(
    key: str, num_frames: int = 20, size: tuple[int, int] = (96, 80), fps: float = 25.0, seed: int = 0
) -> dict[str, Any]:
    """A schema-valid clip of the drawn figure.

    Args:
        key: sample key (``<source>-<index>``).
        num_frames: frames F.
        size: ``(height, width)``.
        fps: frame rate.
        seed: randomness of hand points, phase and audio.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    phase = rng.uniform(0, 2 * np.pi)
    kps = np.stack([_figure_keypoints(h, w, phase + 0.3 * i, rng) for i in range(num_frames)])
    frames = np.stack([_draw(k, h, w) for k in kps])
    samples = round(num_frames / fps * AUDIO_SAMPLE_RATE)
    tt = np.arange(samples) / AUDIO_SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * tt) * np.sin(3 * tt + phase) ** 2).astype(np.float32)
    track = thorax(kps)
    hands = hand_boxes(kps, (w, h))
    return {
        "key": key, "frames": frames, "audio": audio, "keypoints": kps,
        "face_box": face_boxes(kps, (w, h)), "hand_boxes": hands, "hand_clarity": hand_clarity(frames, hands),
        "thorax": track, "movement_range": movement_range(track),
        "fps": fps, "source": f"synthetic/{key}.mp4", "start": 0.0, "end": num_frames / fps,
        "width": w, "height": h, "num_frames": num_frames, "backend": "synthetic",
    }  # fmt: skip


def write_shards(
    directory: str | Path,
    num_clips: int = 8,
    num_frames: int = 20,
    size: tuple[int, int] = (96, 80),
    clips_per_shard: int = 4,
    seed: int = 0,
    frame_encoding: str = "jpg",
) -> Path:
    """Write ``num_clips`` synthetic clips into committed shards with :class:`ClipShardWriter`.

    Args:
        directory: output folder (created).
        num_clips: clips in total.
        num_frames: frames per clip.
        size: ``(height, width)`` of the frames.
        clips_per_shard: clips per shard (one input per shard).
        seed: base seed; clip ``i`` uses ``seed + i``.
        frame_encoding: ``"jpg"`` or ``"mp4"``.

    Returns:
        The folder.
    """
    directory = Path(directory)
    for shard in range(0, num_clips, clips_per_shard):
        with ClipShardWriter(directory, shard_index=shard // clips_per_shard, frame_encoding=frame_encoding) as writer:
            for i in range(shard, min(shard + clips_per_shard, num_clips)):
                writer.write(make_clip(f"syn{i:04d}-0000", num_frames, size, seed=seed + i))
            writer.finish_input({"file": f"synthetic/{shard}.mp4", "status": "ok", "reason": "", "clips": clips_per_shard})
    return directory


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.synthetic --output DIR``: write synthetic shards (smoke runs, GPU checks)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=main.__doc__)
    p.add_argument("--output", required=True, type=Path, help="dataset folder to create")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--frames", type=int, default=24, help="frames per clip")
    p.add_argument("--size", type=int, nargs=2, default=(400, 672), metavar=("H", "W"))
    p.add_argument("--clips-per-shard", type=int, default=4)
    args = p.parse_args(argv)
    write_shards(args.output, args.clips, args.frames, tuple(args.size), args.clips_per_shard)
    print(f"wrote {args.clips} synthetic clips of {args.frames} frames to {args.output}")


if __name__ == "__main__":
    main()
