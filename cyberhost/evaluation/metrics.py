"""Per-video metrics: SSIM, PSNR (torchmetrics), HKC and HKV (hand keypoints), and the keypoint adapter.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from cyberhost.data.schema import HANDS, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER

__all__ = [
    "KeypointFn",
    "backend_keypoint_fn",
    "body_found",
    "frame_metrics",
    "hand_keypoint_confidence",
    "hand_keypoint_variance",
    "match_ground_truth",
    "resize_frames",
]

MIN_CONFIDENCE = 0.3
HKV_SHORT_SIDE = 512
PSNR_MAX_DB = 100.0

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


def backend_keypoint_fn(name: str = "mediapipe", **options: object) -> KeypointFn:
    """Wrap the project's keypoint backend (:mod:`cyberhost.data.keypoints`) as a :data:`KeypointFn`.

    Each call resets the backend's tracker (one call = one video) and keeps the dominant person
    per frame; frames without a person get zeros (confidence 0).

    Args:
        name: backend name for :func:`cyberhost.data.keypoints.make_backend` (``mediapipe``, ``rtmlib``).
        **options: backend options (rtmlib needs its local ONNX paths).
    """
    from cyberhost.data.keypoints import dominant_person, make_backend

    backend = make_backend(name, **options)

    def run(frames: np.ndarray) -> np.ndarray:
        backend.reset()
        out = np.zeros((len(frames), NUM_KEYPOINTS, 3), np.float32)
        for t, frame in enumerate(frames):
            out[t] = dominant_person(backend(np.ascontiguousarray(frame)))[0]
        return out

    return run
