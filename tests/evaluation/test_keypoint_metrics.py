"""HKC/HKV on synthetic keypoints with hand-computed values; CSIM alignment and a fixed embedder."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cyberhost.data.schema import LEFT_HAND, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_HAND, RIGHT_SHOULDER
from cyberhost.evaluation.face import ARCFACE_TEMPLATE, align_faces, csim, five_points
from cyberhost.evaluation.metrics import hand_keypoint_confidence, hand_keypoint_variance
from tests.evaluation.helpers import person_keypoints


def _clip() -> np.ndarray:
    """4 frames; frame 3 has no body. Left hand at conf 0.5 moving in x by 0, 2, 4 px; right hand absent."""
    kps = np.zeros((4, NUM_KEYPOINTS, 3), np.float32)
    kps[:3, [LEFT_SHOULDER, RIGHT_SHOULDER], 2] = 1.0
    for t, dx in enumerate([0.0, 2.0, 4.0, 100.0]):
        kps[t, LEFT_HAND] = [10.0 + dx, 20.0, 0.5]
    kps[3, LEFT_HAND, 2] = 1.0  # ignored: no body in frame 3
    return kps


def test_hkc_hand_computed() -> None:
    # frames 0-2: 21 points at 0.5 and 21 at 0 -> 0.25
    assert hand_keypoint_confidence(_clip()) == pytest.approx(0.25)
    kps = _clip()
    kps[1, RIGHT_HAND, 2] = 0.9  # (0.25 * 3 + 0.9 / 2) / 3
    assert hand_keypoint_confidence(kps) == pytest.approx((0.75 + 0.45) / 3)
    kps[:, [LEFT_SHOULDER, RIGHT_SHOULDER], 2] = 0
    assert math.isnan(hand_keypoint_confidence(kps))


def test_hkv_hand_computed() -> None:
    # x over frames 0-2: 10, 12, 14 -> population std sqrt(8/3); y constant -> 0. Left hand only:
    # 21 points x 2 axes -> mean = sqrt(8/3) / 2. Frame size 256 short side -> scale 2.
    expected = 2 * math.sqrt(8 / 3) / 2
    assert hand_keypoint_variance(_clip(), (256, 300)) == pytest.approx(expected)
    kps = _clip()
    kps[:, LEFT_HAND, 2] = 0.1  # below the 0.3 threshold everywhere
    assert math.isnan(hand_keypoint_variance(kps, (512, 512)))
    with pytest.raises(ValueError, match="keypoints must be"):
        hand_keypoint_variance(np.zeros((3, 17, 3)), (512, 512))


def test_alignment_maps_template_points_to_template() -> None:
    frame = np.zeros((200, 200, 3), np.uint8)
    kps = person_keypoints(1, 200, 200)
    pts = five_points(kps[0])
    # draw dots at the five points; after alignment they must land on the ArcFace template
    for x, y in pts:
        cv2.circle(frame, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    faces, index = align_faces(frame[None], kps)
    assert faces.shape == (1, 112, 112, 3) and index.tolist() == [0]
    for tx, ty in ARCFACE_TEMPLATE:
        patch = faces[0, int(ty) - 3 : int(ty) + 4, int(tx) - 3 : int(tx) + 4]
        assert patch.max() > 100, (tx, ty)
    kps[0, 23 + 30, 2] = 0  # nose tip missing -> no face
    assert len(align_faces(frame[None], kps)[0]) == 0


def test_csim_with_fixed_embeddings() -> None:
    ref = np.array([1.0, 0.0, 0.0])
    frames = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(csim(ref, frames), [1.0, 0.0, 1 / math.sqrt(2)], atol=1e-9)
