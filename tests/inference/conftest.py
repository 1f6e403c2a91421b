"""Tiny stage-2 networks, a real photo, short audio files and checkpoints for the generation tests."""

from __future__ import annotations

import wave
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage.data import astronaut

from cyberhost.data.buckets import BucketConfig
from cyberhost.inference.loading import InferenceSettings
from cyberhost.media.keypoints import MediaPipeHolistic, dominant_person
from cyberhost.models import CyberHost, CyberHostConfig

SIZE = 64
"""Output side of the tiny tests (one 64x64 bucket; tiny latents are 8x8)."""
BUCKETS = {"area": SIZE * SIZE, "multiple": 64, "sizes": [[SIZE, SIZE]]}
TRAIN_TREE = {  # a LightningCLI config: the loader reads model.init_args.{model,schedule}, data.init_args.{transform,buckets}
    "model": {"class_path": "cyberhost.training.Stage2Module",
              "init_args": {"model": {"size": "tiny", "stage": 2}, "schedule": {"prediction_type": "epsilon"}}},
    "data": {"init_args": {"transform": {"fps": 25.0, "num_frames": 12, "num_motion": 4}, "buckets": BUCKETS}},
}


def build_model(seed: int = 0, **kwargs: object) -> CyberHost:
    """A random-init tiny stage-2 network (eval mode)."""
    torch.manual_seed(seed)
    return CyberHost(CyberHostConfig(size="tiny", stage=2, **kwargs)).eval()


def settings_for(model: CyberHost) -> InferenceSettings:
    """Training settings of the tiny tests (25 fps, 12 + 4 frames, 64x64)."""
    return InferenceSettings(model=model.config, buckets=BucketConfig(**BUCKETS))


def write_wav(path: Path, seconds: float, sr: int = 16_000, freq: float = 220.0) -> Path:
    """A 16-bit mono sine wav of ``seconds``."""
    t = np.arange(round(seconds * sr)) / sr
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sr)
        out.writeframes(pcm.tobytes())
    return path


def save_lightning_ckpt(model: CyberHost, path: Path, hparams: object | None = None,
                        conditions: dict | None = None) -> Path:
    """A Lightning-style checkpoint: ``state_dict`` under ``model.``, saved hyper-parameters, the conditions record."""
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 0, "global_step": 1,
            "pytorch-lightning_version": "2.6.0"}
    if hparams is not None:
        ckpt["hyper_parameters"] = hparams
    if conditions is not None:
        ckpt["conditions"] = conditions
    torch.save(ckpt, path)
    return path


class FixedBackend:
    """A keypoint backend returning given keypoints (per frame by a lookup, else a default)."""

    name = "fixed"

    def __init__(self, default: np.ndarray | None, table: dict[bytes, np.ndarray] | None = None) -> None:
        self.default, self.table, self.calls = default, table or {}, 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.calls += 1
        kps = self.table.get(np.ascontiguousarray(frame).tobytes(), self.default)
        return np.zeros((0, 133, 3), np.float32) if kps is None else kps[None]

    def reset(self) -> None:
        """Stateless."""

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """skimage's astronaut (NASA, public domain): a real half-body photo."""
    return astronaut()


@pytest.fixture(scope="session")
def photo_keypoints(photo: np.ndarray) -> np.ndarray:
    """MediaPipe keypoints of the astronaut, computed once."""
    backend = MediaPipeHolistic(static_image_mode=True)
    try:
        kps, _ = dominant_person(backend(photo))
    finally:
        backend.close()
    assert kps[:, 2].max() > 0.5
    return kps


@pytest.fixture
def photo_file(tmp_path: Path, photo: np.ndarray) -> Path:
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), photo[..., ::-1])
    return path


@pytest.fixture
def train_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "stage2.yaml"
    path.write_text(yaml.safe_dump(TRAIN_TREE))
    return path


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> tuple[Path, CyberHost]:
    """A tiny stage-2 checkpoint laid out as training writes it: network config (a plain dict, as LightningCLI
    saves it) in the hyper-parameters, transform and buckets in the conditions record."""
    model = build_model()
    conditions = {"transform": TRAIN_TREE["data"]["init_args"]["transform"], "buckets": BUCKETS}
    return save_lightning_ckpt(model, tmp_path / "tiny.ckpt", {"model": asdict(model.config)}, conditions), model
