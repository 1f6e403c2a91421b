"""Region conditions of CyberHost (Sec. 3.2-3.3): face/hand boxes, thorax trajectory, hand clarity.

All functions take keypoints in the COCO-WholeBody layout of :mod:`cyberhost.data.schema`
(``(F, 133, 3)``: x, y in pixels, confidence) and return the arrays the schema names. A region
that is absent in a frame gets NaNs, never a guess.

* Face and hand boxes: the minimal box around the region's confident points, enlarged by a
  relative margin and made square (the face crop feeds ArcFace at 256 px and hand crops the Hand
  Encoder at 128 px; a square box avoids distorting them), clipped to the frame.
* Thorax: shoulder midpoint per frame; its raw range box over a clip is the Body Movement Map's
  box before the random 100-150 % enlargement, which happens at training time.
* Hand clarity: standard deviation of the Laplacian of the grey hand crop resized to 128x128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cyberhost.data.schema import FACE, LEFT_HAND, LEFT_SHOULDER, RIGHT_HAND, RIGHT_SHOULDER

CLARITY_SIZE = 128
"""Side of the square grey crop whose Laplacian gives the hand clarity score (paper: 128 px)."""


@dataclass(frozen=True)
class RegionParams:
    """Thresholds of the region boxes.

    Attributes:
        min_confidence: a keypoint counts as present at or above this confidence.
        face_min_points: fewest confident face points (of 68) for a face box.
        hand_min_points: fewest confident hand points (of 21) for a hand box.
        face_margin: relative enlargement of the face box (0.25 adds 25 % of its size).
        hand_margin: relative enlargement of the hand boxes.
        square: make boxes square around their centre (side = the longer side).
    """

    min_confidence: float = 0.3
    face_min_points: int = 10
    hand_min_points: int = 5
    face_margin: float = 0.25
    hand_margin: float = 0.3
    square: bool = True


def points_box(points: np.ndarray, min_confidence: float, min_points: int) -> np.ndarray:
    """Minimal box around the confident points.

    Args:
        points: ``(N, 3)`` x, y, confidence.
        min_confidence: confidence a point needs to count.
        min_points: fewest confident points; fewer gives a NaN box.

    Returns:
        ``(4,)`` float32 box ``(x0, y0, x1, y1)``, NaN when too few points are confident.
    """
    ok = (points[:, 2] >= min_confidence) & np.isfinite(points[:, :2]).all(axis=1)
    if ok.sum() < max(min_points, 1):
        return np.full(4, np.nan, np.float32)
    xy = points[ok, :2]
    return np.array([*xy.min(axis=0), *xy.max(axis=0)], np.float32)


def expand_box(box: np.ndarray, margin: float, square: bool, size: tuple[int, int] | None = None) -> np.ndarray:
    """Enlarge a box about its centre and clip it to the frame.

    Args:
        box: ``(4,)`` box; NaN boxes pass through.
        margin: relative enlargement of each side (0.2 makes the box 20 % wider and taller).
        square: use the longer side for both sides before enlarging.
        size: ``(width, height)`` of the frame to clip to, or ``None`` for no clipping.

    Returns:
        ``(4,)`` float32 box.
    """
    if not np.isfinite(box).all():
        return np.full(4, np.nan, np.float32)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    if square:
        w = h = max(w, h)
    w, h = w * (1 + margin) / 2, h * (1 + margin) / 2
    out = np.array([cx - w, cy - h, cx + w, cy + h], np.float32)
    if size is not None:
        out[[0, 2]] = np.clip(out[[0, 2]], 0, size[0])
        out[[1, 3]] = np.clip(out[[1, 3]], 0, size[1])
    return out


def face_boxes(keypoints: np.ndarray, size: tuple[int, int] | None, params: RegionParams = RegionParams()) -> np.ndarray:
    """Face box per frame from the 68 face points.

    Args:
        keypoints: ``(F, 133, 3)``.
        size: ``(width, height)`` of the frames, or ``None``.
        params: thresholds and margins.

    Returns:
        ``(F, 4)`` float32, NaN rows where the face is absent.
    """
    out = [points_box(k[FACE], params.min_confidence, params.face_min_points) for k in keypoints]
    return np.stack([expand_box(b, params.face_margin, params.square, size) for b in out]).reshape(-1, 4)


def hand_boxes(keypoints: np.ndarray, size: tuple[int, int] | None, params: RegionParams = RegionParams()) -> np.ndarray:
    """Left and right hand boxes per frame from the 2x21 hand points.

    Args:
        keypoints: ``(F, 133, 3)``.
        size: ``(width, height)`` of the frames, or ``None``.
        params: thresholds and margins.

    Returns:
        ``(F, 2, 4)`` float32 (index 0 the left hand), NaN where a hand is absent.
    """
    out = np.full((len(keypoints), 2, 4), np.nan, np.float32)
    for f, k in enumerate(keypoints):
        for h, part in enumerate((LEFT_HAND, RIGHT_HAND)):
            box = points_box(k[part], params.min_confidence, params.hand_min_points)
            out[f, h] = expand_box(box, params.hand_margin, params.square, size)
    return out


def thorax(keypoints: np.ndarray, min_confidence: float = 0.3) -> np.ndarray:
    """Shoulder midpoint per frame.

    Args:
        keypoints: ``(F, 133, 3)``.
        min_confidence: both shoulders need at least this confidence.

    Returns:
        ``(F, 2)`` float32, NaN where a shoulder is missing.
    """
    left, right = keypoints[:, LEFT_SHOULDER], keypoints[:, RIGHT_SHOULDER]
    mid = ((left[:, :2] + right[:, :2]) / 2).astype(np.float32)
    ok = (left[:, 2] >= min_confidence) & (right[:, 2] >= min_confidence)
    mid[~ok] = np.nan
    return mid


def movement_range(trajectory: np.ndarray) -> np.ndarray:
    """Raw box of a point's range over a clip (the Body Movement Map box before enlargement).

    Args:
        trajectory: ``(F, 2)`` points, NaN rows ignored.

    Returns:
        ``(4,)`` float32 ``(x0, y0, x1, y1)``; NaN when no frame has the point.
    """
    ok = np.isfinite(trajectory).all(axis=1)
    if not ok.any():
        return np.full(4, np.nan, np.float32)
    xy = trajectory[ok]
    return np.array([*xy.min(axis=0), *xy.max(axis=0)], np.float32)


def laplacian_std(grey: np.ndarray) -> float:
    """Standard deviation of the 4-neighbour Laplacian, borders reflected without repeating the edge.

    ``cv2.Laplacian`` with ``ksize=1``: the kernel ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` and
    ``BORDER_REFLECT_101`` (``gfedcb|abcdefgh|gfedcba``), computed in float64.

    Args:
        grey: ``(H, W)`` image.

    Returns:
        The population standard deviation of the Laplacian.
    """
    src = grey if grey.dtype in (np.uint8, np.float64) else grey.astype(np.float64)  # OpenCV: no float32 -> CV_64F
    return float(cv2.Laplacian(src, cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT_101).std())


def crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """Pixels of a box, its float bounds widened to whole pixels and clipped to the frame.

    Args:
        frame: ``(H, W, C)`` image.
        box: ``(4,)`` box.

    Returns:
        The crop, or ``None`` for a NaN box or one with less than 2x2 pixels inside the frame.
    """
    if not np.isfinite(box).all():
        return None
    h, w = frame.shape[:2]
    x0, y0 = max(math.floor(box[0]), 0), max(math.floor(box[1]), 0)
    x1, y1 = min(math.ceil(box[2]), w), min(math.ceil(box[3]), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return frame[y0:y1, x0:x1]


def clarity(frame: np.ndarray, box: np.ndarray) -> float:
    """Hand Clarity Score of one region: std of the Laplacian of the 128x128 grey crop.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB frame.
        box: ``(4,)`` region box.

    Returns:
        The score, NaN when the box is absent or empty.
    """
    patch = crop(frame, box)
    if patch is None:
        return math.nan
    grey = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (CLARITY_SIZE, CLARITY_SIZE), interpolation=cv2.INTER_AREA)
    return laplacian_std(grey)


def hand_clarity(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Hand clarity per frame and hand.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        boxes: ``(F, 2, 4)`` hand boxes.

    Returns:
        ``(F, 2)`` float32, NaN where a hand is absent.
    """
    out = np.full(boxes.shape[:2], np.nan, np.float32)
    for f in range(len(frames)):
        for h in range(boxes.shape[1]):
            out[f, h] = clarity(frames[f], boxes[f, h])
    return out
