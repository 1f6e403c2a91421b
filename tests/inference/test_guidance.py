"""Two-scale CFG is combined in float32 even when the network runs in bf16."""

from __future__ import annotations

import torch

from cyberhost.diffusion import GuidedSampler, NoiseSchedule, SamplerConfig, combine_guidance


def _branches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4096, generator=g)
    # branches that differ by little, as CFG branches do: their differences are what gets scaled
    return [(base + 0.01 * torch.randn(4096, generator=g)).to(torch.bfloat16) for _ in range(3)]


def test_combine_of_bf16_branches_is_float32_and_exact() -> None:
    uncond, ref, full = _branches()
    got = combine_guidance(uncond, ref, full, 2.5, 4.5)
    assert got.dtype == torch.float32
    u, r, f = (t.double() for t in (uncond, ref, full))  # the same bf16 values, combined by hand in float64
    expected = u + 2.5 * (r - u) + 4.5 * (f - r)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    # the test can fail: the same sum in bf16 is far off (rounding of the scaled differences)
    in_bf16 = uncond + 2.5 * (ref - uncond) + 4.5 * (full - ref)
    assert (in_bf16.double() - expected).abs().max() > 1e-3


def test_sampler_steps_in_float32_under_bf16_autocast() -> None:
    net = torch.nn.Linear(4, 4)

    def denoise(x: torch.Tensor, t: torch.Tensor, use_ref: bool, use_audio: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x.movedim(2, -1)).movedim(-1, 2) * (1 + 0.1 * use_ref + 0.05 * use_audio)
        assert out.dtype == torch.bfloat16  # what a bf16 network returns
        return out

    def as_fp32(x: torch.Tensor, t: torch.Tensor, use_ref: bool, use_audio: bool) -> torch.Tensor:
        return denoise(x, t, use_ref, use_audio).float()

    shape = (1, 2, 4, 3, 3)
    with torch.no_grad():
        got = GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(steps=3)).sample(
            denoise, shape, generator=torch.Generator().manual_seed(1))
        ref = GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(steps=3)).sample(
            as_fp32, shape, generator=torch.Generator().manual_seed(1))
        plain = GuidedSampler(NoiseSchedule().sampling_scheduler(), SamplerConfig(3, 1.0, 1.0)).sample(
            denoise, shape, generator=torch.Generator().manual_seed(1))
    assert got.dtype == torch.float32 and plain.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)  # bf16 outputs are upcast before anything else
