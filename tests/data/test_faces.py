"""Face alignment onto the ArcFace template (cyberhost.data.faces)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata
from skimage.transform import SimilarityTransform

from cyberhost.data.faces import ARCFACE_TEMPLATE_112, align_face_crop, similarity_transform

SIDE = 256
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)], np.float64)


def _synthetic_face(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey photo texture with five coloured dots at the landmarks and 68 keypoints that yield them.

    Returns:
        ``(image (512, 512, 3) uint8, keypoints (68, 3), landmarks (5, 2))``.
    """
    rng = np.random.default_rng(seed)
    grey = cv2.GaussianBlur(cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY), (0, 0), 2.0)
    image = np.repeat((60 + grey.astype(np.float64) * 130 / 255).astype(np.uint8)[..., None], 3, axis=2)
    # the landmarks: an arbitrary similarity of the template (rotated 10 degrees, scale 2.1)
    c, s = 2.1 * np.cos(np.radians(10)), 2.1 * np.sin(np.radians(10))
    landmarks = ARCFACE_TEMPLATE_112 @ np.array([[c, s], [-s, c]]) + np.array([150.0, 110.0])
    for point, colour in zip(landmarks, COLOURS, strict=True):
        cv2.circle(image, (int(round(point[0] * 16)), int(round(point[1] * 16))), 5 * 16,
                   tuple(int(v) for v in colour), -1, cv2.LINE_AA, shift=4)
    kps = np.column_stack([rng.uniform(100, 400, (68, 2)), np.full(68, 0.9)])
    ring = 6.0 * np.column_stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)])
    kps[36:42, :2], kps[42:48, :2] = landmarks[0] + ring, landmarks[1] + ring  # contours centred on the eyes
    kps[30, :2], kps[48, :2], kps[54, :2] = landmarks[2], landmarks[3], landmarks[4]
    return image, kps, landmarks


def _dot_centres(crop: np.ndarray) -> np.ndarray:
    """Centroid of each coloured dot in ``crop`` (found by colour, not by the transform)."""
    out = []
    for colour in COLOURS:
        near = np.abs(crop.astype(np.float64) - colour).max(axis=2) < 50
        ys, xs = np.nonzero(near)
        assert len(xs) > 10, f"dot {colour} not found"
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def _warp(image: np.ndarray, kps: np.ndarray, mat: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    moved = cv2.warpAffine(image, mat, (size, size), flags=cv2.INTER_LINEAR)
    pts = kps.copy()
    pts[:, :2] = kps[:, :2] @ mat[:, :2].T + mat[:, 2]
    return moved, pts


def test_aligned_crops_agree_under_a_similarity_and_land_on_the_template() -> None:
    image, kps, _ = _synthetic_face()
    mat = cv2.getRotationMatrix2D((256.0, 256.0), 35.0, 1.25)  # rotate 35 degrees, scale 1.25 about the centre
    mat[:, 2] += 128.0  # into a 768-px canvas so the face stays whole
    moved, moved_kps = _warp(image, kps, mat, 768)
    a, ok_a = align_face_crop(image, kps, SIDE, min_confidence=0.5)
    b, ok_b = align_face_crop(moved, moved_kps, SIDE, min_confidence=0.5)
    assert ok_a and ok_b and a.shape == b.shape == (SIDE, SIDE, 3) and a.dtype == np.uint8
    template = ARCFACE_TEMPLATE_112 * SIDE / 112
    for crop in (a, b):
        np.testing.assert_allclose(_dot_centres(crop), template, atol=0.75)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))[16:-16, 16:-16]  # the border depends on the canvas
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 30
    # an unaligned crop of the moved image does not agree: the test can tell
    assert np.abs(cv2.resize(moved[200:600, 200:600], (SIDE, SIDE)).astype(np.float64) - a).mean() > 10


def test_three_landmarks_suffice() -> None:
    image, kps, _ = _synthetic_face()
    kps[[48, 54], 2] = 0.1  # both mouth corners unsure: eyes and nose remain
    crop, ok = align_face_crop(image, kps, SIDE, min_confidence=0.5)
    assert ok
    np.testing.assert_allclose(_dot_centres(crop), ARCFACE_TEMPLATE_112 * SIDE / 112, atol=0.75)


@pytest.mark.parametrize("case", ["low_confidence", "nan", "half_eyes", "coincident"])
def test_not_enough_points_gives_black_and_false(case: str) -> None:
    image, kps, _ = _synthetic_face()
    if case == "low_confidence":
        kps[:, 2] = 0.2
        kps[[30, 48], 2] = 0.9  # two landmarks only, fewer than min_landmarks=3
    elif case == "nan":
        kps[:] = np.nan
    elif case == "half_eyes":
        kps[[36, 37, 38, 39, 42, 43, 44, 45, 30], 2] = 0.0  # 2 of 6 per eye, no nose: only the mouth corners
    else:
        kps[:, :2] = 200.0  # every point in one place
    crop, ok = align_face_crop(image, kps, SIDE, min_confidence=0.5)
    assert not ok and crop.shape == (SIDE, SIDE, 3) and not crop.any()


def test_similarity_matches_scikit_image_least_squares() -> None:
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 300, (5, 2))
    truth = cv2.getRotationMatrix2D((40.0, 70.0), -20.0, 0.8)
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)
    noisy = dst + rng.normal(0, 3.0, dst.shape)
    reference = SimilarityTransform.from_estimate(src, noisy)  # Umeyama's least squares
    np.testing.assert_allclose(similarity_transform(src, noisy), reference.params[:2], atol=1e-9)
