"""Magnitudes of Eq. 6's terms at the start of stage 2 (random init): diffusion vs hand heatmap.

    python benchmarks/loss_terms.py --size tiny --device cpu
    python benchmarks/loss_terms.py --size sd15 --device cuda   # 12 + 4 frames at 640x384, bf16 autocast

The network is the stage-2 CyberHost of ``--size`` with random weights (no pretrained paths, as
``conf/debug/random_init.yaml``). Each step draws a synthetic sample of the stage-2 shape: clean
latents ``N(0, 1)`` (the scale SD's VAE factor aims at), a timestep, noise, reference/motion
latents, identity crops, audio, a movement map, and whole-body keypoints with two hands of 21
points (one hand absent in some frames, so the validity masks matter). It prints the mean over
the steps of

* ``diffusion``: ``(1 + alpha*M) * (eps - eps^)^2`` averaged (Eq. 6, first term);
* ``heatmap_applied``: the heatmap term of a sample whose gate is on, ``(1/N) sum_i ||H_i - H^_i||^2``;
* ``heatmap_logged``: its expectation in ``train/loss_heatmap``, ``P(gate) * heatmap_applied``
  with ``P(gate) = heatmap_max_t / 1000 * heatmap_prob`` (1/4);
* per hand RCA: the applied term and ``pred_energy``, the mean ``sum H^^2`` of one predicted map
  (what a head that has learnt nothing yet adds on top of the target's ``pi * sigma^2``).

Forward only, under ``no_grad``. ``measure`` and ``loss_terms`` are also what the gradient test
(``tests/models/test_heatmap_grad.py``) calls, with gradients on.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
from torch import Tensor

from cyberhost.data.schema import FACE, HANDS, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from cyberhost.diffusion import (
    LossConfig,
    NoiseSchedule,
    heatmap_loss,
    keypoint_region_mask,
    weighted_diffusion_loss,
)
from cyberhost.models import CyberHost, CyberHostConfig


@dataclass(frozen=True)
class Shape:
    """Stage-2 sample shape: batch, target frames, motion frames, frame height and width, crop sides."""

    batch: int
    frames: int
    motion: int
    height: int
    width: int
    face: int
    hand: int = 128


SHAPES = {
    "tiny": Shape(batch=2, frames=3, motion=2, height=64, width=64, face=64),
    "sd15": Shape(batch=1, frames=12, motion=4, height=640, width=384, face=256),  # conf/stage2.yaml
}
"""Per size: the tiny test shape, and the paper's stage 2 (12 + 4 frames, 640x384, batch 1 per GPU)."""


def synthetic_keypoints(shape: Shape, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Whole-body keypoints in pixels ``(B, F, 133, 2)`` and validity ``(B, F, 133)``.

    A face cluster in the upper middle and two hands of 21 points, each spread over about a
    sixth of the frame width around a random centre; the right hand is absent in every third
    frame and about 10 % of the other points are marked invalid.
    """
    b, f, h, w = shape.batch, shape.frames, shape.height, shape.width
    pts = torch.rand(b, f, NUM_KEYPOINTS, 2, generator=generator) * torch.tensor([w, h])
    face_centre = torch.tensor([0.5 * w, 0.25 * h])
    pts[:, :, FACE] = face_centre + (torch.rand(b, f, 68, 2, generator=generator) - 0.5) * (w / 5)
    for part in (LEFT_HAND, RIGHT_HAND):
        centre = torch.rand(b, 1, 1, 2, generator=generator) * torch.tensor([0.6 * w, 0.4 * h]) + torch.tensor(
            [0.2 * w, 0.5 * h]
        )
        pts[:, :, part] = centre + (torch.rand(b, f, 21, 2, generator=generator) - 0.5) * (w / 6)
    valid = torch.rand(b, f, NUM_KEYPOINTS, generator=generator) > 0.1
    valid[:, ::3, RIGHT_HAND] = False
    pts = pts.clamp(torch.zeros(2), torch.tensor([w - 1.0, h - 1.0]))
    return torch.where(valid[..., None], pts, 0.0), valid  # absent = 0 + False, as the batch has it


def synthetic_sample(shape: Shape, device: torch.device, generator: torch.Generator) -> dict[str, Tensor]:
    """Network inputs, clean latents, noise and keypoints of one synthetic stage-2 batch (on ``device``)."""
    s, g = shape, generator
    h, w = s.height // 8, s.width // 8
    kps, valid = synthetic_keypoints(s, g)
    sample = {
        "x0": torch.randn(s.batch, s.frames, 4, h, w, generator=g),
        "noise": torch.randn(s.batch, s.frames, 4, h, w, generator=g),
        "t": torch.randint(0, 1000, (s.batch,), generator=g),
        "ref_latents": torch.randn(s.batch, 4, h, w, generator=g),
        "ref_skeleton": torch.rand(s.batch, 3, s.height, s.width, generator=g) * 2 - 1,
        "motion": torch.randn(s.batch, s.motion, 4, h, w, generator=g),
        "face": torch.rand(s.batch, 3, s.face, s.face, generator=g) * 2 - 1,
        "hands": torch.rand(s.batch, 2, 3, s.hand, s.hand, generator=g) * 2 - 1,
        "audio": torch.randn(s.batch, 16000 * s.frames // 25, generator=g) * 0.1,
        "driving_map": torch.rand(s.batch, s.frames, 3, s.height, s.width, generator=g) * 2 - 1,
        "clarity": torch.rand(s.batch, s.frames, 2, generator=g) * 80,
        "keypoints": kps,
        "keypoints_valid": valid,
    }
    return {k: v.to(device) for k, v in sample.items()}


def loss_terms(model: CyberHost, sample: dict[str, Tensor], schedule: NoiseSchedule, config: LossConfig) -> dict[str, Tensor]:
    """Forward the network on ``sample`` and return the diffusion and (gate-on) heatmap terms.

    Returns:
        ``diffusion``, ``heatmap_applied`` (scalars with their graphs), ``heatmap/<k>`` per hand RCA
        and ``pred_energy/<k>`` (mean ``sum H^^2`` of one predicted map, detached).
    """
    size = tuple(sample["driving_map"].shape[-2:])
    noisy = schedule.add_noise(sample["x0"], sample["noise"], sample["t"])
    ref = model.encode_reference(sample["ref_latents"], sample["ref_skeleton"], sample["motion"], sample["face"],
                                 sample["hands"])  # fmt: skip
    audio = model.encode_audio(sample["audio"], noisy.shape[1])
    out = model(noisy, sample["t"], ref, sample["driving_map"], audio, sample["clarity"])
    region = keypoint_region_mask(sample["keypoints"], sample["keypoints_valid"], size, tuple(noisy.shape[-2:]))
    target = schedule.target(sample["x0"], sample["noise"], sample["t"])
    terms = {"diffusion": weighted_diffusion_loss(out.sample, target, region, config.alpha)}
    hands, hands_valid = sample["keypoints"][..., HANDS, :], sample["keypoints_valid"][..., HANDS]
    on = torch.ones(noisy.shape[0], device=noisy.device)
    terms["heatmap_applied"] = heatmap_loss(out.heatmaps, hands, hands_valid, size, on, config.heatmap_sigma)
    for name, pred in zip(model.hand_rca.keys(), out.heatmaps, strict=True):
        terms[f"heatmap/{name}"] = heatmap_loss([pred], hands, hands_valid, size, on, config.heatmap_sigma).detach()
        terms[f"pred_energy/{name}"] = pred.detach().float().square().sum((-2, -1)).mean()
    return terms


def measure(size: str, device: str = "cpu", steps: int = 4, seed: int = 0, config: LossConfig | None = None,
            model: CyberHost | None = None) -> dict[str, float]:
    """Mean of each term over ``steps`` synthetic samples at random init (see the module docstring)."""
    config = config or LossConfig()
    dev = torch.device(device)
    if model is None:
        torch.manual_seed(seed)
        with dev:  # random init straight on the device: building sd15 on the CPU takes long
            model = CyberHost(CyberHostConfig(size=size, stage=2))
    model.to(dev).train()
    schedule, g = NoiseSchedule(), torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    for _ in range(steps):
        sample = synthetic_sample(SHAPES[size], dev, g)
        with torch.no_grad(), autocast:
            terms = loss_terms(model, sample, schedule, config)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) / steps
    p_gate = config.heatmap_max_t / 1000 * config.heatmap_prob
    sums["heatmap_logged"] = p_gate * sums["heatmap_applied"]
    return dict(sorted(sums.items()))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the terms as JSON (one object)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SHAPES), default="tiny", help="network size and sample shape")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=4, help="synthetic samples to average over")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the samples")
    p.add_argument("--sigma", type=float, default=LossConfig.heatmap_sigma, help="heatmap target sigma (cells)")
    args = p.parse_args(argv)
    out = measure(args.size, args.device, args.steps, args.seed, LossConfig(heatmap_sigma=args.sigma))
    print(json.dumps({"size": args.size, "device": args.device, "steps": args.steps, **out}, indent=1))
    return out


if __name__ == "__main__":
    main()
