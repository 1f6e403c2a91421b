"""Region boxes, thorax range and hand clarity against independent computations."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from cyberhost.data import regions
from cyberhost.data.schema import FACE, LEFT_HAND, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_HAND, RIGHT_SHOULDER

P = regions.RegionParams(min_confidence=0.5, face_min_points=3, hand_min_points=3, face_margin=0.5, hand_margin=0.0)


def _empty(frames: int = 1) -> np.ndarray:
    return np.zeros((frames, NUM_KEYPOINTS, 3), np.float32)


def _reference_clarity(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> float:
    grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (128, 128), interpolation=cv2.INTER_AREA)
    return _reference_laplacian_std(grey)


def _reference_laplacian_std(grey: np.ndarray) -> float:
    """SciPy's Laplacian (sum of the [1, -2, 1] second differences); ``mirror`` is OpenCV's BORDER_REFLECT_101."""
    return float(ndimage.laplace(grey.astype(np.float64), mode="mirror").std())


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7), (128, 128)])
def test_laplacian_std_matches_scipy_including_borders(dtype, shape):
    rng = np.random.default_rng(shape[0])
    grey = (rng.random(shape) * 255).astype(dtype)
    assert regions.laplacian_std(grey) == pytest.approx(_reference_laplacian_std(grey), rel=1e-6)
    # on a 5x7 image most pixels touch a border: another border convention gives another value
    if shape == (5, 7):
        other = float(ndimage.laplace(grey.astype(np.float64), mode="reflect").std())
        assert regions.laplacian_std(grey) != pytest.approx(other, rel=1e-3)


def test_laplacian_std_of_a_known_image():
    grey = np.zeros((3, 3), np.uint8)
    grey[1, 1] = 1  # by hand: -4 at the centre; an edge pixel sees the centre twice (itself reflected across the edge)
    want = np.array([[0, 2, 0], [2, -4, 2], [0, 2, 0]], np.float64).std()
    assert regions.laplacian_std(grey) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("box", [(100, 150, 228, 278), (10.4, 20.6, 90.2, 60.9), (400, 300, 512, 512)])
def test_clarity_matches_an_independent_computation(box):
    frame = data.astronaut()
    want = _reference_clarity(frame, math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    assert regions.clarity(frame, np.array(box, np.float32)) == pytest.approx(want, rel=1e-9)


def test_clarity_ranks_blur_and_is_nan_when_absent():
    frame = data.astronaut()
    blurred = cv2.GaussianBlur(frame, (0, 0), 4)
    box = np.array([150, 50, 350, 250], np.float32)
    assert regions.clarity(frame, box) > 3 * regions.clarity(blurred, box)
    boxes = np.array([[box, [np.nan] * 4]], np.float32)
    got = regions.hand_clarity(frame[None], boxes)
    assert got.shape == (1, 2) and np.isfinite(got[0, 0]) and np.isnan(got[0, 1])
    assert math.isnan(regions.clarity(frame, np.array([600, 600, 700, 700], np.float32)))  # outside the frame


def test_face_box_encloses_confident_points_with_margin_and_square():
    kps = _empty()
    kps[0, FACE][:4] = [[10, 20, 0.9], [30, 20, 0.9], [20, 60, 0.9], [500, 500, 0.1]]  # last one unconfident
    box = regions.face_boxes(kps, size=None, params=P)[0]
    # raw box (10,20)-(30,60): centre (20,40), square side 40, *1.5 -> 60
    np.testing.assert_allclose(box, [-10, 10, 50, 70])
    clipped = regions.face_boxes(kps, size=(40, 65), params=P)[0]
    np.testing.assert_allclose(clipped, [0, 10, 40, 65])


def test_hand_boxes_per_hand_and_nan_when_too_few_points():
    kps = _empty(2)
    kps[0, LEFT_HAND][:3] = [[1, 2, 1], [5, 4, 1], [3, 10, 1]]
    kps[0, RIGHT_HAND][:2] = [[50, 50, 1], [60, 60, 1]]  # only 2 < hand_min_points
    flat = regions.RegionParams(min_confidence=0.5, hand_min_points=3, hand_margin=0.0, square=False)
    boxes = regions.hand_boxes(kps, None, flat)
    assert boxes.shape == (2, 2, 4)
    np.testing.assert_allclose(boxes[0, 0], [1, 2, 5, 10])
    assert np.isnan(boxes[0, 1]).all() and np.isnan(boxes[1]).all()


def test_thorax_and_movement_range():
    t = np.arange(5, dtype=np.float32)
    kps = _empty(5)
    kps[:, LEFT_SHOULDER] = np.stack([100 + 2 * t, 50 + t, np.ones(5)], -1)
    kps[:, RIGHT_SHOULDER] = np.stack([60 - t, 50 - t, np.ones(5)], -1)
    kps[2, RIGHT_SHOULDER, 2] = 0.1  # missing shoulder -> NaN thorax
    traj = regions.thorax(kps, min_confidence=0.5)
    assert np.isnan(traj[2]).all()
    np.testing.assert_allclose(traj[[0, 1, 3, 4]], [[80, 50], [80.5, 50], [81.5, 50], [82, 50]])
    np.testing.assert_allclose(regions.movement_range(traj), [80, 50, 82, 50])
    assert np.isnan(regions.movement_range(np.full((3, 2), np.nan))).all()
