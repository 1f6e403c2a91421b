"""Per-video metrics: SSIM, PSNR (torchmetrics), HKC, HKV and AKD (keypoints), and the keypoint adapter.

Protocol (numbers are only comparable when these match):

* **Ground truth of another size** (:func:`match_ground_truth`, used for SSIM, PSNR, FID, FVD
  and the CSIM reference fallback): the ground truth is brought to the generated framing, never
  the other way round: centre-cropped to the largest window of the generated aspect ratio, then
  resized to the generated size (bilinear, antialiased); the per-video notes say what was done.
  Generated frames are never resampled. For comparable numbers make the ground-truth clips at
  the generated framing; the centre crop is the fallback when they are not.
* **SSIM / PSNR**: every frame of the generated video against the frame with the same index of
  the ground truth, at the generated resolution (ground truth matched as above), RGB in ``[0, 1]``
  (``data_range = 1``). SSIM: Gaussian window 11, σ = 1.5, K1 = 0.01, K2 = 0.03, computed per
  channel and averaged, borders cropped as torchmetrics does. PSNR per frame over all pixels
  and channels, capped at 100 dB (identical frames would give infinity). The video's value is
  the mean over frames; the data set's value is the mean over videos.
* **HKC** (hand keypoint confidence): over the frames where the body is found (both shoulders,
  COCO points 5 and 6, at confidence ≥ 0.3), the mean confidence of the 42 hand points
  (COCO-WholeBody 91-132; an undetected hand counts 0). With the MediaPipe backend hand points
  carry confidence 1 when the hand is detected, so HKC there is the hand detection rate;
  DWPose/RTMW (rtmlib) give per-point scores like the detectors used in the literature.
* **HKV** (hand keypoint variance): coordinates are rescaled to a 512-pixel short side
  (``x · 512 / min(H, W)``); for each of the 42 points and each axis, the population standard
  deviation over the frames where the body is found and that point has confidence ≥ 0.3 (at
  least 2 such frames); HKV is the mean of those 84 (or fewer) standard deviations, in pixels
  at 512 short side. Raw image coordinates, no body-motion compensation.
* **AKD** (average keypoint distance, the video-driven setting's pose-accuracy metric;
  :func:`average_keypoint_distance`): keypoints of the dominant person are detected in every
  generated frame and in the ground-truth frame with the same index (ground truth matched to the
  generated size as above, so both are in pixels of the evaluated, i.e. generated, frame size).
  The points are the 17 COCO body points (0-16) and the 42 hand points (91-132), 59 in all; the
  68 face points are left out (they would outnumber the body and move with the head as one
  block; MediaPipe gives them no per-point score) and so are the 6 feet points (rarely in a
  half-body frame; MediaPipe has no small toes). A point counts in a frame when its confidence
  is ≥ 0.3 in *both* frames; the frame's distance is the mean Euclidean distance of those points
  in pixels (every counted point weighs the same, so hands weigh 42/59 when fully visible). The
  video's ``akd`` is the mean over the frames with at least one counted point; frames with none
  are not scored 0 but counted as ``akd_skipped_frames`` (``akd_frames`` counts the scored
  ones); a video with no scored frame has no AKD. The data set's value is the mean over videos.
  ``akd_norm`` is the video's ``akd`` divided by the ground-truth person's size: the median over
  ground-truth frames of the diagonal of the box around the confident body points (frames with
  at least 2; one size per video, as a per-frame box jumps when an elbow or hip leaves the
  frame). It is unitless and comparable across resolutions; ``akd`` in pixels is only
  comparable at equal generated resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from cyberhost.data.schema import BODY, HANDS, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER

__all__ = [
    "AKD_POINTS",
    "KeypointDistance",
    "KeypointFn",
    "average_keypoint_distance",
    "backend_keypoint_fn",
    "body_found",
    "frame_keypoint_distances",
    "frame_metrics",
    "hand_keypoint_confidence",
    "hand_keypoint_variance",
    "match_ground_truth",
    "person_scale",
    "resize_frames",
]

MIN_CONFIDENCE = 0.3
HKV_SHORT_SIDE = 512
PSNR_MAX_DB = 100.0
AKD_POINTS = np.r_[BODY, HANDS]
"""COCO-WholeBody indices AKD compares: body 0-16 and hands 91-132 (59 points; no face, no feet)."""

KeypointFn = Callable[[np.ndarray], np.ndarray]
"""Maps ``uint8`` RGB frames ``(F, H, W, 3)`` to COCO-WholeBody keypoints ``(F, 133, 3)``."""


def resize_frames(frames: np.ndarray, size: tuple[int, int], chunk: int = 16) -> np.ndarray:
    """Resize ``uint8`` ``(F, H, W, 3)`` to ``size = (H', W')`` (bilinear, antialiased), ``chunk`` frames at a time."""
    out = np.empty((len(frames), *size, 3), np.uint8)
    for i in range(0, len(frames), chunk):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def centre_crop_box(size: tuple[int, int], aspect_of: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the largest centred window of ``size`` with the aspect ratio of ``aspect_of``.

    Both are ``(H, W)``; the window keeps the full height when ``size`` is relatively wider, else the full width.
    """
    (h, w), (th, tw) = size, aspect_of
    if w * th > tw * h:  # wider than the target: crop the sides
        ch, cw = h, min(w, round(h * tw / th))
    else:  # taller: crop top and bottom
        ch, cw = min(h, round(w * th / tw)), w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def match_ground_truth(ground_truth: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """The ground truth at the generated framing: centre crop to the generated aspect ratio, then resize.

    Args:
        ground_truth: ``uint8`` ``(F, H, W, 3)``.
        size: the generated ``(H', W')``.

    Returns:
        ``(frames (F, H', W', 3), note)``; the note says what was done (None when nothing was).
    """
    h, w = ground_truth.shape[1:3]
    if (h, w) == tuple(size):
        return ground_truth, None
    top, left, ch, cw = centre_crop_box((h, w), size)
    frames = ground_truth[:, top : top + ch, left : left + cw]
    note = f"ground truth {w}x{h}"
    if (ch, cw) != (h, w):
        note += f" centre-cropped to {cw}x{ch} (the generated aspect ratio)"
    if (ch, cw) != tuple(size):
        frames = resize_frames(frames, size)
        note += f"{' and' if (ch, cw) != (h, w) else ''} resized to {size[1]}x{size[0]} (the generated size)"
    return frames, note


def frame_metrics(generated: np.ndarray, target: np.ndarray, chunk: int = 16) -> dict[str, float]:
    """Mean SSIM and PSNR over frames.

    Args:
        generated: ``uint8`` ``(F, H, W, 3)``.
        target: ``uint8`` ``(F, H, W, 3)`` of the same shape.
        chunk: frames per torchmetrics call (bounds memory).

    Returns:
        ``{"ssim": ..., "psnr": ...}``.

    Raises:
        ValueError: the shapes differ.
    """
    if generated.shape != target.shape:
        raise ValueError(f"generated {generated.shape} and ground truth {target.shape} differ in shape")
    ssims, psnrs = [], []
    for start in range(0, len(generated), chunk):
        g = torch.from_numpy(generated[start : start + chunk]).permute(0, 3, 1, 2).double() / 255
        t = torch.from_numpy(target[start : start + chunk]).permute(0, 3, 1, 2).double() / 255
        ssim = structural_similarity_index_measure(
            g, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, k1=0.01, k2=0.03, reduction="none"
        )
        ssims.append(ssim.reshape(-1))
        psnr = peak_signal_noise_ratio(g, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
        psnrs.append(psnr.reshape(-1).clamp_max(PSNR_MAX_DB))  # identical frames: 100 dB, not inf
    return {"ssim": float(torch.cat(ssims).mean()), "psnr": float(torch.cat(psnrs).mean())}


def body_found(keypoints: np.ndarray, min_confidence: float = MIN_CONFIDENCE) -> np.ndarray:
    """``(F,)`` bool: both shoulders are at or above ``min_confidence``."""
    conf = keypoints[:, [LEFT_SHOULDER, RIGHT_SHOULDER], 2]
    return (conf >= min_confidence).all(axis=1)


def _check(keypoints: np.ndarray) -> None:
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be (F, {NUM_KEYPOINTS}, 3), got {keypoints.shape}")


def hand_keypoint_confidence(keypoints: np.ndarray) -> float:
    """HKC of one clip: mean confidence of the 42 hand points over frames with a body (NaN if none).

    Args:
        keypoints: ``(F, 133, 3)`` x, y, confidence.
    """
    _check(keypoints)
    found = body_found(keypoints)
    if not found.any():
        return math.nan
    return float(keypoints[found][:, HANDS, 2].mean())


def hand_keypoint_variance(
    keypoints: np.ndarray, frame_size: tuple[int, int], min_confidence: float = MIN_CONFIDENCE
) -> float:
    """HKV of one clip: mean over hand points and axes of the std of their coordinates (NaN if none).

    Args:
        keypoints: ``(F, 133, 3)`` x, y (pixels of ``frame_size``), confidence.
        frame_size: ``(H, W)`` of the frames the keypoints are in.
        min_confidence: a hand point counts in a frame at or above this confidence.

    Returns:
        Pixels at a 512-pixel short side.
    """
    _check(keypoints)
    scale = HKV_SHORT_SIDE / min(frame_size)
    hands = keypoints[body_found(keypoints)][:, HANDS]  # (F', 42, 3)
    stds = []
    for point in range(hands.shape[1]):
        xy = hands[hands[:, point, 2] >= min_confidence, point, :2].astype(np.float64) * scale
        if len(xy) >= 2:
            stds.extend(xy.std(axis=0))
    return float(np.mean(stds)) if stds else math.nan


def frame_keypoint_distances(
    generated: np.ndarray,
    ground_truth: np.ndarray,
    min_confidence: float = MIN_CONFIDENCE,
    points: np.ndarray = AKD_POINTS,
) -> np.ndarray:
    """Per frame, the mean pixel distance of the ``points`` confident in both frames.

    Args:
        generated: ``(F, 133, 3)`` x, y, confidence of the generated frames.
        ground_truth: ``(F, 133, 3)`` of the ground-truth frames, in the same pixel frame.
        min_confidence: a point counts when its confidence is at or above this in both.
        points: the COCO-WholeBody indices compared.

    Returns:
        ``(F,)`` float64, NaN where no point counts.

    Raises:
        ValueError: wrong or differing shapes.
    """
    _check(generated)
    _check(ground_truth)
    if generated.shape != ground_truth.shape:
        raise ValueError(f"generated keypoints {generated.shape} and ground truth {ground_truth.shape} differ")
    gen = generated[:, points].astype(np.float64)  # (F, P, 3)
    gt = ground_truth[:, points].astype(np.float64)
    used = (gen[..., 2] >= min_confidence) & (gt[..., 2] >= min_confidence)  # (F, P)
    dist = np.linalg.norm(gen[..., :2] - gt[..., :2], axis=-1)  # (F, P)
    count = used.sum(axis=1)
    total = np.where(used, dist, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def person_scale(keypoints: np.ndarray, min_confidence: float = MIN_CONFIDENCE) -> float:
    """Median over frames of the diagonal of the box around the confident body points (NaN if none).

    Frames with fewer than 2 confident body points (COCO 0-16), or a zero-size box, do not count.

    Args:
        keypoints: ``(F, 133, 3)``.
        min_confidence: confidence a body point needs.
    """
    _check(keypoints)
    diagonals = []
    for body in keypoints[:, BODY].astype(np.float64):
        xy = body[body[:, 2] >= min_confidence, :2]
        if len(xy) >= 2:
            diagonal = float(np.linalg.norm(xy.max(axis=0) - xy.min(axis=0)))
            if diagonal > 0:
                diagonals.append(diagonal)
    return float(np.median(diagonals)) if diagonals else math.nan


@dataclass(frozen=True)
class KeypointDistance:
    """AKD of one clip (see the module docstring for the protocol).

    Attributes:
        akd: mean over scored frames of the per-frame mean distance, pixels (NaN: no scored frame).
        akd_norm: ``akd`` / ``scale`` (NaN when either is).
        frames: frames with at least one point confident in both (scored).
        skipped_frames: frames with none (not scored, not counted as 0).
        scale: the ground-truth person's size, pixels (:func:`person_scale`).
    """

    akd: float
    akd_norm: float
    frames: int
    skipped_frames: int
    scale: float


def average_keypoint_distance(
    generated: np.ndarray, ground_truth: np.ndarray, min_confidence: float = MIN_CONFIDENCE
) -> KeypointDistance:
    """AKD of one clip: body and hand points of generated vs ground-truth frames paired by index.

    Args:
        generated: ``(F, 133, 3)`` keypoints of the generated frames (pixels of the evaluated size).
        ground_truth: ``(F, 133, 3)`` keypoints of the ground-truth frames at the same size.
        min_confidence: a point counts when its confidence is at or above this in both frames.

    Returns:
        The clip's :class:`KeypointDistance`.
    """
    per_frame = frame_keypoint_distances(generated, ground_truth, min_confidence)
    scored = per_frame[~np.isnan(per_frame)]
    akd = float(scored.mean()) if len(scored) else math.nan
    scale = person_scale(ground_truth, min_confidence)
    return KeypointDistance(akd, akd / scale, len(scored), len(per_frame) - len(scored), scale)


def backend_keypoint_fn(name: str = "mediapipe", **options: object) -> KeypointFn:
    """Wrap the project's keypoint backend (:mod:`cyberhost.media.keypoints`) as a :data:`KeypointFn`.

    Each call resets the backend's tracker (one call = one video) and keeps the dominant person
    per frame; frames without a person get zeros (confidence 0).

    Args:
        name: backend name for :func:`cyberhost.media.keypoints.make_backend` (``mediapipe``, ``rtmlib``).
        **options: backend options (rtmlib needs its local ONNX paths).
    """
    from cyberhost.media.keypoints import dominant_person, make_backend

    backend = make_backend(name, **options)

    def run(frames: np.ndarray) -> np.ndarray:
        backend.reset()
        out = np.zeros((len(frames), NUM_KEYPOINTS, 3), np.float32)
        for t, frame in enumerate(frames):
            out[t] = dominant_person(backend(np.ascontiguousarray(frame)))[0]
        return out

    return run
