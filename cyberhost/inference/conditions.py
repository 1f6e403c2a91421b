"""Conditions of a generation, prepared exactly as training prepares a sample (Sec. 3.2-3.3).

The reference image goes through the keypoint backend and then through the *training* code of
:mod:`cyberhost.data.transforms` (the deterministic validation view): the person-keeping crop
of the bucket's aspect ratio, the skeleton map (pose-aligned reference feature), the 256-px face
crop and the 128-px hand crops, and the body movement map. At inference the movement map is one
fixed-size box for the whole video: the thorax of the reference is a single point, so its range
box is training's minimum side (``movement_min_side`` of the height) enlarged by the mean
factor (1.25 for the paper's 100-150 %), centred on the reference thorax.

Driving videos (video-driven and multimodal modes) are in :mod:`.driving`.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from cyberhost.data import regions
from cyberhost.data.buckets import BucketConfig, nearest_bucket
from cyberhost.data.keypoints import KeypointBackend, dominant_person
from cyberhost.data.schema import BODY
from cyberhost.data.transforms import (
    TransformConfig,
    choose_crop,
    map_points,
    movement_map,
    person_box,
    reference_parts,
)

from .errors import GenerateError, KeypointError, NoPersonError

HIGH_CLARITY = 30.0
"""Hand clarity used for "high" (std of the Laplacian of a 128-px grey crop): sharp crops of
natural images score about 10-30, blurred (motion) ones 2-5, so 30 is the sharp end of that range
whatever the data. The score's scale depends on the footage (resolution, compression), so the
closest match to what the network saw as "sharp" is a high percentile of the training data's own
``hand_clarity``: :func:`clarity_from_data` (``--hand-clarity-data DIR``)."""
CLARITY_PERCENTILE = 90.0
"""Percentile of the training data's hand clarity taken as "high" by :func:`clarity_from_data`."""
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


def detect_person(frame: np.ndarray, backend: KeypointBackend, min_confidence: float,
                  name: str = "<array>") -> np.ndarray | None:
    """Keypoints ``(133, 3)`` of the dominant person, or None when there is none.

    Raises:
        KeypointError: the backend itself failed (naming it, ``name`` and the reason).
    """
    try:
        persons = backend(np.ascontiguousarray(frame))
    except Exception as err:  # onnxruntime/MediaPipe raise their own types; the user needs the reason
        raise KeypointError(f"keypoint backend {getattr(backend, 'name', type(backend).__name__)!r} failed on "
                            f"{name}: {type(err).__name__}: {err}") from err
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
    kps = detect_person(image, backend, mc, f"the reference image {name}")
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


def clarity_from_data(path: str | os.PathLike, percentile: float = CLARITY_PERCENTILE) -> float:
    """A percentile of the measured hand clarity of a prepared dataset (absent hands ignored).

    Reads only the ``hand_clarity`` member of every clip (no frame is decoded).

    Args:
        path: output folder of ``data_prep`` (or a shard, or a folder of shards).
        percentile: in ``[0, 100]``.

    Raises:
        GenerateError: no shard, or no clip with a visible hand.
    """
    from cyberhost.data.shards import iter_raw_samples, list_shards

    if not 0 <= percentile <= 100:
        raise GenerateError(f"hand clarity percentile must be in [0, 100], got {percentile}")
    try:
        shards = list_shards(path)
    except FileNotFoundError as err:
        raise GenerateError(f"hand clarity data: {err}") from err
    values = []
    for shard in shards:
        for sample in iter_raw_samples(shard):
            v = np.load(io.BytesIO(sample["hand_clarity.npy"]), allow_pickle=False).reshape(-1)
            values.append(v[np.isfinite(v)])
    found = np.concatenate(values) if values else np.zeros(0)
    if found.size == 0:
        raise GenerateError(f"hand clarity data {path}: {len(shards)} shard(s) but no clip with a visible hand")
    return float(np.percentile(found, percentile))


def num_output_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Frames covering the audio: ``ceil(duration * fps)`` (at least 1)."""
    return max(1, math.ceil(num_samples / sample_rate * fps - 1e-9))
