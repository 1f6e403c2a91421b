"""Step 7: quality filters of a clip; each failure is a reason string for the report.

Checks, in order (the first failure is the clip's reason): the audio covers the clip; a person
(both shoulders confident) is in enough frames; a face box is in enough frames; the median face
box is large enough; no large second person. The last one needs a backend that reports several
persons per frame: rtmlib (DWPose/RTMW) does, MediaPipe holistic tracks exactly one person, so
with the default backend ``second_ratio`` is always 0 and crowded clips are *not* caught.
"""

from __future__ import annotations

import numpy as np

from cyberhost.data.schema import AUDIO_SAMPLE_RATE, LEFT_SHOULDER, RIGHT_SHOULDER
from data_prep.config import FilterConfig

SECOND_PERSON_FRAME_FRACTION = 0.1
"""A clip is multi-person when a large second person shows in more than this fraction of frames."""
AUDIO_END_TOLERANCE_S = 0.1
"""Audio may end this much before a clip does (AAC frames, container rounding); beyond it the clip is dropped."""


def audio_problem(samples: int, has_audio: bool, start_frame: int, num_frames: int, fps: float) -> str | None:
    """Why a clip's audio is unusable, or ``None``.

    A clip whose audio track ended early (damaged stream, shorter audio track) would be padded with
    silence under speaking frames, which teaches the model the wrong thing; it is dropped instead.

    Args:
        samples: length of the aligned 16 kHz signal of the whole input.
        has_audio: the input has an audio stream (without one, every clip is silent by design:
            ``filters.require_audio: false``).
        start_frame: first frame of the clip.
        num_frames: frames in the clip.
        fps: frame rate.

    Returns:
        The reason, or ``None``.
    """
    ends = samples / AUDIO_SAMPLE_RATE
    if has_audio and ends < (start_frame + num_frames) / fps - AUDIO_END_TOLERANCE_S:
        return f"audio track ends at {ends:.2f} s, before the clip does"
    return None


def clip_problem(keypoints: np.ndarray, face_box: np.ndarray, second_ratio: np.ndarray, min_confidence: float, cfg: FilterConfig) -> str | None:
    """Why a clip should be dropped, or ``None`` to keep it.

    Args:
        keypoints: ``(F, 133, 3)`` of the dominant person.
        face_box: ``(F, 4)``.
        second_ratio: ``(F,)`` size of the second person relative to the dominant one (0 when alone,
            and always 0 with MediaPipe holistic, which reports one person).
        min_confidence: keypoint confidence that counts as present.
        cfg: thresholds.

    Returns:
        The first failed check as a sentence, or ``None``.
    """
    shoulders = keypoints[:, [LEFT_SHOULDER, RIGHT_SHOULDER], 2] >= min_confidence
    person = float(shoulders.all(axis=1).mean())
    if person == 0.0:
        return "no person detected"
    if person < cfg.min_person_fraction:
        return f"person in {person:.0%} of frames < filters.min_person_fraction={cfg.min_person_fraction:.0%}"
    has_face = np.isfinite(face_box).all(axis=1)
    if has_face.mean() < cfg.min_face_fraction:
        return f"face in {has_face.mean():.0%} of frames < filters.min_face_fraction={cfg.min_face_fraction:.0%}"
    if has_face.any():
        side = float(np.median(np.maximum(*(face_box[has_face, 2:] - face_box[has_face, :2]).T)))
        if side < cfg.min_face_size:
            return f"face too small: median side {side:.0f} px < filters.min_face_size={cfg.min_face_size:.0f}"
    crowded = float((second_ratio >= cfg.max_second_person_ratio).mean())
    if crowded > SECOND_PERSON_FRAME_FRACTION:
        return f"second person >= {cfg.max_second_person_ratio:.0%} of the main one's size in {crowded:.0%} of frames"
    return None
