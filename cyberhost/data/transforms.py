"""Clip geometry and settings: the transform config, the person-keeping crop, region crops, audio windows.

:mod:`cyberhost.data.conditions` composes these into the conditions contract and the training
samples. All randomness comes from the ``numpy.random.Generator`` passed in, which the dataset
seeds from ``(seed, pass, clip key)``, so a sample does not depend on worker layout or decode order.

Images leave as ``uint8`` tensors ``(..., 3, H, W)`` (4x less inter-process traffic than float);
the LightningModule turns them into ``[-1, 1]`` floats on the device (:func:`to_unit`) and maps
into ``[0, 1]`` (:func:`to_maps`).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from cyberhost.data import maps
from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.shards import ARRAY_FIELDS

FACE_CROP = 256
"""Side of the face crop (ArcFace input, paper Sec. 3.2)."""
HAND_CROP = 128
"""Side of each hand crop (Hand Encoder input, paper Sec. 3.2)."""
MODES = ("audio", "video", "multimodal")
"""What the Pose Encoder reads (``TransformConfig.mode``); generation needs a network trained with the same mode."""


@dataclass(frozen=True)
class TransformConfig:
    """How clips become samples.

    Attributes:
        min_gap: stage 1: fewest frames between reference and target frame.
        num_frames: stage 2: target frames per sample (paper: 12).
        num_motion: stage 2: motion frames before the targets (paper: 4).
        audio_context: stage 2: extra frames of real audio on each side of the target window (0: the
            window covers exactly the targets, as ``CyberHost.encode_audio`` expects; it adds its own context).
        fps: frame rate the clips must have (audio samples per frame follow from it).
        movement_scale: range of the random movement-box enlargement factor (paper: 100-150 %).
        movement_min_side: smallest side of the raw movement box as a fraction of the crop height.
        crop_scale: range of the random crop size relative to the largest crop of the bucket's
            aspect ratio; the crop never cuts the person when it can avoid it.
        min_confidence: keypoints below this confidence count as absent.
        p_drop_reference: probability that the reference (and identity crops) is dropped (CFG training);
            drawn independently of the audio drop.
        p_drop_audio: probability that the audio is dropped (stage 2), independently of the reference.
        p_motion_reference: stage 2: probability that the motion frames are replaced by the reference
            image (what the first generated segment uses).
        mode: what the Pose Encoder reads: ``audio`` (body movement map), ``video`` (skeleton of each
            target frame) or ``multimodal`` (hand skeleton over the movement map); see
            :mod:`cyberhost.data.conditions`.
        crop_focus: ``person`` keeps the whole person in the crop; ``face`` keeps the face and
            shoulders (talking-head training).
        face_crop: face crop side in pixels.
        hand_crop: hand crop side in pixels.
    """

    min_gap: int = 1
    num_frames: int = 12
    num_motion: int = 4
    audio_context: int = 0
    fps: float = 25.0
    movement_scale: tuple[float, float] = maps.MOVEMENT_SCALE
    movement_min_side: float = 0.05
    crop_scale: tuple[float, float] = (0.85, 1.0)
    min_confidence: float = 0.3
    p_drop_reference: float = 0.1
    p_drop_audio: float = 0.1
    p_motion_reference: float = 0.1
    mode: str = "audio"
    crop_focus: str = "person"
    face_crop: int = FACE_CROP
    hand_crop: int = HAND_CROP

    def __post_init__(self) -> None:
        if self.min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if self.num_frames < 1 or self.num_motion < 0 or self.audio_context < 0:
            raise ValueError("num_frames must be >= 1, num_motion and audio_context >= 0")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        lo, hi = self.movement_scale
        if not 0 < lo <= hi:
            raise ValueError(f"movement_scale must be (low, high) with 0 < low <= high, got {self.movement_scale}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("p_drop_reference", "p_drop_audio", "p_motion_reference"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.crop_focus not in ("person", "face"):
            raise ValueError(f"crop_focus must be 'person' or 'face', got {self.crop_focus!r}")

    @property
    def window(self) -> int:
        """Consecutive frames a stage-2 sample reads (motion + target)."""
        return self.num_motion + self.num_frames

    @property
    def audio_samples(self) -> int:
        """Audio samples of one stage-2 sample (targets plus context on both sides)."""
        return round((self.num_frames + 2 * self.audio_context) / self.fps * AUDIO_SAMPLE_RATE)


# ----------------------------------------------------------------------------- crop


def person_box(clip: dict[str, Any], frames: list[int], min_confidence: float) -> np.ndarray:
    """Box around everything of the person in the given frames (keypoints, face/hand boxes).

    Returns:
        ``(4,)`` pixel box, or the whole frame when nothing is known.
    """
    kps = clip["keypoints"][frames]
    ok = kps[..., 2] >= min_confidence
    pts = [kps[ok][:, :2]]
    for name in ("face_box", "hand_boxes"):
        boxes = clip[name][frames].reshape(-1, 4)
        boxes = boxes[np.isfinite(boxes).all(axis=1)]
        pts += [boxes[:, :2], boxes[:, 2:]]
    pts = np.concatenate(pts)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        return np.array([0, 0, clip["width"], clip["height"]], np.float32)
    return np.array([*pts.min(axis=0), *pts.max(axis=0)], np.float32)


def _place(lo: float, hi: float, size: float, limit: float, rng: np.random.Generator | None) -> float:
    """Start of a window of ``size`` in ``[0, limit]`` covering ``[lo, hi]`` when it can."""
    first, last = max(0.0, hi - size), min(lo, limit - size)
    if first > last:  # the person is larger than the window: centre on them
        return float(np.clip((lo + hi - size) / 2, 0, limit - size))
    return first if rng is None else float(rng.uniform(first, last))


def choose_crop(
    frame_hw: tuple[int, int], bucket_hw: tuple[int, int], person: np.ndarray, cfg: TransformConfig,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Crop box of the bucket's aspect ratio that keeps the person (``rng=None``: largest, centred on them).

    Returns:
        ``(4,)`` pixel crop box ``(x0, y0, x1, y1)`` inside the frame.
    """
    fh, fw = frame_hw
    bh, bw = bucket_hw
    full = min(fh / bh, fw / bw)  # largest crop = (bh * full, bw * full)
    need = max((person[3] - person[1]) / bh, (person[2] - person[0]) / bw, 1e-6)
    scale = 1.0 if rng is None else float(rng.uniform(*cfg.crop_scale))
    k = min(full, max(full * scale, need))
    ch, cw = bh * k, bw * k
    if rng is None:
        x0 = float(np.clip((person[0] + person[2] - cw) / 2, 0, fw - cw))
        y0 = float(np.clip((person[1] + person[3] - ch) / 2, 0, fh - ch))
    else:
        x0 = _place(person[0], person[2], cw, fw, rng)
        y0 = _place(person[1], person[3], ch, fh, rng)
    return np.array([x0, y0, x0 + cw, y0 + ch], np.float32)


def crop_resize(frames: np.ndarray, crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cut ``crop`` out of ``(N, H, W, 3)`` frames and resize to ``size`` ``(h, w)`` (one affine warp)."""
    h, w = size
    sx, sy = w / (crop[2] - crop[0]), h / (crop[3] - crop[1])
    mat = np.array([[sx, 0, -crop[0] * sx], [0, sy, -crop[1] * sy]], np.float32)
    interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR
    if sx < 1:  # INTER_AREA is only honoured by resize; cut first, then resize
        x0, y0 = int(math.floor(crop[0])), int(math.floor(crop[1]))
        x1, y1 = int(math.ceil(crop[2])), int(math.ceil(crop[3]))
        return np.stack([cv2.resize(f[y0:y1, x0:x1], (w, h), interpolation=interp) for f in frames])
    return np.stack([cv2.warpAffine(f, mat, (w, h), flags=interp, borderMode=cv2.BORDER_REFLECT) for f in frames])


def map_points(xy: np.ndarray, crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates ``(..., 2)`` of the source frame -> pixels of the cropped, resized frame."""
    h, w = size
    scale = np.array([w / (crop[2] - crop[0]), h / (crop[3] - crop[1])], np.float32)
    return (xy - crop[:2]) * scale


def map_boxes(boxes: np.ndarray, crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes ``(..., 4)`` of the source frame -> boxes of the output frame (NaN stays NaN)."""
    pts = map_points(boxes.reshape(*boxes.shape[:-1], 2, 2), crop, size)
    return pts.reshape(boxes.shape).astype(np.float32)


def region_crop(frame: np.ndarray, box: np.ndarray, side: int) -> tuple[np.ndarray, bool]:
    """Square crop around a box (zero-padded outside the frame), resized to ``side``.

    Returns:
        ``(side, side, 3)`` uint8 and whether the box existed (black image when it did not).
    """
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        return np.zeros((side, side, 3), np.uint8), False
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) / 2
    s = side / (2 * half)
    mat = np.array([[s, 0, side / 2 - cx * s], [0, s, side / 2 - cy * s]], np.float32)
    out = cv2.warpAffine(frame, mat, (side, side), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return out, True


# ----------------------------------------------------------------------------- per-sample parts


# ----------------------------------------------------------------------------- whole samples


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images -> float in ``[-1, 1]`` (floats are passed through). Training and generation both use it."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()


def to_maps(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` condition maps (skeleton, movement box) -> float in ``[0, 1]``."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def read_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """Scalar metadata of a raw WebDataset sample (cheap: no arrays, no frames)."""
    meta = sample["meta.json"]
    return dict(json.loads(meta) if isinstance(meta, bytes | str) else meta)


def read_arrays(sample: dict[str, Any]) -> dict[str, Any]:
    """Metadata and the small per-frame arrays of a raw sample, without decoding frames."""
    clip = read_meta(sample)
    for name in ARRAY_FIELDS:
        clip[name] = np.load(io.BytesIO(sample[f"{name}.npy"]), allow_pickle=False)
    return clip


def audio_window(clip: dict[str, Any], start: int, cfg: TransformConfig) -> torch.Tensor:
    """Audio of the target frames starting at clip frame ``start``, with ``audio_context`` frames each side.

    Samples before the clip's start or after its end are zeros, so every window has
    :attr:`TransformConfig.audio_samples` samples.
    """
    per_frame = AUDIO_SAMPLE_RATE / cfg.fps
    a0 = round((start - cfg.audio_context) * per_frame)
    out = np.zeros(cfg.audio_samples, np.float32)
    src = clip["audio"]
    lo, hi = max(a0, 0), min(a0 + cfg.audio_samples, len(src))
    if hi > lo:
        out[lo - a0 : hi - a0] = src[lo:hi]
    return torch.from_numpy(out)


def clip_usable(meta: dict[str, Any], stage: int, cfg: TransformConfig) -> bool:
    """Whether a clip (by its metadata) is long enough for a sample of this stage."""
    n = int(meta["num_frames"])
    return n >= cfg.min_gap + 1 and n >= 2 if stage == 1 else n >= cfg.window
