"""Whole-body keypoint backends mapped to the COCO-WholeBody 133-point layout of the schema.

* :class:`MediaPipeHolistic` - MediaPipe 0.10.21 holistic, ``model_complexity=1`` (the only
  value whose models ship in the wheel; 0 and 2 download at run time). One person per frame.
  Pose 33 -> body 17 + feet 6 (the small toes have no MediaPipe point: confidence 0), face mesh
  468 -> 68 face points by :data:`FACE_MESH_TO_68`, hands 21 -> 21 in the same order. Pose
  points carry MediaPipe's visibility as confidence; face mesh and hand landmarks have no
  per-point score, so a detected face or hand gets confidence 1 on every point.
* :class:`RTMLibWholebody` - DWPose or RTMW through rtmlib, from *local* ONNX files only
  (rtmlib would download a missing path; we refuse with an error naming it). Many persons.

Both return ``(P, 133, 3)`` float32 (x, y in pixels of the given frame, confidence) for RGB
frames; :func:`dominant_person` picks the one person a clip is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cyberhost.data.schema import BODY, FACE, FEET, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND

# MediaPipe pose index for each COCO body point (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles).
POSE_TO_BODY = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
# COCO-WholeBody feet: left big toe, left small toe, left heel, right big toe, right small toe,
# right heel. MediaPipe has a "foot index" (big toe) and a heel per foot, no small toe (-1).
POSE_TO_FEET = (31, -1, 29, 32, -1, 30)

FACE_MESH_TO_68 = (
    # jaw 0-16, from the subject's right (image left on a frontal face) to their left
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    # right eyebrow 17-21 (outer -> inner), left eyebrow 22-26 (inner -> outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30 (top -> tip), nostrils 31-35 (right -> left)
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41 (outer corner, upper lid, inner corner, lower lid), left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59 (right corner, upper lip, left corner, lower lip), inner lips 60-67
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip
"""MediaPipe face-mesh index of each of the 68 iBUG/300-W face points that COCO-WholeBody uses.

The face mesh has no 68-point subset of its own; this is the commonly used correspondence, picked
by matching the 300-W point definitions (brow, eye corner and lid, nostril, lip) to mesh vertices.
Contour points (jaw) are approximate by nature: 300-W places them on the visible outline.
"""


class KeypointBackend(Protocol):
    """What the pipeline needs from a keypoint backend."""

    name: str

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Keypoints of every detected person in an ``(H, W, 3)`` uint8 RGB frame: ``(P, 133, 3)``."""
        ...

    def reset(self) -> None:
        """Forget tracking state (call at the start of every video)."""
        ...

    def close(self) -> None:
        """Release the models."""
        ...


def _landmarks(landmarks: object | None, n: int, width: int, height: int, score: str | None) -> np.ndarray | None:
    if landmarks is None:
        return None
    pts = landmarks.landmark
    out = np.empty((n, 3), np.float32)
    for i in range(n):
        p = pts[i]
        out[i] = (p.x * width, p.y * height, getattr(p, score) if score else 1.0)
    return out


class MediaPipeHolistic:
    """MediaPipe holistic (offline models of the 0.10.21 wheel) in the COCO-WholeBody layout.

    Args:
        static_image_mode: ``False`` tracks landmarks from frame to frame (much faster on video;
            call :meth:`reset` per video so results do not depend on what ran before).
        detect_short_side: run detection on a copy downscaled to this short side (``None`` or 0
            for full size); coordinates are returned in the input frame's pixels.
        min_detection_confidence: MediaPipe's detection threshold.
        min_tracking_confidence: MediaPipe's tracking threshold.
    """

    name = "mediapipe_holistic"

    def __init__(
        self,
        static_image_mode: bool = False,
        detect_short_side: int | None = None,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        self.static_image_mode = static_image_mode
        self.detect_short_side = detect_short_side
        self._options = {
            "static_image_mode": static_image_mode,
            "model_complexity": 1,  # 0 and 2 try to download their models
            "refine_face_landmarks": False,
            "min_detection_confidence": min_detection_confidence,
            "min_tracking_confidence": min_tracking_confidence,
        }
        self._model = None

    def _get(self) -> object:
        if self._model is None:
            import mediapipe as mp  # heavy import, only when used

            self._model = mp.solutions.holistic.Holistic(**self._options)
        return self._model

    def reset(self) -> None:
        """Start a fresh tracker."""
        self.close()

    def close(self) -> None:
        """Release the graph."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Keypoints of the one person MediaPipe finds.

        Args:
            frame: ``(H, W, 3)`` uint8 RGB.

        Returns:
            ``(1, 133, 3)`` float32, or ``(0, 133, 3)`` when no pose is found.
        """
        height, width = frame.shape[:2]
        small = _downscale(frame, self.detect_short_side)
        result = self._get().process(np.ascontiguousarray(small))
        pose = _landmarks(result.pose_landmarks, 33, width, height, "visibility")
        if pose is None:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        out[BODY] = pose[list(POSE_TO_BODY)]
        feet = pose[[max(i, 0) for i in POSE_TO_FEET]]
        feet[[i for i, j in enumerate(POSE_TO_FEET) if j < 0], 2] = 0.0
        out[FEET] = feet
        face = _landmarks(result.face_landmarks, 468, width, height, None)
        if face is not None:
            out[FACE] = face[list(FACE_MESH_TO_68)]
        for part, lms in ((LEFT_HAND, result.left_hand_landmarks), (RIGHT_HAND, result.right_hand_landmarks)):
            hand = _landmarks(lms, 21, width, height, None)
            if hand is not None:
                out[part] = hand
        return out[None]


def _downscale(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    if not short_side or min(frame.shape[:2]) <= short_side:
        return frame
    import cv2

    scale = short_side / min(frame.shape[:2])
    size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class RTMLibPaths:
    """Local ONNX files of an rtmlib whole-body model.

    Attributes:
        det: person detector ONNX (YOLOX from the rtmlib/DWPose releases).
        pose: whole-body pose ONNX (DWPose ``dw-ll_ucoco_384`` or RTMW).
        det_input_size: detector input ``(w, h)``.
        pose_input_size: pose model input ``(w, h)``, e.g. ``(288, 384)`` for DWPose-l/RTMW-x.
    """

    det: str
    pose: str
    det_input_size: tuple[int, int] = (640, 640)
    pose_input_size: tuple[int, int] = (288, 384)


class RTMLibWholebody:
    """DWPose/RTMW through rtmlib, from local ONNX files (never downloads).

    Args:
        paths: the model files.
        device: ``"cpu"`` or ``"cuda"`` (onnxruntime provider).

    Raises:
        FileNotFoundError: naming every configured model path that does not exist.
    """

    name = "rtmlib_wholebody"

    def __init__(self, paths: RTMLibPaths, device: str = "cpu") -> None:
        missing = [f"{field}={p!r}" for field, p in (("det", paths.det), ("pose", paths.pose)) if not p or not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                "rtmlib keypoint backend: model file(s) not found: " + ", ".join(missing)
                + ". Download the ONNX files once (see README, 'Keypoint backends') and set their local paths"
                " in conf/data/prep.yaml (keypoints.rtmlib_det / keypoints.rtmlib_pose); nothing is downloaded at run time."
            )
        from rtmlib import Wholebody

        self._model = Wholebody(
            det=str(paths.det),
            det_input_size=tuple(paths.det_input_size),
            pose=str(paths.pose),
            pose_input_size=tuple(paths.pose_input_size),
            to_openpose=False,
            backend="onnxruntime",
            device=device,
        )

    def reset(self) -> None:
        """rtmlib is stateless per frame."""

    def close(self) -> None:
        """Nothing to release."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Keypoints of every detected person.

        Args:
            frame: ``(H, W, 3)`` uint8 RGB.

        Returns:
            ``(P, 133, 3)`` float32.
        """
        keypoints, scores = self._model(np.ascontiguousarray(frame[..., ::-1]))  # rtmlib wants BGR
        keypoints = np.asarray(keypoints, np.float32).reshape(-1, NUM_KEYPOINTS, 2)
        scores = np.asarray(scores, np.float32).reshape(-1, NUM_KEYPOINTS, 1)
        return np.concatenate([keypoints, scores], axis=-1)


def person_size(person: np.ndarray, min_confidence: float = 0.3) -> float:
    """Area of the box around a person's confident body points (0 when fewer than 2).

    Args:
        person: ``(133, 3)``.
        min_confidence: confidence a point needs to count.

    Returns:
        The area in square pixels.
    """
    body = person[BODY]
    xy = body[body[:, 2] >= min_confidence, :2]
    if len(xy) < 2:
        return 0.0
    w, h = xy.max(axis=0) - xy.min(axis=0)
    return float(w * h)


def dominant_person(persons: np.ndarray, min_confidence: float = 0.3) -> tuple[np.ndarray, float]:
    """The largest person of a frame and how much the runner-up matters.

    Args:
        persons: ``(P, 133, 3)``.
        min_confidence: confidence a body point needs to count toward a person's size.

    Returns:
        ``(keypoints, ratio)``: the largest person's ``(133, 3)`` (zeros when ``P == 0``) and the
        second-largest person's size divided by the largest one's (0 for fewer than two persons).
    """
    if len(persons) == 0:
        return np.zeros((NUM_KEYPOINTS, 3), np.float32), 0.0
    sizes = np.array([person_size(p, min_confidence) for p in persons])
    order = np.argsort(-sizes, kind="stable")
    ratio = float(sizes[order[1]] / sizes[order[0]]) if len(persons) > 1 and sizes[order[0]] > 0 else 0.0
    return persons[order[0]].astype(np.float32), ratio


def make_backend(name: str, **options: object) -> KeypointBackend:
    """Build a backend by config name.

    Args:
        name: ``"mediapipe"`` or ``"rtmlib"``.
        **options: ``MediaPipeHolistic`` keyword arguments, or for rtmlib ``det``, ``pose``,
            ``det_input_size``, ``pose_input_size``, ``device``.

    Returns:
        The backend.
    """
    if name == "mediapipe":
        return MediaPipeHolistic(**options)
    if name == "rtmlib":
        device = str(options.pop("device", "cpu"))
        return RTMLibWholebody(RTMLibPaths(**options), device=device)
    raise ValueError(f"keypoint backend must be 'mediapipe' or 'rtmlib', got {name!r}")
