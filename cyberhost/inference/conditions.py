"""Conditions of a generation, prepared exactly as training prepares a sample (Sec. 3.2-3.3).

The reference image goes through the keypoint backend and then through the *training* code of
:mod:`cyberhost.data.transforms` (the deterministic validation view): the person-keeping crop
of the bucket's aspect ratio, the skeleton map (pose-aligned reference feature), the 256-px face
crop and the 128-px hand crops, and the body movement map. At inference the movement map is one
fixed-size box for the whole video: the thorax of the reference is a single point, so its range
box is training's minimum side (``movement_min_side`` of the height) enlarged by the mean
factor (1.25 for the paper's 100-150 %), centred on the reference thorax.

Driving videos (video-driven and multimodal modes) are run through the same backend; their
keypoints are cropped like a training clip, mapped to the output frame and aligned to the
reference (thorax position and shoulder width of the first frame with both shoulders), then drawn:

* video-driven: the full skeleton of each frame **replaces** the movement map; it enters the
  network where the movement map does, through the Pose Encoder, added to the noised latent.
* multimodal: the hand bones of each frame are drawn **over** the reference's movement box, so
  audio drives face and body while the hands follow the driving video.

Both need a network fine-tuned with such maps (the paper trains a variant per mode); a network
trained on movement boxes only will not follow them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cyberhost.data import maps, regions
from cyberhost.data.buckets import BucketConfig, nearest_bucket
from cyberhost.data.keypoints import KeypointBackend, dominant_person
from cyberhost.data.schema import BODY, HANDS, LEFT_SHOULDER, RIGHT_SHOULDER
from cyberhost.data.transforms import (
    TransformConfig,
    choose_crop,
    map_points,
    movement_map,
    person_box,
    reference_parts,
)

from .errors import GenerateError, NoPersonError

HIGH_CLARITY = 30.0
"""Hand clarity used for "high" (std of the Laplacian of a 128-px grey crop): sharp crops of
natural images score about 10-30, blurred (motion) ones 2-5. Set ``--hand-clarity`` to a
high percentile of your training data's ``hand_clarity`` for the best match."""
MIN_BODY_POINTS = 3
"""Fewest confident COCO body points for a detection to count as a person."""


@dataclass
class ReferenceConditions:
    """The reference image and everything derived from it, at the output size.

    Attributes:
        image: ``(3, H, W)`` uint8 cropped, resized reference.
        skeleton: ``(3, H, W)`` uint8 skeleton map of the reference.
        face: ``(3, S, S)`` uint8 face crop; ``face_valid`` False when no face was found.
        face_valid: whether a face box existed.
        hands: ``(2, 3, 128, 128)`` uint8 left/right hand crops (black when absent).
        hands_valid: ``(2,)`` bool.
        movement_map: ``(3, H, W)`` uint8 fixed-size body movement map.
        keypoints: ``(133, 3)`` reference keypoints in output pixels.
        clarity: ``(2,)`` measured hand clarity of the reference (NaN where a hand is absent).
        size: ``(H, W)``.
    """

    image: Tensor
    skeleton: Tensor
    face: Tensor
    face_valid: bool
    hands: Tensor
    hands_valid: Tensor
    movement_map: Tensor
    keypoints: np.ndarray
    clarity: np.ndarray
    size: tuple[int, int]


def _one_frame_clip(frame: np.ndarray, kps: np.ndarray, min_confidence: float) -> dict[str, Any]:
    """The per-frame arrays of a decoded clip for one image (what ``transforms`` reads)."""
    h, w = frame.shape[:2]
    params = regions.RegionParams(min_confidence=min_confidence)
    k = kps[None]
    hands = regions.hand_boxes(k, (w, h), params)
    track = regions.thorax(k, min_confidence)
    return {"keypoints": k, "face_box": regions.face_boxes(k, (w, h), params), "hand_boxes": hands,
            "hand_clarity": regions.hand_clarity(frame[None], hands), "thorax": track,
            "movement_range": regions.movement_range(track), "width": w, "height": h, "num_frames": 1}


def detect_person(frame: np.ndarray, backend: KeypointBackend, min_confidence: float) -> np.ndarray | None:
    """Keypoints ``(133, 3)`` of the dominant person, or None when there is none."""
    persons = backend(np.ascontiguousarray(frame))
    kps, _ = dominant_person(persons, min_confidence)
    if len(persons) == 0 or int((kps[BODY, 2] >= min_confidence).sum()) < MIN_BODY_POINTS:
        return None
    return kps


def output_size(image_hw: tuple[int, int], buckets: BucketConfig, size: tuple[int, int] | None) -> tuple[int, int]:
    """``size`` when given (checked), else the training bucket nearest the image's aspect ratio."""
    if size is None:
        options = buckets.buckets()
        return options[nearest_bucket(image_hw[0], image_hw[1], options)]
    if any(s <= 0 or s % 8 for s in size):
        raise GenerateError(f"output size {size[0]}x{size[1]} must be positive multiples of 8 (the VAE stride)")
    return size


def prepare_reference(
    image: np.ndarray,
    backend: KeypointBackend,
    transform: TransformConfig,
    buckets: BucketConfig,
    size: tuple[int, int] | None = None,
    name: str = "<array>",
) -> ReferenceConditions:
    """Reference conditions as training makes them (validation view: centred crop, mean box).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        backend: keypoint backend (one person is used: the largest).
        transform: training's transform settings (crop sizes, movement box, thresholds).
        buckets: training resolutions (output size when ``size`` is None).
        size: output ``(height, width)``; None = nearest bucket.
        name: the image's file name for messages.

    Raises:
        NoPersonError: the backend finds no person (naming ``name``).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise GenerateError(f"reference image {name} must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    mc = transform.min_confidence
    backend.reset()
    kps = detect_person(image, backend, mc)
    if kps is None:
        raise NoPersonError(f"no person found in the reference image {name} (keypoint backend {backend.name!r} found "
                            f"no body with {MIN_BODY_POINTS}+ keypoints above confidence {mc}); use a photo showing "
                            "the upper body of one person")
    size = output_size(image.shape[:2], buckets, size)
    clip = _one_frame_clip(image, kps, mc)
    crop = choose_crop(image.shape[:2], size, person_box(clip, [0], mc), transform, None)
    parts = reference_parts(clip, image, 0, crop, size, transform)
    box_map, _ = movement_map(clip, [0], crop, size, transform, None)
    out_kps = kps.copy()
    out_kps[:, :2] = map_points(kps[:, :2], crop, size)
    return ReferenceConditions(
        image=parts["reference"], skeleton=parts["reference_skeleton"], face=parts["face_crop"],
        face_valid=bool(parts["face_crop_valid"]), hands=parts["hand_crops"], hands_valid=parts["hand_crops_valid"],
        movement_map=box_map, keypoints=out_kps, clarity=clip["hand_clarity"][0], size=size,
    )  # fmt: skip


def resolve_clarity(setting: str | float, reference: ReferenceConditions) -> np.ndarray:
    """Per-hand clarity ``(2,)`` for the hand clarity control.

    Args:
        setting: ``"high"`` (:data:`HIGH_CLARITY`), ``"reference"`` (the reference's own crops;
            an absent hand gets ``"high"``), or a number.
        reference: the prepared reference.
    """
    if isinstance(setting, str) and setting == "high":
        return np.full(2, HIGH_CLARITY, np.float32)
    if isinstance(setting, str) and setting == "reference":
        return np.where(np.isfinite(reference.clarity), reference.clarity, HIGH_CLARITY).astype(np.float32)
    try:
        value = float(setting)
    except ValueError as err:
        raise GenerateError(f"hand clarity must be 'high', 'reference' or a number >= 0, got {setting!r}") from err
    if not value >= 0:
        raise GenerateError(f"hand clarity must be >= 0, got {value}")
    return np.full(2, value, np.float32)


# ----------------------------------------------------------------------------- driving videos


def source_indices(num_out: int, out_fps: float, src_fps: float, num_src: int) -> np.ndarray:
    """Driving-video frame shown at each output frame (nearest earlier frame; the last one is held)."""
    t = np.arange(num_out) / out_fps
    return np.minimum(np.floor(t * src_fps + 1e-6).astype(np.int64), num_src - 1)


def _shoulders(kps: np.ndarray, min_confidence: float) -> tuple[np.ndarray, float] | None:
    left, right = kps[LEFT_SHOULDER], kps[RIGHT_SHOULDER]
    if min(left[2], right[2]) < min_confidence:
        return None
    width = float(np.hypot(*(left[:2] - right[:2])))
    return (left[:2] + right[:2]) / 2, width


def align_to_reference(seq: np.ndarray, reference: np.ndarray, min_confidence: float) -> np.ndarray:
    """Scale and shift a keypoint sequence so its first thorax/shoulder width match the reference's.

    Args:
        seq: ``(N, 133, 3)`` driving keypoints in output pixels.
        reference: ``(133, 3)`` reference keypoints in output pixels.
        min_confidence: shoulders below it do not count.

    Returns:
        The aligned copy (unchanged when either side lacks both shoulders).
    """
    ref = _shoulders(reference, min_confidence)
    first = next((s for s in (_shoulders(k, min_confidence) for k in seq) if s is not None), None)
    if ref is None or first is None or first[1] <= 1e-6:
        return seq.copy()
    scale = ref[1] / first[1]
    out = seq.copy()
    out[..., :2] = (seq[..., :2] - first[0]) * scale + ref[0]
    return out


def driving_keypoints(
    frames: np.ndarray,
    src_fps: float,
    out_fps: float,
    num_frames: int,
    backend: KeypointBackend,
    transform: TransformConfig,
    reference: ReferenceConditions,
    name: str = "<array>",
    align: bool = True,
) -> np.ndarray:
    """Keypoints of a driving video at each output frame, in output pixels.

    Args:
        frames: ``(N_src, H, W, 3)`` uint8 driving frames.
        src_fps: their frame rate (0 = same as ``out_fps``).
        out_fps: output frame rate.
        num_frames: output frames.
        backend: keypoint backend (video/tracking mode is fine; it is reset first).
        transform: training's transform settings (crop, thresholds).
        reference: the prepared reference (output size, alignment target).
        name: the driving video's file name for messages.
        align: align to the reference (thorax and shoulder width).

    Returns:
        ``(num_frames, 133, 3)`` float32; frames without a person have zero confidence.

    Raises:
        NoPersonError: no frame of the driving video has a person.
    """
    mc = transform.min_confidence
    index = source_indices(num_frames, out_fps, src_fps or out_fps, len(frames))
    backend.reset()
    found: dict[int, np.ndarray] = {}
    for j in np.unique(index):
        kps = detect_person(frames[j], backend, mc)
        found[int(j)] = kps if kps is not None else np.zeros((133, 3), np.float32)
    if not any(k[:, 2].max() >= mc for k in found.values()):
        raise NoPersonError(f"no person found in the driving video {name}")
    seq = np.stack([found[int(j)] for j in index])  # (N, 133, 3) source pixels
    clip = {"keypoints": seq, "face_box": regions.face_boxes(seq, None), "hand_boxes": regions.hand_boxes(seq, None),
            "width": frames.shape[2], "height": frames.shape[1]}
    crop = choose_crop(frames.shape[1:3], reference.size, person_box(clip, list(range(len(seq))), mc), transform, None)
    seq = seq.copy()
    seq[..., :2] = map_points(seq[..., :2], crop, reference.size)
    return align_to_reference(seq, reference.keypoints, mc) if align else seq


def draw_driving_maps(seq: np.ndarray, mode: str, reference: ReferenceConditions, min_confidence: float) -> Tensor:
    """The per-frame maps that go where the movement map goes: ``(N, 3, H, W)`` uint8.

    Args:
        seq: ``(N, 133, 3)`` aligned driving keypoints (output pixels).
        mode: ``"video"`` (full skeleton) or ``"multimodal"`` (hand bones over the movement box).
        reference: the prepared reference (size, movement box).
        min_confidence: points below it are not drawn.
    """
    size = reference.size
    box = reference.movement_map.permute(1, 2, 0).numpy()
    out = []
    for kps in seq:
        if mode == "video":
            img = maps.draw_skeleton(kps, size, min_confidence)
        elif mode == "multimodal":
            hands = np.zeros_like(kps)
            hands[HANDS] = kps[HANDS]
            bones = maps.draw_skeleton(hands, size, min_confidence)
            img = np.where(bones.any(-1, keepdims=True), bones, box)
        else:
            raise GenerateError(f"mode must be 'audio', 'video' or 'multimodal', got {mode!r}")
        out.append(img)
    return torch.from_numpy(np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)))


def num_output_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Frames covering the audio: ``ceil(duration * fps)`` (at least 1)."""
    return max(1, math.ceil(num_samples / sample_rate * fps - 1e-9))
