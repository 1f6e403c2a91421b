"""Synthetic inputs for the evaluation tests: keypoints, tiny weight files, tiny videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cyberhost.data.schema import FACE, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER


def person_keypoints(frames: int, width: int, height: int) -> np.ndarray:
    """A still person: shoulders, a face whose 5 ArcFace points sit mid-frame, both hands."""
    kps = np.zeros((frames, NUM_KEYPOINTS, 3), np.float32)
    kps[:, [LEFT_SHOULDER, RIGHT_SHOULDER]] = [[0.7 * width, 0.8 * height, 1], [0.3 * width, 0.8 * height, 1]]
    face = np.zeros((68, 3), np.float32)
    face[:, :2] = [0.5 * width, 0.45 * height]  # every other point at the nose
    face[36:42, :2] = [0.4 * width, 0.35 * height]
    face[42:48, :2] = [0.6 * width, 0.35 * height]
    face[48, :2], face[54, :2] = [0.42 * width, 0.6 * height], [0.58 * width, 0.6 * height]
    face[:, 2] = 1
    kps[:, FACE] = face
    kps[:, 91:133] = [0.5 * width, 0.9 * height, 0.8]
    return kps


class MeanColour(nn.Module):
    """A fixed 'embedder'/'feature net': per-channel means of (N, 3, H, W) plus a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), torch.ones(x.shape[0], 1)], 1)


class TinyI3D(nn.Module):
    """Stands in for i3d_torchscript.pt: same call convention, 6-d features of (N, 3, T, H, W)."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1)


def save_script(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def moving_frames(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random colour blobs that drift, uint8 (F, H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(60, 190, 3)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        cx, cy = width * (0.3 + 0.02 * t), height * 0.5
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.2 * width) ** 2))
        out[t] = np.clip(base + 60 * blob[..., None] * np.array([1, -0.5, 0.3]), 0, 255).astype(np.uint8)
    return out
