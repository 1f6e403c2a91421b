"""Diffusion math against independent computations: hand formulas, loops, the paper's DDIM update."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cyberhost.diffusion import (
    GuidedSampler,
    LossConfig,
    NoiseSchedule,
    SamplerConfig,
    ScheduleConfig,
    bounding_box_of_valid_points,
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

NAN = float("nan")


def _sd_alphas_cumprod() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD-1.5's scaled-linear schedule
    return np.cumprod(1 - betas)


def _gaussian_energy_loop(pred: torch.Tensor, x: float, y: float, cell: tuple[float, float], sigma: float) -> float:
    """``sum_pixels (pred - exp(-d^2 / 2 sigma^2))^2`` of one map, with d in cells, by a Python loop."""
    total = 0.0
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            d2 = ((j + 0.5) - x / cell[1]) ** 2 + ((i + 0.5) - y / cell[0]) ** 2
            total += (float(pred[i, j]) - math.exp(-d2 / (2 * sigma**2))) ** 2
    return total


def test_add_noise_and_targets_match_hand_formulas() -> None:
    sched = NoiseSchedule()
    x0, noise = torch.randn(3, 2, 4, 5, 5), torch.randn(3, 2, 4, 5, 5)
    t = torch.tensor([0, 499, 999])
    ab = torch.tensor(_sd_alphas_cumprod(), dtype=torch.float32)[t].view(3, 1, 1, 1, 1)
    torch.testing.assert_close(sched.add_noise(x0, noise, t), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    assert torch.equal(sched.target(x0, noise, t), noise)
    vsched = NoiseSchedule(ScheduleConfig(prediction_type="v_prediction"))
    torch.testing.assert_close(vsched.target(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)


def test_zero_terminal_snr_matches_lin_et_al_rescaling() -> None:
    # Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so that its last value is 0
    s = np.sqrt(_sd_alphas_cumprod())
    want = ((s - s[-1]) * s[0] / (s[0] - s[-1])) ** 2
    sched = NoiseSchedule(ScheduleConfig(prediction_type="v_prediction", zero_terminal_snr=True))
    got = sched.scheduler.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-4, atol=1e-7)
    assert got[-1] < 1e-6
    ddim = sched.sampling_scheduler()
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [999, 749, 499, 249]  # "trailing": the first step starts at pure noise
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


def test_heatmap_gate_rates() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.full((2000,), 100), torch.full((2000,), 700)])
    gate = heatmap_gate(t, generator=g)
    assert gate[2000:].sum() == 0 and 0.45 < gate[:2000].mean() < 0.55


def test_heatmap_loss_matches_a_loop() -> None:
    """Sum over each valid map's pixels, / N valid per sample, gated batch mean, mean over RCAs."""
    g = torch.Generator().manual_seed(3)
    b, f, k, size = 3, 2, 4, (32, 48)
    points = torch.rand(b, f, k, 2, generator=g) * torch.tensor([48.0, 32.0])
    valid = torch.rand(b, f, k, generator=g) > 0.3
    valid[2] = False  # a sample without a visible hand: N = 0 contributes 0
    points[~valid] = NAN  # never read
    preds = [torch.rand(b, f, k, 8, 12, generator=g) * 0.5, torch.rand(b, f, k, 4, 6, generator=g) * 0.5]
    gate = torch.tensor([1.0, 0.0, 1.0])
    want = 0.0
    for pred in preds:
        cell = (size[0] / pred.shape[-2], size[1] / pred.shape[-1])
        for s in range(b):
            n = int(valid[s].sum())
            energy = sum(_gaussian_energy_loop(pred[s, i, j], *points[s, i, j].tolist(), cell, 1.5)
                         for i in range(f) for j in range(k) if valid[s, i, j])
            want += float(gate[s]) * (energy / n if n else 0.0) / b
    got = heatmap_loss(preds, points, valid, size, gate, sigma=1.5)
    assert math.isclose(float(got), want / len(preds), rel_tol=1e-5)


def test_heatmap_loss_magnitude_and_absent_keypoints() -> None:
    """A zero prediction pays the target's energy, ~pi sigma^2 per visible point; absent points cost and pull nothing."""
    points = torch.tensor([[[[100.3, 60.7], [NAN, NAN], [1e9, -1e9]]]])  # (1, 1, 3, 2), one visible point
    valid = torch.tensor([[[True, False, False]]])
    pred = torch.zeros(1, 1, 3, 40, 24, requires_grad=True)
    loss = heatmap_loss([pred], points, valid, (320, 192), torch.ones(1), sigma=1.0)
    assert math.isclose(float(loss.detach()), math.pi, rel_tol=1e-3)  # integral of exp(-r^2/sigma^2) = pi sigma^2
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 0, 1:].abs().sum() == 0 and pred.grad[0, 0, 0].abs().sum() > 0
    # another visible point with a perfect prediction halves the loss (N = 2)
    valid2 = torch.tensor([[[True, True, False]]])
    points2 = points.clone()
    points2[0, 0, 1] = torch.tensor([50.0, 200.0])
    perfect = keypoint_heatmaps(points2, valid2, (320, 192), (40, 24))
    pred2 = torch.cat([torch.zeros(1, 1, 1, 40, 24), perfect[:, :, 1:2], torch.zeros(1, 1, 1, 40, 24)], dim=2)
    half = heatmap_loss([pred2], points2, valid2, (320, 192), torch.ones(1), sigma=1.0)
    assert math.isclose(float(half), math.pi / 2, rel_tol=1e-3)


def test_mask_loss_is_bce_against_boxes() -> None:
    logits = [torch.randn(1, 2, 1, 4, 4)]
    target = (torch.rand(1, 2, 1, 4, 4) > 0.5).float()
    p = torch.sigmoid(logits[0])
    want = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(mask_loss(logits, target), want)


def test_losses_are_returned_separately_and_weighted_by_the_config() -> None:
    cfg = LossConfig(heatmap_weight=2.0, heatmap_prob=1.0, mask_weight=0.5)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 2, 4, 4, 4, generator=g)
    heat = [torch.rand(1, 2, 42, 4, 4, generator=g)]
    kps, kvalid = torch.full((1, 2, 42, 2), 12.0), torch.zeros(1, 2, 42, dtype=torch.bool)
    kvalid[0, 1, 5] = True
    out = cyberhost_losses(pred, target, torch.tensor([10]), cfg, heatmaps=heat, hand_keypoints=kps,
                           hand_keypoints_valid=kvalid, image_size=(32, 32), hand_masks=[torch.zeros(1, 2, 1, 4, 4)],
                           hand_box_mask=torch.ones(1, 2, 1, 4, 4))
    assert set(out) == {"loss", "loss_diffusion", "loss_heatmap", "loss_mask"}
    want_heat = _gaussian_energy_loop(heat[0][0, 1, 5], 12.0, 12.0, (8.0, 8.0), 1.0)  # N = 1, gate on (t < 500)
    assert math.isclose(float(out["loss_heatmap"]), want_heat, rel_tol=1e-5)
    torch.testing.assert_close(out["loss_mask"], torch.tensor(math.log(2.0)))
    torch.testing.assert_close(out["loss_diffusion"], F.mse_loss(pred, target))
    torch.testing.assert_close(out["loss"], out["loss_diffusion"] + 2.0 * out["loss_heatmap"] + 0.5 * out["loss_mask"])
    late = cyberhost_losses(pred, target, torch.tensor([500]), cfg, heatmaps=heat, hand_keypoints=kps,
                            hand_keypoints_valid=kvalid, image_size=(32, 32))
    assert float(late["loss_heatmap"]) == 0.0  # t >= 500: no heatmap term
    with pytest.raises(ValueError, match="hand_keypoints"):
        cyberhost_losses(pred, target, torch.tensor([10]), cfg, heatmaps=heat)


@pytest.mark.parametrize(("field", "value"), [("heatmap_sigma", 0.0), ("heatmap_prob", 1.5), ("heatmap_weight", -1.0)])
def test_loss_config_rejects_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        LossConfig(**{field: value})


def test_box_masks_match_a_loop_and_skip_invalid_rows() -> None:
    boxes = torch.tensor([[3.0, 5.0, 20.0, 13.0], [NAN] * 4, [25.0, 0.0, 32.0, 6.0], [0.0, 20.0, 32.0, 32.0]])
    valid = torch.tensor([True, False, True, False])  # the last row is a real-looking box marked absent
    got = box_masks(boxes, valid, (32, 32), (8, 8))[0]
    want = torch.zeros(8, 8)
    for i in range(8):
        for j in range(8):
            y, x = (i + 0.5) * 4, (j + 0.5) * 4
            want[i, j] = float(any(b[0] <= x < b[2] and b[1] <= y < b[3] for b, v in zip(boxes.tolist(), valid.tolist(), strict=True) if v))
    assert torch.equal(got, want)
    batched = box_masks(boxes.expand(2, 3, 4, 4), valid.expand(2, 3, 4), (32, 32), (8, 8))
    assert batched.shape == (2, 3, 1, 8, 8) and torch.equal(batched[1, 2, 0], want)
    with pytest.raises(ValueError, match="bool mask"):
        box_masks(boxes, valid.float(), (32, 32), (8, 8))


def test_bounding_box_of_valid_points() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 5, 2, generator=g) * 100
    valid = torch.rand(3, 5, generator=g) > 0.4
    valid[1] = False
    pts[~valid] = NAN
    boxes, ok = bounding_box_of_valid_points(pts, valid)
    for i in range(3):
        sel = pts[i][valid[i]].numpy()
        if len(sel):
            np.testing.assert_allclose(boxes[i].numpy(), [*sel.min(0), *sel.max(0)])
        else:
            assert not ok[i] and torch.equal(boxes[i], torch.zeros(4))
    assert ok.tolist() == [bool(v.any()) for v in valid]


def test_keypoint_targets() -> None:
    kp = torch.full((133, 2), NAN)  # every absent point's value is NaN: nothing may leak through
    valid = torch.zeros(133, dtype=torch.bool)
    kp[100], valid[100] = torch.tensor([11.0, 23.0]), True  # one left-hand point, at the centre of cell (11, 5)
    maps = keypoint_heatmaps(kp[91:], valid[91:], (32, 32), (16, 16), sigma=1.0)
    assert maps.shape == (42, 16, 16) and torch.isfinite(maps).all()
    assert maps[[i for i in range(42) if i != 9]].max() == 0
    peak = divmod(int(maps[9].argmax()), 16)
    assert peak == (11, 5) and math.isclose(float(maps[9].max()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(maps[9, 11, 6]), math.exp(-0.5), rel_tol=1e-5)  # one cell away, sigma 1
    kp[23:30], valid[23:30] = torch.tensor([[4.0, 4.0]] * 3 + [[12.0, 8.0]] * 4), True  # face points
    kp[120], valid[120] = torch.tensor([30.0, 30.0]), False  # a right-hand point that is not there
    region = keypoint_region_mask(kp, valid, (32, 32), (8, 8), margin=0.0)
    # by hand: face box (4, 4)-(12, 8) and a one-point left-hand box (empty), cell centres 2, 6, ...
    want = torch.zeros(8, 8)
    want[1, 1] = want[1, 2] = 1
    assert region.shape == (1, 8, 8) and torch.equal(region[0], want)


def _denoise_linear(calls: list[tuple[bool, bool]]) -> Callable[[torch.Tensor, torch.Tensor, bool, bool], torch.Tensor]:
    def denoise(x: torch.Tensor, t: torch.Tensor, use_ref: bool, use_audio: bool) -> torch.Tensor:
        calls.append((use_ref, use_audio))
        return x * (0.1 + 0.05 * use_ref + 0.02 * use_audio)

    return denoise


def test_cfg_combination_and_sampler_calls() -> None:
    a, b, c = torch.full((1,), 1.0), torch.full((1,), 2.0), torch.full((1,), 4.0)
    torch.testing.assert_close(combine_guidance(a, b, c), torch.full((1,), 1.0 + 2.5 * 1.0 + 4.5 * 2.0))
    calls: list[tuple[bool, bool]] = []
    sampler = GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(steps=4))
    x = torch.ones(1, 2, 4, 3, 3)
    torch.testing.assert_close(sampler.guided(_denoise_linear(calls), x, torch.tensor([10])),
                               x * (0.1 + 2.5 * 0.05 + 4.5 * 0.02))
    out = sampler.sample(_denoise_linear(calls), (1, 2, 4, 3, 3), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 4, 3, 3) and len(calls) == 3 + 4 * 3
    assert set(calls) == {(False, False), (True, False), (True, True)}
    plain: list[tuple[bool, bool]] = []
    GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(4, 1.0, 1.0)).sample(_denoise_linear(plain), (1, 4, 2, 2))
    assert plain == [(True, True)] * 4  # scales 1 and 1: one call per step


def test_sampler_matches_the_ddim_update_by_hand() -> None:
    """Eta-0 DDIM (Song et al. Eq. 12) with SD-1.5's alphas and 'leading' spacing, in float64 NumPy."""
    steps, shape = 4, (1, 2, 4, 3, 3)
    out = GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(steps=steps)).sample(
        _denoise_linear([]), shape, generator=torch.Generator().manual_seed(5))
    ab = _sd_alphas_cumprod()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)).double().numpy()
    stride = 1000 // steps
    for t in (np.arange(steps) * stride)[::-1] + 1:  # steps_offset 1: 751, 501, 251, 1
        eps = x * (0.1 + 2.5 * 0.05 + 4.5 * 0.02)
        prev = ab[t - stride] if t - stride >= 0 else ab[0]  # set_alpha_to_one=False: the last step lands on alpha_bar_0
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        x = np.sqrt(prev) * x0 + np.sqrt(1 - prev) * eps
    np.testing.assert_allclose(out.double().numpy(), x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("prediction", "zero_snr"), [("epsilon", False), ("v_prediction", False), ("v_prediction", True)])
def test_sampler_with_a_perfect_network_returns_the_clean_latents(prediction: str, zero_snr: bool) -> None:
    """Training's targets and the sampler agree: a denoiser that returns exactly what training teaches
    (``NoiseSchedule.target`` of the true x0 and the noise implied by x_t) samples x0 back, with guidance on."""
    from cyberhost.diffusion import ScheduleConfig

    schedule = NoiseSchedule(ScheduleConfig(prediction_type=prediction, zero_terminal_snr=zero_snr))
    x0 = torch.randn(1, 3, 4, 5, 5, generator=torch.Generator().manual_seed(3)) * 0.8
    ab = schedule.scheduler.alphas_cumprod.double()

    def perfect(x: torch.Tensor, t: torch.Tensor, use_ref: bool, use_audio: bool) -> torch.Tensor:
        a = ab[int(t[0])]
        noise = (x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()  # the noise that made x_t from x0
        return schedule.target(x0, noise.float(), t)

    for steps in (10, 25):
        out = GuidedSampler(schedule.sampling_scheduler(), SamplerConfig(steps=steps)).sample(
            perfect, tuple(x0.shape), generator=torch.Generator().manual_seed(0))
        # the last DDIM step lands on alpha_bar_0 (set_alpha_to_one=False), not on 1: sqrt(1 - alpha_bar_0) of noise
        tolerance = 5 * float((1 - ab[0]).sqrt())  # max over 75 values of that Gaussian residual
        assert float((out - x0).abs().max()) < tolerance, (steps, float((out - x0).abs().max()))
        assert float((out - x0).pow(2).mean()) < 0.01 * float(x0.pow(2).mean())
