"""Diffusion math against independent computations: hand formulas, loops, diffusers' own scheduler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from cyberhost.diffusion import (
    ConditionDropout,
    GuidedSampler,
    LossConfig,
    NoiseSchedule,
    SamplerConfig,
    ScheduleConfig,
    box_masks,
    combine_guidance,
    cyberhost_losses,
    heatmap_gate,
    heatmap_loss,
    keypoint_heatmaps,
    keypoint_region_mask,
    mask_loss,
    weighted_diffusion_loss,
)


def _sd_alphas_cumprod() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD-1.5's scaled-linear schedule
    return np.cumprod(1 - betas)


def test_add_noise_and_targets_match_hand_formulas() -> None:
    sched = NoiseSchedule()
    x0, noise = torch.randn(3, 2, 4, 5, 5), torch.randn(3, 2, 4, 5, 5)
    t = torch.tensor([0, 499, 999])
    ab = torch.tensor(_sd_alphas_cumprod(), dtype=torch.float32)[t].view(3, 1, 1, 1, 1)
    torch.testing.assert_close(sched.add_noise(x0, noise, t), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    assert torch.equal(sched.target(x0, noise, t), noise)
    vsched = NoiseSchedule(ScheduleConfig(prediction_type="v_prediction"))
    torch.testing.assert_close(vsched.target(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)


def test_zero_terminal_snr_ends_in_pure_noise() -> None:
    sched = NoiseSchedule(ScheduleConfig(prediction_type="v_prediction", zero_terminal_snr=True))
    assert float(sched.scheduler.alphas_cumprod[-1]) < 1e-6
    ddim = sched.sampling_scheduler()
    assert isinstance(ddim, DDIMScheduler) and ddim.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        ScheduleConfig(prediction_type="x0")


def test_weighted_loss_matches_a_loop() -> None:
    pred, target = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    mask = (torch.rand(2, 3, 1, 4, 4) > 0.5).float()
    total = 0.0
    for idx in np.ndindex(*pred.shape):
        m = float(mask[idx[0], idx[1], 0, idx[3], idx[4]])
        total += (1 + 2.0 * m) * float(pred[idx] - target[idx]) ** 2
    assert math.isclose(float(weighted_diffusion_loss(pred, target, mask, alpha=2.0)), total / pred.numel(), rel_tol=1e-5)
    torch.testing.assert_close(weighted_diffusion_loss(pred, target, None), F.mse_loss(pred, target))


def test_heatmap_gate_and_loss() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.full((2000,), 100), torch.full((2000,), 700)])
    gate = heatmap_gate(t, generator=g)
    assert gate[2000:].sum() == 0 and 0.45 < gate[:2000].mean() < 0.55
    target = torch.rand(2, 3, 42, 8, 8)
    preds = [torch.rand(2, 3, 42, 8, 8), torch.rand(2, 3, 42, 4, 4)]
    gate = torch.tensor([1.0, 0.0])
    small = F.interpolate(target.flatten(0, 1), size=(4, 4), mode="bilinear", align_corners=False).view(2, 3, 42, 4, 4)
    want = (((preds[0][0] - target[0]) ** 2).mean() / 2 + ((preds[1][0] - small[0]) ** 2).mean() / 2) / 2
    torch.testing.assert_close(heatmap_loss(preds, target, gate), want)


def test_mask_loss_is_bce_against_boxes() -> None:
    logits = [torch.randn(1, 2, 1, 4, 4)]
    target = (torch.rand(1, 2, 1, 4, 4) > 0.5).float()
    p = torch.sigmoid(logits[0])
    want = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(mask_loss(logits, target), want)


def test_losses_are_returned_separately() -> None:
    cfg = LossConfig(mask_weight=0.5)
    pred, target = torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 4, 4, 4)
    heat = [torch.rand(1, 2, 42, 4, 4)]
    out = cyberhost_losses(pred, target, torch.tensor([10]), LossConfig(heatmap_prob=1.0), heatmaps=heat,
                           heatmap_target=torch.zeros(1, 2, 42, 4, 4), hand_masks=[torch.zeros(1, 2, 1, 4, 4)],
                           hand_box_mask=torch.ones(1, 2, 1, 4, 4))
    assert set(out) == {"loss", "loss_diffusion", "loss_heatmap", "loss_mask"}
    torch.testing.assert_close(out["loss_heatmap"], heat[0].square().mean())
    torch.testing.assert_close(out["loss_mask"], torch.tensor(math.log(2.0)))
    torch.testing.assert_close(out["loss"], out["loss_diffusion"] + out["loss_heatmap"] + 0.1 * out["loss_mask"])
    assert cfg.mask_weight == 0.5


def test_box_masks_match_a_loop() -> None:
    boxes = torch.tensor([[3.0, 5.0, 20.0, 13.0], [float("nan")] * 4, [25.0, 0.0, 32.0, 6.0]])
    got = box_masks(boxes, (32, 32), (8, 8))[0]
    want = torch.zeros(8, 8)
    for i in range(8):
        for j in range(8):
            y, x = (i + 0.5) * 4, (j + 0.5) * 4
            want[i, j] = float(any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in boxes.tolist() if not math.isnan(b[0])))
    assert torch.equal(got, want)


def test_keypoint_targets() -> None:
    kp = torch.zeros(133, 3)
    kp[:, 2] = 0.0
    kp[100] = torch.tensor([11.0, 23.0, 0.9])  # one left-hand point, at the centre of cell (11, 5)
    maps = keypoint_heatmaps(kp[91:], (32, 32), (16, 16), sigma=1.0)
    assert maps.shape == (42, 16, 16) and maps[[i for i in range(42) if i != 9]].max() == 0
    peak = divmod(int(maps[9].argmax()), 16)
    assert peak == (11, 5) and math.isclose(float(maps[9].max()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(maps[9, 11, 6]), math.exp(-0.5), rel_tol=1e-5)  # one cell away, sigma 1
    kp[23:30] = torch.tensor([[4.0, 4.0, 1.0]] * 3 + [[12.0, 8.0, 1.0]] * 4)
    region = keypoint_region_mask(kp, (32, 32), (8, 8), margin=0.0)
    assert region.shape == (1, 8, 8) and region[0, 1, 1] == 1 and region[0, 6, 6] == 0


def test_condition_dropout_rates() -> None:
    ref, audio = ConditionDropout(0.1, 0.2, 0.3).sample(100_000, generator=torch.Generator().manual_seed(0))
    only_ref = (~ref & audio).float().mean()
    only_audio = (ref & ~audio).float().mean()
    both = (~ref & ~audio).float().mean()
    assert abs(only_ref - 0.1) < 0.01 and abs(only_audio - 0.2) < 0.01 and abs(both - 0.3) < 0.01
    with pytest.raises(ValueError):
        ConditionDropout(0.5, 0.5, 0.5)


def test_cfg_combination_and_sampler_calls() -> None:
    a, b, c = torch.full((1,), 1.0), torch.full((1,), 2.0), torch.full((1,), 4.0)
    torch.testing.assert_close(combine_guidance(a, b, c), a + 2.5 * (b - a) + 4.5 * (c - b))
    calls: list[tuple[bool, bool]] = []

    def denoise(x: torch.Tensor, t: torch.Tensor, use_ref: bool, use_audio: bool) -> torch.Tensor:
        calls.append((use_ref, use_audio))
        return torch.full_like(x, 0.1 * use_ref + 0.01 * use_audio)

    sampler = GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(steps=4))
    x = torch.zeros(1, 2, 4, 3, 3)
    guided = sampler.guided(denoise, x, torch.tensor([10]))
    torch.testing.assert_close(guided, torch.full_like(x, 2.5 * 0.1 + 4.5 * 0.01))
    out = sampler.sample(denoise, (1, 2, 4, 3, 3), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 4, 3, 3) and len(calls) == 3 + 4 * 3
    assert set(calls) == {(False, False), (True, False), (True, True)}
