"""Quality filters on synthetic keypoints: one test per rejection reason, thresholds checked on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from cyberhost.data import regions
from cyberhost.data.schema import AUDIO_SAMPLE_RATE, BODY, FACE, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER
from cyberhost.media.keypoints import dominant_person
from data_prep.config import FilterConfig
from data_prep.filters import AUDIO_END_TOLERANCE_S, audio_problem, clip_problem

F = 20
PARAMS = regions.RegionParams()  # face_margin 0.25, square boxes, min_confidence 0.3
CFG = FilterConfig()  # person 80 %, face 80 %, face >= 32 px, second person < 50 %


def person(frames: int = F, face_radius: float = 20.0, centre: tuple[float, float] = (80.0, 50.0)) -> np.ndarray:
    """A frontal half-body person: 17 body points, shoulders 80 px apart, 68 face points on a circle."""
    kp = np.zeros((frames, NUM_KEYPOINTS, 3), np.float32)
    body = np.array([[80, 50], [75, 45], [85, 45], [70, 50], [90, 50], [40, 100], [120, 100], [30, 150], [130, 150],
                     [30, 190], [130, 190], [50, 200], [110, 200], [50, 260], [110, 260], [50, 300], [110, 300]], np.float32)  # fmt: skip
    kp[:, BODY, :2], kp[:, BODY, 2] = body, 1.0
    angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    kp[:, FACE, 0] = centre[0] + face_radius * np.cos(angle)
    kp[:, FACE, 1] = centre[1] + face_radius * np.sin(angle)
    kp[:, FACE, 2] = 1.0
    return kp


def problem(kp: np.ndarray, second: np.ndarray | None = None, cfg: FilterConfig = CFG) -> str | None:
    face = regions.face_boxes(kp, (640, 480), PARAMS)
    return clip_problem(kp, face, np.zeros(len(kp)) if second is None else second, PARAMS.min_confidence, cfg)


def test_a_clean_clip_passes():
    assert problem(person()) is None


def test_no_person():
    kp = person()
    kp[:, BODY, 2] = 0.0
    assert problem(kp) == "no person detected"


@pytest.mark.parametrize(("missing", "reject"), [(4, False), (5, True)])
def test_person_fraction(missing, reject):
    kp = person()
    kp[:missing, RIGHT_SHOULDER, 2] = 0.1  # one shoulder below min_confidence: no person in that frame
    kp[:missing, FACE, 2] = 0.0
    reason = problem(kp)
    if reject:  # 15 of 20 frames = 75 % < 80 %
        assert reason == "person in 75% of frames < filters.min_person_fraction=80%"
    else:  # 16 of 20 = 80 %: the face check (also 80 %) passes too
        assert reason is None


@pytest.mark.parametrize(("missing", "reject"), [(4, False), (6, True)])
def test_face_fraction(missing, reject):
    kp = person()
    kp[:missing, FACE, 2] = 0.0  # no face box in those frames (fewer than face_min_points confident)
    reason = problem(kp)
    assert (reason == "face in 70% of frames < filters.min_face_fraction=80%") if reject else reason is None


def test_min_face_size_uses_the_median_box_side():
    # face box side = diameter * (1 + margin) = 2 r * 1.25; r = 12 -> 30 px < 32, r = 14 -> 35 px
    small, large = person(face_radius=12.0), person(face_radius=14.0)
    box = regions.face_boxes(small[:1], None, PARAMS)[0]
    assert box[2:] - box[:2] == pytest.approx([30, 30], abs=0.1)
    assert problem(small) == "face too small: median side 30 px < filters.min_face_size=32"
    assert problem(large) is None
    # 9 small and 11 large faces: the median (35 px) passes though the mean side (32.75 px) is close
    mixed = np.concatenate([small[:9], large[:11]])
    assert problem(mixed) is None
    mixed = np.concatenate([small[:11], large[:9]])
    assert problem(mixed) == "face too small: median side 30 px < filters.min_face_size=32"


def test_second_person_from_a_multi_person_backend():
    main = person(1)[0]
    other = main.copy()
    other[BODY, :2] = main[BODY, :2] * 0.75 + 300  # body box 0.75 x 0.75 of the main one: area ratio 0.5625
    ratio = dominant_person(np.stack([other, main]))[1]
    assert ratio == pytest.approx(0.5625)
    kp = person()
    second = np.zeros(F)
    second[:2] = ratio  # 10 % of frames: tolerated (the rule is "more than 10 %")
    assert problem(kp, second) is None
    second[:3] = ratio  # 15 %
    assert problem(kp, second) == "second person >= 50% of the main one's size in 15% of frames"
    assert problem(kp, second, FilterConfig(max_second_person_ratio=0.6)) is None  # smaller than the threshold


def test_the_first_failed_check_is_the_reason():
    kp = person(face_radius=5.0)
    kp[:10, LEFT_SHOULDER, 2] = 0.0
    assert problem(kp).startswith("person in 50% of frames")


def test_audio_must_cover_the_clip():
    fps, start, frames = 25.0, 25, 50  # the clip spans 1.0 s to 3.0 s of the video
    full = round(3.0 * AUDIO_SAMPLE_RATE)
    assert audio_problem(full, True, start, frames, fps) is None
    assert audio_problem(full - round(0.9 * AUDIO_END_TOLERANCE_S * AUDIO_SAMPLE_RATE), True, start, frames, fps) is None
    assert audio_problem(round(2.5 * AUDIO_SAMPLE_RATE), True, start, frames, fps) == "audio track ends at 2.50 s, before the clip does"
    assert audio_problem(0, False, start, frames, fps) is None  # no audio stream at all: silent by configuration
