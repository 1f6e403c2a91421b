"""CSIM: cosine similarity of face identity embeddings, reference image vs generated frames.

Protocol: the face of the reference image and of every generated frame is aligned to the
standard 112x112 ArcFace template by a similarity transform (OpenCV ``estimateAffinePartial2D``,
LMedS) from five points taken from the 68 COCO-WholeBody face keypoints: the two eye centres
(mean of points 36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54). A face
counts when all those points have confidence ≥ 0.3. The embedder sees RGB scaled to
``(x - 127.5) / 127.5`` as ``(N, 3, 112, 112)`` float32; CSIM of a video is the mean over its
frames with a face of ``cos(e_ref, e_frame)``; the data set's value is the mean over videos.

Embedders are pluggable (:class:`FaceEmbedder`). :func:`load_face_embedder` reads an ONNX
ArcFace such as insightface's ``w600k_r50.onnx`` (buffalo_l; needs ``onnxruntime``, which the
``dwpose`` extra installs) or a TorchScript file with the same input convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from cyberhost.data.schema import FACE

__all__ = ["ARCFACE_TEMPLATE", "FaceEmbedder", "align_faces", "csim", "five_points", "load_face_embedder"]

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Image-left eye, image-right eye, nose tip, image-left and image-right mouth corner in a 112x112 crop."""
FACE_SIZE = 112
MIN_CONFIDENCE = 0.3
_LEFT_EYE, _RIGHT_EYE = list(range(36, 42)), list(range(42, 48))  # iBUG-68 indices, image-left first
_NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = 30, 48, 54


class FaceEmbedder(Protocol):
    """Maps aligned faces ``uint8`` RGB ``(N, 112, 112, 3)`` to embeddings ``(N, D)``."""

    def __call__(self, faces: np.ndarray) -> np.ndarray: ...


def five_points(keypoints: np.ndarray, min_confidence: float = MIN_CONFIDENCE) -> np.ndarray | None:
    """The five ArcFace alignment points of one frame's ``(133, 3)`` keypoints, or ``None``."""
    face = keypoints[FACE]  # (68, 3)
    used = _LEFT_EYE + _RIGHT_EYE + [_NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT]
    if (face[used, 2] < min_confidence).any():
        return None
    pts = [
        face[_LEFT_EYE, :2].mean(0),
        face[_RIGHT_EYE, :2].mean(0),
        face[_NOSE_TIP, :2],
        face[_MOUTH_LEFT, :2],
        face[_MOUTH_RIGHT, :2],
    ]
    return np.stack(pts).astype(np.float32)


def align_faces(frames: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aligned 112x112 faces of the frames where a face is found.

    Args:
        frames: ``uint8`` RGB ``(F, H, W, 3)``.
        keypoints: ``(F, 133, 3)``.

    Returns:
        ``(faces, index)``: ``uint8`` ``(N, 112, 112, 3)`` and the ``(N,)`` frame indices they come from.
    """
    faces, index = [], []
    for t, (frame, kps) in enumerate(zip(frames, keypoints, strict=True)):
        pts = five_points(kps)
        if pts is None:
            continue
        matrix, _ = cv2.estimateAffinePartial2D(pts, ARCFACE_TEMPLATE, method=cv2.LMEDS)
        if matrix is None:
            continue
        faces.append(cv2.warpAffine(frame, matrix, (FACE_SIZE, FACE_SIZE), borderValue=0))
        index.append(t)
    if not faces:
        return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8), np.zeros(0, int)
    return np.stack(faces), np.asarray(index)


def csim(reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Cosine similarity of one reference embedding ``(D,)`` with frame embeddings ``(N, D)`` → ``(N,)``."""
    ref = np.asarray(reference, np.float64)
    emb = np.asarray(frames, np.float64)
    return emb @ ref / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref) + 1e-12)


def _normalise(faces: np.ndarray) -> np.ndarray:
    return ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()  # (N, 3, 112, 112)


class _OnnxEmbedder:
    def __init__(self, path: Path, batch: int) -> None:
        import onnxruntime  # optional dependency (the dwpose extra)

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.batch = batch

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = _normalise(faces)
        outs = [self.session.run(None, {self.input: x[i : i + self.batch]})[0] for i in range(0, len(x), self.batch)]
        return np.concatenate(outs).reshape(len(x), -1)


class _TorchScriptEmbedder:
    def __init__(self, path: Path, batch: int, device: str) -> None:
        self.net = torch.jit.load(str(path), map_location=device).eval()
        self.batch, self.device = batch, device

    @torch.no_grad()
    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(_normalise(faces))
        outs = [self.net(x[i : i + self.batch].to(self.device)).float().cpu() for i in range(0, len(x), self.batch)]
        return torch.cat(outs).reshape(len(x), -1).numpy()


def load_face_embedder(path: str | Path, batch: int = 32, device: str = "cpu") -> FaceEmbedder:
    """Load an ArcFace-style embedder from a local ``.onnx`` or TorchScript file.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face embedder weights not found: {path}")
    if path.suffix.lower() == ".onnx":
        return _OnnxEmbedder(path, batch)
    return _TorchScriptEmbedder(path, batch, device)
