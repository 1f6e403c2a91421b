"""Decoded clip -> training sample: frame choice, person-keeping crop, condition maps, crops.

One function per step, composed by :func:`make_stage1_sample` and :func:`make_stage2_sample`.
All randomness comes from the ``numpy.random.Generator`` passed in, which the dataset seeds from
``(seed, pass, clip key)``, so a sample does not depend on worker layout or decode order.

Images leave here as ``uint8`` tensors ``(..., 3, H, W)`` (4x less inter-process traffic than
float); the LightningModule turns them into ``[-1, 1]`` floats on the device. Coordinates are
normalised to ``[0, 1]`` of the output frame (``x / W``, ``y / H``); absent boxes/keypoints are
zeros with a validity flag, never NaN, so a batch can be summed without masking tricks.
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
from cyberhost.data.shards import ARRAY_FIELDS, decode_frames

FACE_CROP = 256
"""Side of the face crop (ArcFace input, paper Sec. 3.2)."""
HAND_CROP = 128
"""Side of each hand crop (Hand Encoder input, paper Sec. 3.2)."""


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
        p_drop_reference: probability that only the reference is dropped (CFG training).
        p_drop_audio: probability that only the audio is dropped.
        p_drop_both: probability that reference and audio are both dropped.
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
    p_drop_reference: float = 0.05
    p_drop_audio: float = 0.05
    p_drop_both: float = 0.05
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
        drops = (self.p_drop_reference, self.p_drop_audio, self.p_drop_both)
        if min(drops) < 0 or sum(drops) > 1:
            raise ValueError(f"dropout probabilities must be >= 0 and sum to <= 1, got {drops}")

    @property
    def window(self) -> int:
        """Consecutive frames a stage-2 sample reads (motion + target)."""
        return self.num_motion + self.num_frames

    @property
    def audio_samples(self) -> int:
        """Audio samples of one stage-2 sample (targets plus context on both sides)."""
        return round((self.num_frames + 2 * self.audio_context) / self.fps * AUDIO_SAMPLE_RATE)


# ----------------------------------------------------------------------------- frame choice


def choose_pair(num_frames: int, min_gap: int, rng: np.random.Generator) -> tuple[int, int]:
    """Pick (reference, target) frame indices at least ``min_gap`` apart, in either order.

    Raises:
        ValueError: the clip is too short for the gap.
    """
    if num_frames < min_gap + 1 or num_frames < 2 and min_gap > 0:
        raise ValueError(f"a clip of {num_frames} frames has no pair {min_gap} frames apart")
    while True:
        ref, tgt = (int(i) for i in rng.integers(0, num_frames, 2))
        if abs(ref - tgt) >= min_gap:
            return ref, tgt


def choose_window(num_frames: int, window: int, rng: np.random.Generator) -> tuple[int, int]:
    """Pick the start of a run of ``window`` frames and a reference frame anywhere in the clip."""
    if num_frames < window:
        raise ValueError(f"a clip of {num_frames} frames is shorter than the {window}-frame window")
    return int(rng.integers(0, num_frames - window + 1)), int(rng.integers(0, num_frames))


def choose_dropout(cfg: TransformConfig, rng: np.random.Generator) -> tuple[bool, bool]:
    """Condition dropout for two-scale CFG: (drop reference, drop audio), mutually exclusive cases."""
    u = float(rng.uniform())
    if u < cfg.p_drop_reference:
        return True, False
    if u < cfg.p_drop_reference + cfg.p_drop_audio:
        return False, True
    if u < cfg.p_drop_reference + cfg.p_drop_audio + cfg.p_drop_both:
        return True, True
    return False, False


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


def _chw(images: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


def normalise_geometry(
    clip: dict[str, Any], frames: list[int], crop: np.ndarray, size: tuple[int, int], min_confidence: float
) -> dict[str, torch.Tensor]:
    """Keypoints and boxes of ``frames`` in ``[0, 1]`` output coordinates, with validity flags.

    Returns:
        ``keypoints`` (N, 133, 3: x, y, confidence; confidence 0 where absent or outside),
        ``face_box`` (N, 4), ``face_valid`` (N,), ``hand_boxes`` (N, 2, 4), ``hand_valid`` (N, 2).
    """
    h, w = size
    norm = np.array([w, h, w, h], np.float32)
    kps = clip["keypoints"][frames].copy()
    kps[..., :2] = map_points(kps[..., :2], crop, size) / norm[:2]
    inside = (kps[..., :2] >= 0).all(-1) & (kps[..., :2] <= 1).all(-1) & (kps[..., 2] >= min_confidence)
    kps[..., 2] = np.where(inside, kps[..., 2], 0.0)
    kps = np.nan_to_num(kps * inside[..., None], nan=0.0)
    out = {"keypoints": torch.from_numpy(kps.astype(np.float32))}
    for name, valid in (("face_box", "face_valid"), ("hand_boxes", "hand_valid")):
        boxes = map_boxes(clip[name][frames], crop, size) / norm
        ok = np.isfinite(boxes).all(-1)
        boxes = np.clip(np.nan_to_num(boxes, nan=0.0), 0, 1)
        ok &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        out[name] = torch.from_numpy(boxes * ok[..., None])
        out[valid] = torch.from_numpy(ok)
    return out


def movement_map(
    clip: dict[str, Any], frames: list[int], crop: np.ndarray, size: tuple[int, int], cfg: TransformConfig,
    rng: np.random.Generator | None,
) -> tuple[torch.Tensor, float]:
    """Body movement map of ``frames`` (thorax range, randomly enlarged; ``rng=None``: factor 1.25).

    The range comes from the thorax trajectory over ``frames`` and falls back to the clip's stored
    ``movement_range`` when no frame of the window has both shoulders.

    Returns:
        ``(3, H, W)`` uint8 map and the enlargement factor used.
    """
    traj = clip["thorax"][frames]
    traj = traj[np.isfinite(traj).all(axis=1)]
    raw = np.array([*traj.min(0), *traj.max(0)], np.float32) if len(traj) else clip["movement_range"]
    box = map_boxes(raw.astype(np.float32), crop, size)
    min_side = cfg.movement_min_side * size[0]
    if rng is None:
        factor = sum(cfg.movement_scale) / 2
        box = maps.enlarge_box(box, factor, min_side)
    else:
        box, factor = maps.random_movement_box(box, rng, cfg.movement_scale, min_side)
    return _chw(maps.draw_box(box, size)), factor


def hand_clarity(clip: dict[str, Any], frames: list[int]) -> torch.Tensor:
    """Hand clarity ``(N, 2)`` with NaN (absent hand) replaced by 0."""
    return torch.from_numpy(np.nan_to_num(clip["hand_clarity"][frames], nan=0.0).astype(np.float32))


def reference_parts(
    clip: dict[str, Any], ref_frame: np.ndarray, ref: int, crop: np.ndarray, size: tuple[int, int],
    cfg: TransformConfig,
) -> dict[str, torch.Tensor]:
    """Reference image, its skeleton map and the face/hand crops (from the uncropped frame).

    Args:
        clip: the decoded clip (its per-frame arrays indexed by clip frame).
        ref_frame: ``(H0, W0, 3)`` reference frame as stored.
        ref: its index in the clip.
        crop: crop box in the stored frame.
        size: output ``(h, w)``.
        cfg: transform settings.
    """
    kps = clip["keypoints"][ref].copy()
    kps[:, :2] = map_points(kps[:, :2], crop, size)
    face, face_ok = region_crop(ref_frame, clip["face_box"][ref], cfg.face_crop)
    hands = [region_crop(ref_frame, clip["hand_boxes"][ref, i], cfg.hand_crop) for i in range(2)]
    return {
        "reference": _chw(crop_resize(ref_frame[None], crop, size)[0]),
        "reference_skeleton": _chw(maps.draw_skeleton(kps, size, cfg.min_confidence)),
        "face_crop": _chw(face),
        "face_crop_valid": torch.tensor(face_ok),
        "hand_crops": _chw(np.stack([h for h, _ in hands])),
        "hand_crops_valid": torch.tensor([ok for _, ok in hands]),
    }


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


def _dropout(cfg: TransformConfig, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    drop_ref, drop_audio = (False, False) if rng is None else choose_dropout(cfg, rng)
    return {"drop_reference": torch.tensor(drop_ref), "drop_audio": torch.tensor(drop_audio)}


def _check_fps(clip: dict[str, Any], cfg: TransformConfig) -> None:
    if abs(float(clip["fps"]) - cfg.fps) > 1e-3:
        raise ValueError(
            f"clip {clip['key']!r} has {clip['fps']} fps, training expects {cfg.fps}: "
            "re-run data prep with that fps or set data.transform.fps"
        )


def make_stage1_sample(
    sample: dict[str, Any], bucket_hw: tuple[int, int], cfg: TransformConfig, rng: np.random.Generator | None
) -> dict[str, torch.Tensor]:
    """One stage-1 sample: a (reference, target) frame pair of one clip.

    Args:
        sample: raw WebDataset sample of one clip.
        bucket_hw: output ``(height, width)``.
        cfg: transform settings.
        rng: random generator of this sample; ``None`` for the deterministic validation view
            (first and last frame, centred crop, mean enlargement, no dropout).

    Returns:
        Tensors of one sample (see :data:`STAGE1_KEYS`).
    """
    clip = read_arrays(sample)
    n = int(clip["num_frames"])
    ref, tgt = (0, n - 1) if rng is None else choose_pair(n, cfg.min_gap, rng)
    frames = decode_frames(sample, [ref, tgt])
    crop = choose_crop(frames.shape[1:3], bucket_hw, person_box(clip, [ref, tgt], cfg.min_confidence), cfg, rng)
    out = reference_parts(clip, frames[0], ref, crop, bucket_hw, cfg)
    out["target"] = _chw(crop_resize(frames[1:], crop, bucket_hw))  # (1, 3, H, W)
    out["movement_map"], _ = movement_map(clip, list(range(n)), crop, bucket_hw, cfg, rng)
    out.update(normalise_geometry(clip, [tgt], crop, bucket_hw, cfg.min_confidence))
    out["hand_clarity"] = hand_clarity(clip, [tgt])
    out.update(_dropout(cfg, rng))
    return out


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


def make_stage2_sample(
    sample: dict[str, Any], bucket_hw: tuple[int, int], cfg: TransformConfig, rng: np.random.Generator | None
) -> dict[str, torch.Tensor]:
    """One stage-2 sample: ``num_motion`` motion frames, ``num_frames`` targets, the aligned audio.

    Args:
        sample: raw WebDataset sample of one clip.
        bucket_hw: output ``(height, width)``.
        cfg: transform settings.
        rng: random generator of this sample; ``None`` for the deterministic validation view.

    Returns:
        Tensors of one sample (see :data:`STAGE2_KEYS`).
    """
    clip = read_arrays(sample)
    _check_fps(clip, cfg)
    n = int(clip["num_frames"])
    start, ref = (0, 0) if rng is None else choose_window(n, cfg.window, rng)
    if rng is None and n < cfg.window:
        raise ValueError(f"a clip of {n} frames is shorter than the {cfg.window}-frame window")
    window = list(range(start, start + cfg.window))
    targets = window[cfg.num_motion :]
    frames = decode_frames(sample, [ref, *window])
    person = person_box(clip, [ref, *window], cfg.min_confidence)
    crop = choose_crop(frames.shape[1:3], bucket_hw, person, cfg, rng)
    out = reference_parts(clip, frames[0], ref, crop, bucket_hw, cfg)
    video = _chw(crop_resize(frames[1:], crop, bucket_hw))  # (M + F, 3, H, W)
    out["motion"], out["target"] = video[: cfg.num_motion], video[cfg.num_motion :]
    out["movement_map"], _ = movement_map(clip, targets, crop, bucket_hw, cfg, rng)
    out.update(normalise_geometry(clip, targets, crop, bucket_hw, cfg.min_confidence))
    out["hand_clarity"] = hand_clarity(clip, targets)
    out["audio"] = audio_window(clip, targets[0], cfg)
    out.update(_dropout(cfg, rng))
    return out


def clip_usable(meta: dict[str, Any], stage: int, cfg: TransformConfig) -> bool:
    """Whether a clip (by its metadata) is long enough for a sample of this stage."""
    n = int(meta["num_frames"])
    return n >= cfg.min_gap + 1 and n >= 2 if stage == 1 else n >= cfg.window


STAGE1_KEYS = (
    "reference", "reference_skeleton", "face_crop", "face_crop_valid", "hand_crops", "hand_crops_valid",
    "target", "movement_map", "keypoints", "face_box", "face_valid", "hand_boxes", "hand_valid",
    "hand_clarity", "drop_reference", "drop_audio",
)  # fmt: skip
"""Keys of a stage-1 sample."""
STAGE2_KEYS = (*STAGE1_KEYS, "motion", "audio")
"""Keys of a stage-2 sample."""
