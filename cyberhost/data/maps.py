"""Condition maps drawn from keypoints and boxes (CyberHost Sec. 3.3, human-prior conditions).

* **Skeleton map** (pose-aligned reference feature): the COCO-WholeBody limbs of the reference
  frame drawn in colour on black, OpenPose/DWPose style (body and feet limbs, hand bones, face
  points).
* **Body movement map**: the box of the thorax point's range over the clip, enlarged about its
  centre by a random factor in ``[1.0, 1.5]`` (the paper's "100-150 %": the drawn box is 100 % to
  150 % of the raw range box per side) and drawn as a filled white box on black.
* **Region masks**: filled face/hand boxes, used for the loss reweighting mask.

Everything here works in pixel coordinates of the (already cropped and resized) frame and
returns ``uint8`` ``(H, W, 3)`` images or ``float32`` masks, so the same functions serve
training and inference.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from cyberhost.data.schema import BODY, FACE, FEET, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND

BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
"""COCO body skeleton (indices into the 17 body points)."""
FEET_LIMBS: tuple[tuple[int, int], ...] = ((15, 17), (15, 18), (15, 19), (16, 20), (16, 21), (16, 22))
"""Ankle to foot points (indices into the 133-point layout)."""
HAND_BONES: tuple[tuple[int, int], ...] = tuple(
    (0 if j == 0 else 4 * f + j, 4 * f + j + 1) for f in range(5) for j in range(4)
)
"""The 20 bones of a 21-point hand: wrist to each finger base, then along the finger."""

MOVEMENT_SCALE = (1.0, 1.5)
"""Default range of the random movement-box enlargement factor (paper: 100-150 %)."""


def _palette(n: int, value: float = 1.0) -> list[tuple[int, int, int]]:
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 1.0, value)) for i in range(n)]


_BODY_COLOURS = _palette(len(BODY_LIMBS) + len(FEET_LIMBS))
_HAND_COLOURS = _palette(len(HAND_BONES))


def _visible(points: np.ndarray, min_confidence: float) -> np.ndarray:
    return (points[:, 2] >= min_confidence) & np.isfinite(points[:, :2]).all(axis=1)


def _line(img: np.ndarray, a: np.ndarray, b: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
    cv2.line(img, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), colour, width, cv2.LINE_AA)


def draw_skeleton(
    keypoints: np.ndarray, size: tuple[int, int], min_confidence: float = 0.3, width: int | None = None
) -> np.ndarray:
    """Draw COCO-WholeBody limbs, hand bones and face points.

    Args:
        keypoints: ``(133, 3)`` x, y (pixels of the target image), confidence.
        size: ``(height, width)`` of the map.
        min_confidence: points below this confidence are not drawn.
        width: limb line width in pixels; default scales with the image (``max(1, min(H, W) // 100)``).

    Returns:
        ``(H, W, 3)`` uint8 RGB skeleton on black.
    """
    if keypoints.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be ({NUM_KEYPOINTS}, 3), got {keypoints.shape}")
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    lw = width if width is not None else max(1, min(h, w) // 100)
    ok = _visible(keypoints, min_confidence)
    body = np.arange(NUM_KEYPOINTS)[BODY]
    limbs = [(body[a], body[b]) for a, b in BODY_LIMBS] + list(FEET_LIMBS)
    for (a, b), colour in zip(limbs, _BODY_COLOURS, strict=True):
        if ok[a] and ok[b]:
            _line(img, keypoints[a], keypoints[b], colour, lw * 2)
    for part in (LEFT_HAND, RIGHT_HAND):
        base = part.start
        for (a, b), colour in zip(HAND_BONES, _HAND_COLOURS, strict=True):
            if ok[base + a] and ok[base + b]:
                _line(img, keypoints[base + a], keypoints[base + b], colour, lw)
    radius = max(1, lw)
    for i in range(FACE.start, FACE.stop):
        if ok[i]:
            cv2.circle(img, (round(keypoints[i, 0]), round(keypoints[i, 1])), radius, (255, 255, 255), -1)
    for i in range(BODY.start, FEET.stop):
        if ok[i]:
            cv2.circle(img, (round(keypoints[i, 0]), round(keypoints[i, 1])), radius + lw, (255, 255, 255), -1)
    return img


def enlarge_box(box: np.ndarray, scale: float, min_side: float = 0.0) -> np.ndarray:
    """Scale a box about its centre.

    Args:
        box: ``(4,)`` ``(x0, y0, x1, y1)``.
        scale: side-length factor (1.0 keeps the box, 1.5 makes each side 150 %).
        min_side: each side is at least this long before scaling (a still thorax has a near-empty range).

    Returns:
        ``(4,)`` float32 box (not clipped; drawing clips).
    """
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw = max(box[2] - box[0], min_side) * scale / 2
    hh = max(box[3] - box[1], min_side) * scale / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)


def random_movement_box(
    box: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = MOVEMENT_SCALE, min_side: float = 0.0
) -> tuple[np.ndarray, float]:
    """Enlarge the raw movement range box by a random factor (training-time augmentation).

    Args:
        box: raw ``(4,)`` thorax range box.
        rng: random generator of this sample.
        scale: ``(low, high)`` of the uniform enlargement factor.
        min_side: minimum side before enlargement, pixels.

    Returns:
        The enlarged box and the factor drawn.
    """
    factor = float(rng.uniform(scale[0], scale[1]))
    return enlarge_box(box, factor, min_side), factor


def draw_box(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Draw a filled white box on black (the body movement map).

    Args:
        box: ``(4,)`` pixel box; parts outside the image are clipped, a NaN box draws nothing.
        size: ``(height, width)``.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    img = np.zeros((*size, 3), np.uint8)
    if np.isfinite(box).all():
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(size[1], int(np.ceil(box[2]))), min(size[0], int(np.ceil(box[3])))
        img[y0:y1, x0:x1] = 255
    return img


def box_mask(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Union of filled boxes as a mask.

    Args:
        boxes: ``(N, 4)`` pixel boxes, NaN rows ignored.
        size: ``(height, width)``.

    Returns:
        ``(H, W)`` float32 in {0, 1}.
    """
    out = np.zeros(size, np.float32)
    for box in boxes.reshape(-1, 4):
        out = np.maximum(out, draw_box(box, size)[..., 0].astype(np.float32) / 255.0)
    return out
