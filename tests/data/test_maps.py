"""Condition maps: movement box enlargement range, skeleton drawing, box masks."""

from __future__ import annotations

import numpy as np

from cyberhost.data import maps
from cyberhost.data.schema import LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER


def test_movement_box_enlargement_is_100_to_150_percent() -> None:
    rng = np.random.default_rng(0)
    box = np.array([10.0, 20.0, 30.0, 60.0], np.float32)
    factors, widths, heights = [], [], []
    for _ in range(2000):
        out, f = maps.random_movement_box(box, rng)
        factors.append(f)
        widths.append((out[2] - out[0]) / 20.0)
        heights.append((out[3] - out[1]) / 40.0)
        assert np.allclose((out[:2] + out[2:]) / 2, (box[:2] + box[2:]) / 2, atol=1e-4)  # same centre
    assert np.allclose(widths, factors, atol=1e-5) and np.allclose(heights, factors, atol=1e-5)
    assert 1.0 <= min(factors) < 1.01 and 1.49 < max(factors) <= 1.5


def test_draw_box_fills_exactly_the_box() -> None:
    img = maps.draw_box(np.array([2, 3, 6, 5], np.float32), (8, 10))
    assert img.shape == (8, 10, 3) and img[3:5, 2:6].min() == 255 and img.sum() == 255 * 3 * 8
    assert maps.draw_box(np.full(4, np.nan, np.float32), (8, 10)).sum() == 0


def test_skeleton_draws_only_confident_limbs() -> None:
    kps = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kps[LEFT_SHOULDER] = [50, 20, 1.0]
    kps[RIGHT_SHOULDER] = [10, 20, 1.0]
    img = maps.draw_skeleton(kps, (40, 64))
    assert img[20, 20:40].max() > 0  # the shoulder line is drawn
    assert img[35:].sum() == 0
    kps[RIGHT_SHOULDER, 2] = 0.1
    assert maps.draw_skeleton(kps, (40, 64))[20, 20:40].max() == 0


def test_box_mask_union() -> None:
    boxes = np.array([[0, 0, 2, 2], [np.nan] * 4, [3, 3, 4, 4]], np.float32)
    mask = maps.box_mask(boxes, (5, 5))
    assert mask.sum() == 5 and mask[0, 0] == 1 and mask[3, 3] == 1
