"""Conditions of a generation, built by the training code itself (:mod:`cyberhost.data.conditions`).

The reference image goes through the keypoint backend and becomes a one-frame clip with the
arrays data prep would store for it (face/hand boxes, thorax, hand clarity, all from the same
:mod:`cyberhost.data.regions` functions). :func:`generation_clip` extends it to the video's
length: per output frame the reference's keypoints (or the driving video's, in the video and
multimodal modes), the still reference thorax, the chosen hand clarity and the audio. Every
segment's :class:`~cyberhost.data.conditions.Conditions` then come from
:func:`~cyberhost.data.conditions.build_conditions` -- the function that makes training samples --
in its deterministic view: the crop centred on the reference person, the mean movement-box
enlargement and, since the thorax of a still image is one point, training's smallest movement box
(``movement_min_side`` of the height) enlarged by the mean factor (1.25 for the paper's 100-150 %).

Driving videos (video-driven and multimodal modes) are in :mod:`.driving`.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cyberhost.data import regions
from cyberhost.data.buckets import BucketConfig, nearest_bucket
from cyberhost.data.conditions import Conditions, FrameChoice, build_conditions, focus_box
from cyberhost.data.schema import BODY
from cyberhost.data.transforms import TransformConfig, choose_crop, map_points
from cyberhost.media.keypoints import KeypointBackend, dominant_person

from .errors import GenerateError, KeypointError, NoPersonError

CLARITY_PERCENTILE = 90.0
"""Percentile of the training data's hand clarity taken as "high" (recorded by training; see :func:`resolve_clarity`)."""
MIN_BODY_POINTS = 3
"""Fewest confident COCO body points for a detection to count as a person."""

log = logging.getLogger(__name__)


@dataclass
class ReferenceConditions:
    """The reference image, its person and the crop every segment shares.

    Attributes:
        image: ``(H0, W0, 3)`` uint8 reference as given.
        clip: the one-frame clip of the reference (the arrays data prep would store; NaN = absent).
        crop: crop box in ``image`` (training's deterministic person-keeping crop).
        size: output ``(height, width)``.
        conditions: the reference's own conditions (one frame): reference, skeleton map, identity
            crops with validity, movement map; what every segment starts from.
    """

    image: np.ndarray
    clip: dict[str, Any]
    crop: np.ndarray
    size: tuple[int, int]
    conditions: Conditions

    @property
    def keypoints(self) -> np.ndarray:
        """``(133, 3)`` reference keypoints in output pixels."""
        kps = self.clip["keypoints"][0].copy()
        kps[:, :2] = map_points(kps[:, :2], self.crop, self.size)
        return kps

    @property
    def clarity(self) -> np.ndarray:
        """``(2,)`` measured hand clarity of the reference (NaN where a hand is absent)."""
        return self.clip["hand_clarity"][0]


def one_frame_clip(frame: np.ndarray, kps: np.ndarray, min_confidence: float) -> dict[str, Any]:
    """The per-frame arrays of a decoded clip for one image, computed as data prep computes them."""
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
    """Detect the person of the reference and fix the crop (training's validation view).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        backend: keypoint backend (one person is used: the largest).
        transform: training's transform settings (crop sizes, movement box, thresholds, mode).
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
    return reference_from_keypoints(image, kps, transform, output_size(image.shape[:2], buckets, size))


def reference_from_keypoints(image: np.ndarray, kps: np.ndarray, transform: TransformConfig,
                             size: tuple[int, int]) -> ReferenceConditions:
    """:class:`ReferenceConditions` of an image whose person's keypoints ``(133, 3)`` are known."""
    clip = one_frame_clip(image, kps, transform.min_confidence)
    crop = choose_crop(image.shape[:2], size, focus_box(clip, [0], transform), transform, None)
    cond, _ = build_conditions(clip, FrameChoice(0, (0,)), {0: image}, size, transform, None, stage=1, crop=crop)
    return ReferenceConditions(image=image, clip=clip, crop=crop, size=size, conditions=cond)


def generation_clip(reference: ReferenceConditions, num_frames: int, clarity: np.ndarray, audio: np.ndarray | None,
                    driving: np.ndarray | None = None) -> dict[str, Any]:
    """The clip a generation reads its conditions from: ``num_frames`` output frames, then the reference.

    Args:
        reference: the prepared reference.
        num_frames: output frames (a multiple of the segment length: the last segment is padded).
        clarity: ``(2,)`` hand clarity of every output frame (NaN = that hand absent).
        audio: 16 kHz mono conditioning audio (None: silence, the audio is never attended).
        driving: ``(N, 133, 3)`` driving keypoints in output pixels (video/multimodal modes);
            frames past its end hold its last frame.

    Returns:
        Per-frame arrays of ``num_frames + 1`` frames; index ``num_frames`` is the reference. What
        every frame shares with the reference (boxes, thorax, the keypoints without a driving
        video) is a read-only view of the reference's one frame, so memory does not grow with the
        video's length.
    """
    ref = reference.clip
    n = num_frames
    clip = {name: _held(ref[name], n + 1) for name in ("face_box", "hand_boxes", "thorax")}
    clip["keypoints"] = _held(ref["keypoints"], n + 1)
    if driving is not None:
        idx = np.minimum(np.arange(n), len(driving) - 1)
        src = driving[idx].copy()  # output pixels -> reference image pixels (the crop is inverted)
        scale = np.array([(reference.crop[2] - reference.crop[0]) / reference.size[1],
                          (reference.crop[3] - reference.crop[1]) / reference.size[0]], np.float32)
        src[..., :2] = src[..., :2] * scale + reference.crop[:2]
        clip["keypoints"] = np.concatenate([src.astype(np.float32), ref["keypoints"]])
    wave = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32)
    clip["hand_clarity"] = np.concatenate([np.repeat(np.asarray(clarity, np.float32)[None], n, axis=0),
                                           ref["hand_clarity"]])  # 8 bytes a frame
    clip.update(movement_range=ref["movement_range"], audio=wave, width=ref["width"], height=ref["height"],
                num_frames=n + 1)
    return clip


def _held(one_frame: np.ndarray, frames: int) -> np.ndarray:
    """A one-frame array ``(1, ...)`` seen as ``frames`` equal frames, without copying (read-only)."""
    return np.broadcast_to(one_frame[:1], (frames, *one_frame.shape[1:]))


def segment_conditions(reference: ReferenceConditions, clip: Mapping[str, Any], start: int, length: int,
                       transform: TransformConfig) -> Conditions:
    """Conditions of the output frames ``start ... start + length - 1`` (motion frames come from the sampler)."""
    ref = int(clip["num_frames"]) - 1
    choice = FrameChoice(ref, tuple(range(start, start + length)))
    cond, _ = build_conditions(clip, choice, {ref: reference.image}, reference.size, transform, None, stage=2,
                               crop=reference.crop)
    return cond


def resolve_clarity(setting: str | float, reference: ReferenceConditions,
                    seen: Mapping[str, float] | None = None) -> np.ndarray:
    """Per-hand clarity ``(2,)`` of the hand clarity control, inside the range training saw.

    Args:
        setting: ``"high"`` (the :data:`CLARITY_PERCENTILE` percentile of what training saw),
            ``"reference"`` (the reference's own crops; an absent hand gets ``"high"``), or a number.
        reference: the prepared reference.
        seen: the statistics of the hand clarity training saw (the checkpoint's
            ``conditions["hand_clarity"]``: ``min``, ``max``, ``p90`` ...); None or empty when unknown.

    Raises:
        GenerateError: a number outside the range training saw, or not a number.
    """
    seen = dict(seen or {})
    key = f"p{CLARITY_PERCENTILE:g}"
    own = reference.clarity
    if key in seen:
        high = seen[key]
    else:
        log.warning("the checkpoint records no hand clarity statistics: 'high' uses the reference's own clarity")
        high = float(np.nanmax(own)) if np.isfinite(own).any() else float("nan")
    if isinstance(setting, str) and setting == "high":
        return np.full(2, high, np.float32)
    if isinstance(setting, str) and setting == "reference":
        return np.where(np.isfinite(own), own, high).astype(np.float32)
    try:
        value = float(setting)
    except ValueError as err:
        raise GenerateError(f"hand clarity must be 'high', 'reference' or a number >= 0, got {setting!r}") from err
    if not value >= 0:
        raise GenerateError(f"hand clarity must be >= 0, got {value}")
    if "min" in seen and not seen["min"] <= value <= seen["max"]:
        raise GenerateError(f"hand clarity {value:g} lies outside the range training saw "
                            f"[{seen['min']:.3g}, {seen['max']:.3g}]; use 'high' or a value inside it")
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
