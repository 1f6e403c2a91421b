"""Build the pretrained parts of CyberHost from local diffusers/transformers directories or at random.

There is no model hub at run time: every path is local (README, "Pretrained weights"). With a
path of None a part is built at random from the size registry (tests, benchmarks, the demo).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import Wav2Vec2Config, Wav2Vec2Model

from .config import SizeSpec

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors",
            "pytorch_model.bin")


def _require_dir(path: Path, what: str, hint: str) -> None:
    """Raise FileNotFoundError naming the missing config/weights of a pretrained directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: directory {path} does not exist ({hint})")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {path / 'config.json'} is missing ({hint})")
    if not any((path / name).is_file() for name in _WEIGHTS):
        raise FileNotFoundError(f"{what}: no weights in {path} (looked for {', '.join(_WEIGHTS)}; {hint})")


def build_unet(spec: SizeSpec, sd15_path: str | None) -> UNet2DConditionModel:
    """SD-1.5 ``unet`` from ``<sd15_path>/unet`` or random with the size's shape."""
    if sd15_path is None:
        return UNet2DConditionModel(**spec.unet)
    path = Path(sd15_path) / "unet"
    _require_dir(path, "SD-1.5 UNet", "model.sd15_path must be a diffusers Stable Diffusion 1.5 directory")
    return UNet2DConditionModel.from_pretrained(path, local_files_only=True)


def build_vae(spec: SizeSpec, sd15_path: str | None) -> AutoencoderKL:
    """SD-1.5 ``vae`` from ``<sd15_path>/vae`` or random with the size's shape."""
    if sd15_path is None:
        return AutoencoderKL(**spec.vae)
    path = Path(sd15_path) / "vae"
    _require_dir(path, "SD-1.5 VAE", "model.sd15_path must be a diffusers Stable Diffusion 1.5 directory")
    return AutoencoderKL.from_pretrained(path, local_files_only=True)


def build_motion_adapter(spec: SizeSpec, path: str | None) -> MotionAdapter | None:
    """AnimateDiff ``MotionAdapter`` from a local directory, or None (new zero-init modules)."""
    if path is None:
        return None
    _require_dir(Path(path), "AnimateDiff motion adapter",
                 "model.motion_adapter_path must be a diffusers MotionAdapter directory, e.g. animatediff-motion-adapter-v1-5-2")
    return MotionAdapter.from_pretrained(path, local_files_only=True)


def new_motion_adapter(spec: SizeSpec) -> MotionAdapter:
    """A random adapter of the size's shape (only its layout is used; outputs are zeroed later)."""
    return MotionAdapter(**spec.motion_adapter)


def build_wav2vec2(spec: SizeSpec, path: str | None) -> Wav2Vec2Model:
    """``Wav2Vec2Model`` from a local directory (e.g. wav2vec2-base-960h) or random."""
    if path is None:
        return Wav2Vec2Model(Wav2Vec2Config(**spec.wav2vec2))
    _require_dir(Path(path), "wav2vec2", "model.wav2vec2_path must be a transformers wav2vec2 directory, e.g. wav2vec2-base-960h")
    return Wav2Vec2Model.from_pretrained(path, local_files_only=True)
