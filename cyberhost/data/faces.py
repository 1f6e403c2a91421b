"""Face crop of the reference, aligned to the ArcFace 5-point template (CyberHost Sec. 3.2, identity descriptor).

ArcFace was trained on faces warped by a similarity transform onto a fixed 5-point template
(eye centres, nose tip, mouth corners) in a 112x112 image; a face given to it any other way
(an unaligned box crop) yields a much weaker identity embedding. The paper feeds a 256-px face
crop, so :func:`align_face_crop` warps the reference frame onto that template scaled from 112 to
``side`` (uniformly, no offset: resizing the result to 112 gives exactly the ArcFace input) and
the network only resizes it (:func:`cyberhost.models.arcface.align_face`).

The five landmarks come from the 68 face points of the COCO-WholeBody layout (points 23..90 of
133, which follow the iBUG-68 order):

* eye centres: the mean of each eye contour (iBUG 36-41 on the image's left, 42-47 on its right),
* nose tip: iBUG 30,
* mouth corners: iBUG 48 (image left) and 54 (image right).

The transform is the least-squares similarity (rotation, uniform scale, translation; no
reflection) between the confident landmarks and the template, in closed form.
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # eye on the image's left (the person's right eye)
        [73.5318, 51.5014],  # eye on the image's right
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # mouth corner, image left
        [70.7299, 92.2041],  # mouth corner, image right
    ],
    np.float64,
)
"""The standard ArcFace (insightface) 5-point template in 112x112 pixel coordinates."""

LANDMARK_SOURCES: tuple[tuple[int, ...], ...] = (
    tuple(range(36, 42)),  # eye contour, image left
    tuple(range(42, 48)),  # eye contour, image right
    (30,),  # nose tip
    (48,),  # outer mouth corner, image left
    (54,),  # outer mouth corner, image right
)
"""iBUG-68 indices averaged into each template landmark."""


def arcface_template(side: int) -> np.ndarray:
    """The ArcFace template scaled from 112 px to a ``side``-px square, ``(5, 2)`` pixels."""
    return ARCFACE_TEMPLATE_112 * (side / 112.0)


def five_landmarks(face_keypoints: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The five template landmarks from 68 iBUG-ordered face points.

    Args:
        face_keypoints: ``(68, 3)`` x, y (pixels), confidence; NaN counts as not confident.
        min_confidence: a point counts at or above this confidence.

    Returns:
        ``(points (5, 2), ok (5,) bool)``. An eye centre needs at least half of its contour
        points; a single-point landmark needs that point. Points that are not ok are NaN.
    """
    kps = np.asarray(face_keypoints, np.float64)
    if kps.shape != (68, 3):
        raise ValueError(f"expected 68 face keypoints (x, y, confidence), got shape {kps.shape}")
    good = np.isfinite(kps).all(axis=1) & (kps[:, 2] >= min_confidence)
    points = np.full((5, 2), np.nan)
    ok = np.zeros(5, bool)
    for i, source in enumerate(LANDMARK_SOURCES):
        idx = [j for j in source if good[j]]
        if 2 * len(idx) >= len(source):
            points[i], ok[i] = kps[idx, :2].mean(axis=0), True
    return points, ok


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` (no reflection), as a ``(2, 3)`` affine matrix.

    With points as complex numbers the model is ``y = a x + b``; its least-squares solution is
    ``a = <x_c, y_c> / <x_c, x_c>`` on the centred points (Umeyama's result in 2-D).
    """
    x = src[:, 0] + 1j * src[:, 1]
    y = dst[:, 0] + 1j * dst[:, 1]
    xc, yc = x - x.mean(), y - y.mean()
    a = np.vdot(xc, yc) / max(np.vdot(xc, xc).real, 1e-12)
    b = y.mean() - a * x.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float64)


def align_face_crop(
    frame: np.ndarray,
    face_keypoints: np.ndarray,
    side: int = 256,
    min_confidence: float = 0.3,
    min_landmarks: int = 3,
) -> tuple[np.ndarray, bool]:
    """Warp the face of ``frame`` onto the ArcFace template at ``side`` px.

    Args:
        frame: ``(H, W, 3)`` uint8 image the keypoints refer to.
        face_keypoints: ``(68, 3)`` face points in pixels of ``frame`` (COCO-WholeBody points
            23..90, iBUG-68 order) with their confidence; NaN where absent.
        side: output size (the paper's 256).
        min_confidence: a keypoint counts at or above this confidence.
        min_landmarks: confident landmarks (of 5) needed; 2 fix a similarity, 3 make it robust
            to one misplaced point.

    Returns:
        ``((side, side, 3) uint8, True)``, or a black image and False when fewer than
        ``min_landmarks`` landmarks are confident or they do not span a face (coincident points).
    """
    black = np.zeros((side, side, 3), np.uint8)
    points, ok = five_landmarks(face_keypoints, min_confidence)
    if ok.sum() < max(min_landmarks, 2):
        return black, False
    src, dst = points[ok], arcface_template(side)[ok]
    spread = np.linalg.norm(src - src.mean(axis=0), axis=1).max()
    if not spread > 1.0:  # all landmarks within a pixel: no usable face
        return black, False
    mat = similarity_transform(src, dst)
    if not np.isfinite(mat).all():
        return black, False
    out = cv2.warpAffine(np.ascontiguousarray(frame), mat, (side, side), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return out, True


__all__ = ["ARCFACE_TEMPLATE_112", "LANDMARK_SOURCES", "align_face_crop", "arcface_template", "five_landmarks",
           "similarity_transform"]
