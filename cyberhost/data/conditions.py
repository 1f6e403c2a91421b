"""The conditions contract: everything the network reads besides the noised latent (Sec. 3-4.1).

One typed object, :class:`Conditions`, holds every condition of one sample; one function,
:func:`build_conditions`, makes it from a clip, the chosen frames and the mode. The stage-1 and
stage-2 training samples (:func:`make_stage1_sample`, :func:`make_stage2_sample`), validation
sampling and ``cyberhost generate`` (:mod:`cyberhost.inference.conditions`) all go through it, so
the network is never asked at inference what training did not show it. A test builds the same
clip through the training and the generation path and finds the two identical.

**Absent** has one representation here and downstream: a value (zeros) plus a boolean validity
field (``*_valid``) that the losses and the network read. NaN exists only in the stored clip
arrays (the on-disk encoding of :mod:`cyberhost.data.schema`) and is turned into value + mask in
this module, nowhere else.

**Modes** (paper Sec. 4): what the Pose Encoder reads in the ``driving_map`` slot.

* ``audio`` (A2V, the paper's main mode): the *body movement map*, the thorax range over the
  frames of the segment the targets come from, enlarged by a random 100-150 % in training and by
  the mean (125 %) in validation and generation. The span is ``num_frames`` frames in both stages
  (stage 1: a run of ``num_frames`` frames holding the target; stage 2: the targets).
* ``video`` (V2V): the full-body skeleton map of each target frame.
* ``multimodal``: the hand skeleton of each target frame drawn over the movement box.

The talking-head setting is the ``audio`` mode with a face-focused crop (``crop_focus: face``)
and no hand RCA (``model.hand_rca_blocks: []``): ``conf/modes/talking_head.yaml``.

**Dropout** for two-scale CFG (reference 2.5, audio 4.5): the reference and the audio are dropped
*independently* (``p_drop_reference``, ``p_drop_audio``), so every CFG branch -- neither, reference
only, both -- is trained, with P(both) = p_ref * p_audio. **Motion frames** are replaced by the
reference image with ``p_motion_reference``: the first generated segment has no earlier frames and
uses the reference as its motion frames, so training shows that case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cyberhost.data import maps
from cyberhost.data.faces import align_face_crop
from cyberhost.data.schema import FACE, HANDS, Field
from cyberhost.data.shards import decode_frames
from cyberhost.data.transforms import (
    MODES,
    TransformConfig,
    audio_window,
    choose_crop,
    crop_resize,
    map_boxes,
    map_points,
    person_box,
    read_arrays,
    region_crop,
)

MODE_OVERLAYS = {
    "audio": "conf/stage2.yaml alone (the default)",
    "video": "--config conf/modes/video.yaml",
    "multimodal": "--config conf/modes/multimodal.yaml",
}
"""How to train a network for each mode (named in generate's refusal)."""

CONDITION_FIELDS: dict[str, Field] = {
    "reference": Field("uint8", (3, "H", "W"), "reference image, cropped and resized like the targets"),
    "reference_skeleton": Field("uint8", (3, "H", "W"), "skeleton map of the reference (pose-aligned reference feature)"),
    "driving_map": Field("uint8", ("F", 3, "H", "W"), "what the Pose Encoder adds to each noised latent: movement "
                                                       "map (audio), skeleton (video), hands over the box (multimodal)"),
    "motion": Field("uint8", ("M", 3, "H", "W"), "motion frames before the targets (stage 2; M = 0 in stage 1)"),
    "motion_from_reference": Field("bool", (), "the motion frames are the reference repeated (first segment)"),
    "audio": Field("float32", ("S",), "16 kHz audio of the targets plus audio_context frames each side (S = 0 in stage 1)"),
    "face_crop": Field("uint8", (3, "Sf", "Sf"), "reference face aligned to the ArcFace template at 256 px"),
    "face_crop_valid": Field("bool", (), "a face was found in the reference"),
    "hand_crops": Field("uint8", (2, 3, "Sh", "Sh"), "left/right reference hand crops at 128 px"),
    "hand_crops_valid": Field("bool", (2,), "each hand was found in the reference"),
    "hand_clarity": Field("float32", ("F", 2), "hand clarity score per target frame and hand (0 where absent)"),
    "hand_clarity_valid": Field("bool", ("F", 2), "the hand is visible in that frame"),
    "keypoints": Field("float32", ("F", 133, 2), "target keypoints x, y in [0, 1] of the output frame (0 where absent)"),
    "keypoints_valid": Field("bool", ("F", 133), "keypoint confident and inside the frame"),
    "face_box": Field("float32", ("F", 4), "target face box in [0, 1] (0 where absent)"),
    "face_box_valid": Field("bool", ("F",), "a face box exists"),
    "hand_boxes": Field("float32", ("F", 2, 4), "target left/right hand boxes in [0, 1] (0 where absent)"),
    "hand_boxes_valid": Field("bool", ("F", 2), "each hand box exists"),
    "drop_reference": Field("bool", (), "CFG dropout: reference and identity removed for this sample"),
    "drop_audio": Field("bool", (), "CFG dropout: audio removed for this sample"),
}
"""Every field of :class:`Conditions` with dtype and shape of one sample (a batch adds a leading B)."""


@dataclass
class Conditions:
    """Every condition of one sample (or a batch: each field gains a leading ``B``); see :data:`CONDITION_FIELDS`."""

    reference: Tensor
    reference_skeleton: Tensor
    driving_map: Tensor
    motion: Tensor
    motion_from_reference: Tensor
    audio: Tensor
    face_crop: Tensor
    face_crop_valid: Tensor
    hand_crops: Tensor
    hand_crops_valid: Tensor
    hand_clarity: Tensor
    hand_clarity_valid: Tensor
    keypoints: Tensor
    keypoints_valid: Tensor
    face_box: Tensor
    face_box_valid: Tensor
    hand_boxes: Tensor
    hand_boxes_valid: Tensor
    drop_reference: Tensor
    drop_audio: Tensor

    def to_dict(self) -> dict[str, Tensor]:
        """The fields as a plain dict (what DataLoader workers send and ``collate`` stacks)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_batch(cls, batch: Mapping[str, Tensor]) -> Conditions:
        """The conditions of a collated batch (extra keys such as ``target`` are ignored)."""
        missing = [name for name in CONDITION_FIELDS if name not in batch]
        if missing:
            raise KeyError(f"batch lacks condition fields {missing}")
        return cls(**{name: batch[name] for name in CONDITION_FIELDS})

    def batched(self) -> Conditions:
        """One sample as a batch of one."""
        return Conditions(**{k: v[None] for k, v in self.to_dict().items()})

    def to(self, device: torch.device | str) -> Conditions:
        """Every field on ``device``."""
        return Conditions(**{k: v.to(device) for k, v in self.to_dict().items()})

    def select(self, index: slice | Tensor) -> Conditions:
        """Some samples of a batch."""
        return Conditions(**{k: v[index] for k, v in self.to_dict().items()})


def check_conditions(cond: Conditions) -> None:
    """Check dtypes, shapes and finiteness of one (unbatched) sample against :data:`CONDITION_FIELDS`.

    Raises:
        ValueError: naming the first field that does not match or holds NaN/Inf.
    """
    sizes: dict[str, int] = {}
    for name, spec in CONDITION_FIELDS.items():
        value = getattr(cond, name)
        if str(value.dtype).removeprefix("torch.") != spec.dtype:
            raise ValueError(f"condition {name!r} must be {spec.dtype}, got {value.dtype}")
        if value.dim() != len(spec.shape):
            raise ValueError(f"condition {name!r} must have shape {spec.shape}, got {tuple(value.shape)}")
        for dim, want in zip(value.shape, spec.shape, strict=True):
            if isinstance(want, int) and dim != want or isinstance(want, str) and sizes.setdefault(want, dim) != dim:
                raise ValueError(f"condition {name!r} has shape {tuple(value.shape)}, expected {spec.shape} ({sizes})")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"condition {name!r} holds NaN or Inf: an absent value must be a finite value plus its "
                             f"validity mask")


# ----------------------------------------------------------------------------- frame choice


@dataclass(frozen=True)
class FrameChoice:
    """Which clip frames one sample reads.

    Attributes:
        reference: the reference frame.
        targets: the frames to denoise (1 in stage 1).
        motion: the motion frames before the targets (stage 2).
        span: frames whose thorax range makes the movement box; empty = a fixed-size box centred on
            the reference thorax (generation: the thorax of a still image is one point).
    """

    reference: int
    targets: tuple[int, ...]
    motion: tuple[int, ...] = ()
    span: tuple[int, ...] = ()


def movement_span(num_frames: int, target: int, length: int, rng: np.random.Generator | None) -> tuple[int, ...]:
    """A run of ``length`` consecutive frames holding ``target`` (random position; ``rng=None``: ending at it)."""
    length = min(length, num_frames)
    lo, hi = max(0, target - length + 1), min(target, num_frames - length)
    start = hi if rng is None else int(rng.integers(lo, hi + 1))
    return tuple(range(start, start + length))


def choose_frames(num_frames: int, stage: int, cfg: TransformConfig, rng: np.random.Generator | None) -> FrameChoice:
    """Frames of one training sample; ``rng=None``: the deterministic validation view.

    Stage 1: a (reference, target) pair ``min_gap`` apart (validation: first and last frame) and a
    movement span of ``num_frames`` frames holding the target. Stage 2: ``num_motion`` motion
    frames then ``num_frames`` targets (validation: from frame 0), the reference anywhere in the
    clip (validation: frame 0), the span = the targets.

    Raises:
        ValueError: the clip is too short.
    """
    if stage == 1:
        if num_frames < max(2, cfg.min_gap + 1):
            raise ValueError(f"a clip of {num_frames} frames has no pair {cfg.min_gap} frames apart")
        if rng is None:
            ref, tgt = 0, num_frames - 1
        else:
            while True:
                ref, tgt = (int(i) for i in rng.integers(0, num_frames, 2))
                if abs(ref - tgt) >= cfg.min_gap:
                    break
        return FrameChoice(ref, (tgt,), (), movement_span(num_frames, tgt, cfg.num_frames, rng))
    if num_frames < cfg.window:
        raise ValueError(f"a clip of {num_frames} frames is shorter than the {cfg.window}-frame window")
    start, ref = (0, 0) if rng is None else (int(rng.integers(0, num_frames - cfg.window + 1)), int(rng.integers(0, num_frames)))
    window = tuple(range(start, start + cfg.window))
    targets = window[cfg.num_motion :]
    return FrameChoice(ref, targets, window[: cfg.num_motion], targets)


def choose_dropout(cfg: TransformConfig, rng: np.random.Generator | None) -> tuple[bool, bool]:
    """(drop reference, drop audio), drawn independently; nothing is dropped without ``rng``."""
    if rng is None:
        return False, False
    u = rng.uniform(size=2)
    return bool(u[0] < cfg.p_drop_reference), bool(u[1] < cfg.p_drop_audio)


# ----------------------------------------------------------------------------- parts


def _chw(images: np.ndarray) -> Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


def focus_box(clip: Mapping[str, Any], frames: list[int], cfg: TransformConfig) -> np.ndarray:
    """Box the crop must keep: the whole person, or the face and shoulders (``crop_focus: face``)."""
    if cfg.crop_focus == "person":
        return person_box(clip, frames, cfg.min_confidence)
    kps = clip["keypoints"][frames]
    keep = np.zeros(kps.shape[1], bool)
    keep[:7] = True  # nose, eyes, ears, shoulders
    keep[FACE] = True
    pts = kps[:, keep]
    pts = pts[(pts[..., 2] >= cfg.min_confidence) & np.isfinite(pts[..., :2]).all(-1)][:, :2]
    if not len(pts):
        return person_box(clip, frames, cfg.min_confidence)
    return np.array([*pts.min(axis=0), *pts.max(axis=0)], np.float32)


def target_geometry(clip: Mapping[str, Any], frames: list[int], crop: np.ndarray, size: tuple[int, int],
                    min_confidence: float) -> dict[str, Tensor]:
    """Keypoints and boxes of ``frames`` in ``[0, 1]`` output coordinates, each with its validity field."""
    h, w = size
    norm = np.array([w, h, w, h], np.float32)
    kps = clip["keypoints"][frames]
    xy = map_points(kps[..., :2], crop, size) / norm[:2]
    ok = np.isfinite(xy).all(-1) & (xy >= 0).all(-1) & (xy <= 1).all(-1) & (kps[..., 2] >= min_confidence)
    out = {"keypoints": torch.from_numpy(np.where(ok[..., None], xy, 0.0).astype(np.float32)),
           "keypoints_valid": torch.from_numpy(ok)}
    for name in ("face_box", "hand_boxes"):
        boxes = map_boxes(clip[name][frames], crop, size) / norm
        valid = np.isfinite(boxes).all(-1)
        boxes = np.clip(np.nan_to_num(boxes, nan=0.0), 0, 1)
        valid &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        out[name] = torch.from_numpy((boxes * valid[..., None]).astype(np.float32))
        out[f"{name}_valid"] = torch.from_numpy(valid)
    return out


def movement_box(clip: Mapping[str, Any], choice: FrameChoice, crop: np.ndarray, size: tuple[int, int],
                 cfg: TransformConfig, rng: np.random.Generator | None) -> np.ndarray:
    """The body movement box in output pixels: the thorax range over ``choice.span``, enlarged.

    Training draws the enlargement from ``movement_scale`` (paper: 100-150 %); validation and
    generation use its mean. A span without a visible thorax falls back to the clip's stored
    range; an empty span (generation) is the reference thorax, a point.
    """
    span = list(choice.span) or [choice.reference]
    traj = clip["thorax"][span]
    traj = traj[np.isfinite(traj).all(axis=1)]
    raw = np.array([*traj.min(0), *traj.max(0)], np.float32) if len(traj) else np.asarray(clip["movement_range"], np.float32)
    box = map_boxes(raw, crop, size)
    min_side = cfg.movement_min_side * size[0]
    if rng is None:
        return maps.enlarge_box(box, sum(cfg.movement_scale) / 2, min_side)
    return maps.random_movement_box(box, rng, cfg.movement_scale, min_side)[0]


def draw_driving_map(mode: str, keypoints_px: np.ndarray, box: np.ndarray, size: tuple[int, int],
                     min_confidence: float) -> np.ndarray:
    """The ``driving_map`` of one frame: ``(H, W, 3)`` uint8.

    Args:
        mode: ``audio`` (the movement box), ``video`` (full skeleton) or ``multimodal`` (hand
            bones over the movement box).
        keypoints_px: ``(133, 3)`` keypoints of the frame in output pixels.
        box: movement box in output pixels.
        size: ``(height, width)``.
        min_confidence: points below it are not drawn.
    """
    if mode == "audio":
        return maps.draw_box(box, size)
    if mode == "video":
        return maps.draw_skeleton(keypoints_px, size, min_confidence)
    if mode == "multimodal":
        hands = np.zeros_like(keypoints_px)
        hands[HANDS] = keypoints_px[HANDS]
        bones = maps.draw_skeleton(hands, size, min_confidence)
        return np.where(bones.any(-1, keepdims=True), bones, maps.draw_box(box, size))
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def reference_parts(clip: Mapping[str, Any], image: np.ndarray, ref: int, crop: np.ndarray, size: tuple[int, int],
                    cfg: TransformConfig) -> dict[str, Tensor]:
    """Reference image, its skeleton map and the identity crops (taken from the uncropped frame)."""
    kps = clip["keypoints"][ref].copy()
    kps[:, :2] = map_points(kps[:, :2], crop, size)
    face, face_ok = align_face_crop(image, clip["keypoints"][ref][FACE], cfg.face_crop, cfg.min_confidence)
    hands = [region_crop(image, clip["hand_boxes"][ref, i], cfg.hand_crop) for i in range(2)]
    return {
        "reference": _chw(crop_resize(image[None], crop, size)[0]),
        "reference_skeleton": _chw(maps.draw_skeleton(kps, size, cfg.min_confidence)),
        "face_crop": _chw(face),
        "face_crop_valid": torch.tensor(face_ok),
        "hand_crops": _chw(np.stack([h for h, _ in hands])),
        "hand_crops_valid": torch.tensor([ok for _, ok in hands]),
    }


# ----------------------------------------------------------------------------- the one builder


def build_conditions(
    clip: Mapping[str, Any],
    choice: FrameChoice,
    images: Mapping[int, np.ndarray],
    size: tuple[int, int],
    cfg: TransformConfig,
    rng: np.random.Generator | None,
    stage: int = 2,
    crop: np.ndarray | None = None,
) -> tuple[Conditions, np.ndarray]:
    """The conditions of one sample.

    Args:
        clip: per-frame arrays of a decoded clip (:mod:`cyberhost.data.schema`; NaN = absent).
        choice: the frames to read.
        images: decoded ``(H0, W0, 3)`` frames by clip index: the reference and the motion frames.
        size: output ``(height, width)``.
        cfg: the transform settings (mode, crop, movement box, dropout, crop sizes).
        rng: randomness of a training sample; None = deterministic (validation, generation).
        stage: 1 (no motion frames, no audio) or 2.
        crop: crop box in the stored frame; None = chosen around the person of all chosen frames.

    Returns:
        The conditions and the crop box used.
    """
    used = [choice.reference, *choice.motion, *choice.targets]
    if crop is None:
        frame_hw = images[choice.reference].shape[:2]
        crop = choose_crop(frame_hw, size, focus_box(clip, used, cfg), cfg, rng)
    image = images[choice.reference]
    out = reference_parts(clip, image, choice.reference, crop, size, cfg)
    targets = list(choice.targets)
    out.update(target_geometry(clip, targets, crop, size, cfg.min_confidence))
    box = movement_box(clip, choice, crop, size, cfg, rng)
    kps_px = clip["keypoints"][targets].copy()
    kps_px[..., :2] = map_points(kps_px[..., :2], crop, size)
    out["driving_map"] = _chw(np.stack([draw_driving_map(cfg.mode, k, box, size, cfg.min_confidence) for k in kps_px]))
    clarity = np.asarray(clip["hand_clarity"][targets], np.float32)
    valid = np.isfinite(clarity)
    out["hand_clarity"] = torch.from_numpy(np.where(valid, clarity, 0.0).astype(np.float32))
    out["hand_clarity_valid"] = torch.from_numpy(valid)
    from_ref = stage == 2 and bool(choice.motion) and rng is not None and bool(rng.uniform() < cfg.p_motion_reference)
    if stage == 2 and choice.motion and not from_ref:
        motion = _chw(crop_resize(np.stack([images[i] for i in choice.motion]), crop, size))
    elif from_ref:
        motion = out["reference"][None].expand(len(choice.motion), -1, -1, -1).clone()
    else:
        motion = torch.zeros(0, *out["reference"].shape, dtype=torch.uint8)
    out["motion"], out["motion_from_reference"] = motion, torch.tensor(from_ref)
    out["audio"] = audio_window(clip, targets[0], cfg) if stage == 2 else torch.zeros(0)
    drop_ref, drop_audio = choose_dropout(cfg, rng)
    out["drop_reference"], out["drop_audio"] = torch.tensor(drop_ref), torch.tensor(drop_audio)
    cond = Conditions(**out)
    check_conditions(cond)
    return cond, crop


# ----------------------------------------------------------------------------- training samples


def _check_fps(clip: Mapping[str, Any], cfg: TransformConfig) -> None:
    if abs(float(clip["fps"]) - cfg.fps) > 1e-3:
        raise ValueError(
            f"clip {clip['key']!r} has {clip['fps']} fps, training expects {cfg.fps}: "
            "re-run data prep with that fps or set data.transform.fps"
        )


def make_sample(sample: dict[str, Any], stage: int, bucket_hw: tuple[int, int], cfg: TransformConfig,
                rng: np.random.Generator | None) -> dict[str, Tensor]:
    """One training sample of a raw WebDataset clip: the conditions plus ``target`` ``(F, 3, H, W)`` uint8.

    Args:
        sample: raw WebDataset sample of one clip.
        stage: 1 (image pairs) or 2 (clips with motion frames and audio).
        bucket_hw: output ``(height, width)``.
        cfg: transform settings.
        rng: random generator of this sample; ``None`` for the deterministic validation view.
    """
    clip = read_arrays(sample)
    if stage == 2:
        _check_fps(clip, cfg)
    choice = choose_frames(int(clip["num_frames"]), stage, cfg, rng)
    wanted = sorted({choice.reference, *choice.motion, *choice.targets})
    decoded = dict(zip(wanted, decode_frames(sample, wanted), strict=True))
    cond, crop = build_conditions(clip, choice, decoded, bucket_hw, cfg, rng, stage)
    out = cond.to_dict()
    out["target"] = _chw(crop_resize(np.stack([decoded[i] for i in choice.targets]), crop, bucket_hw))
    return out


def make_stage1_sample(sample: dict[str, Any], bucket_hw: tuple[int, int], cfg: TransformConfig,
                       rng: np.random.Generator | None) -> dict[str, Tensor]:
    """Stage 1: a (reference, target) pair (see :func:`make_sample`)."""
    return make_sample(sample, 1, bucket_hw, cfg, rng)


def make_stage2_sample(sample: dict[str, Any], bucket_hw: tuple[int, int], cfg: TransformConfig,
                       rng: np.random.Generator | None) -> dict[str, Tensor]:
    """Stage 2: ``num_motion`` motion frames, ``num_frames`` targets and their audio (see :func:`make_sample`)."""
    return make_sample(sample, 2, bucket_hw, cfg, rng)


SAMPLE_KEYS = (*CONDITION_FIELDS, "target")
"""Keys of a training sample (both stages)."""
