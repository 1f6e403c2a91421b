"""Calibrate the tiny size's VAE ``scaling_factor``: ``python -m benchmarks.probes.calibrate``.

SD-1.5's 0.18215 is 1 / (std of its trained VAE's latents). The ``tiny`` size builds a random VAE
whose latents have a std near 0.25, so with SD's factor the scaled latents had a std of about
0.045 and the noise of every timestep above a few dozen drowned the image: no condition could
change the loss (PROBES.md). This script measures the std of the unscaled latents (the mean of the
latent distribution, as :meth:`cyberhost.models.CyberHost.encode_images` uses) of the committed
sample clips' frames (``data_prep/samples``, resized to the tiny bucket 64x96 and its transpose)
for several random initialisations, and prints ``1 / median``: the registry's factor
(``cyberhost.models.config.SIZES["tiny"].vae["scaling_factor"]``) is that value rounded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL

from cyberhost.media.video import iter_video
from cyberhost.models.config import SIZES

SAMPLES = Path(__file__).resolve().parents[2] / "data_prep" / "samples"


def sample_frames(folder: Path = SAMPLES, every: int = 5) -> list[np.ndarray]:
    """Every ``every``-th RGB frame of each sample video."""
    frames = []
    for path in sorted(folder.glob("*.mp4")):
        frames += [f for i, f in enumerate(iter_video(path)) if i % every == 0]
    return frames


def _batch(frames: list[np.ndarray], hw: tuple[int, int]) -> torch.Tensor:
    x = np.stack([cv2.resize(f, (hw[1], hw[0]), interpolation=cv2.INTER_AREA) for f in frames])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def latent_stds(size: str = "tiny", seeds: int = 12, frames: list[np.ndarray] | None = None) -> list[float]:
    """Std of the unscaled latents of the sample frames, one value per random initialisation."""
    frames = sample_frames() if frames is None else frames
    images = [_batch(frames, (64, 96)), _batch(frames, (96, 64))]
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**dict(SIZES[size].vae, scaling_factor=1.0)).eval()
        z = torch.cat([vae.encode(x).latent_dist.mean.flatten() for x in images])
        out.append(float(z.std()))
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the per-seed stds, their median and the factor it implies."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.calibrate", description=main.__doc__)
    p.add_argument("--seeds", type=int, default=12, help="random initialisations measured")
    args = p.parse_args(argv)
    stds = latent_stds(seeds=args.seeds)
    median = float(np.median(stds))
    print("latent std per seed:", " ".join(f"{s:.3f}" for s in stds))
    print(f"median {median:.4f} -> scaling_factor 1/median = {1 / median:.3f} "
          f"(registry: {SIZES['tiny'].vae['scaling_factor']})")


if __name__ == "__main__":
    main()
