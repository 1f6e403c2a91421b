"""Sampling from CUDA graphs gives the eager network's predictions and the eager pipeline's frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.generate import synthetic_reference
from cyberhost.inference import GenerateConfig, generate_video
from cyberhost.models.graphs import PlannedForward

from ..inference.conftest import build_model, settings_for
from ..models.conftest import LATENT, sampling_inputs, wake_zero_inits

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_replays_match_the_eager_network() -> None:
    model = build_model().to(CUDA)
    wake_zero_inits(model)
    inputs = sampling_inputs(model)
    graphed = PlannedForward(model, inputs, cuda_graph=True)
    g = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        for step in range(4):  # eager warm-up, recording, two replays
            x = torch.randn(3, 3, 4, LATENT, LATENT, generator=g).to(CUDA)
            t = torch.full((3,), 900 - 200 * step, device=CUDA)
            got = graphed(x, t)
            want = model(x, t, **inputs).sample
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert graphed.recorded == (step >= 1) and not graphed.eager
    assert not torch.allclose(got, model(x, t + 100, **inputs).sample)  # t reaches the replay


@pytest.mark.parametrize("autocast", ["fp32", "bf16"])
def test_generation_keeps_its_frames(autocast: str) -> None:
    model = build_model().to(CUDA)
    wake_zero_inits(model)
    ref = synthetic_reference((64, 64))
    audio = np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32)  # 25 frames: 3 segments
    frames = {}
    for graphs in (False, True):
        config = GenerateConfig(steps=4, seed=2, autocast=autocast, cuda_graphs=graphs)
        frames[graphs] = generate_video(model, ref, audio, None, settings=settings_for(model), config=config,
                                        progress=False).frames
    diff = np.abs(frames[True].astype(int) - frames[False].astype(int))
    assert diff.max() <= 1, diff.max()
    assert frames[False].std() > 1  # not a constant image, so the comparison means something


def test_sampling_layers_match_diffusers_layers_on_cuda() -> None:
    """Half weights with sampling's layers (bf16 norms, split GEGLU, matmul projections of the spatial
    transformers) predict what diffusers' layers predict under bf16 autocast, eager and replayed."""
    from cyberhost.models.precision import TokenTransformer2D, set_inference_layers

    model = build_model().to(CUDA)
    wake_zero_inits(model)
    inputs = sampling_inputs(model)
    model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 4, LATENT, LATENT, generator=g).to(CUDA)
    t = torch.full((3,), 700, device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        want = model(x, t, **inputs).sample.float()
        assert set_inference_layers(model) > 0
        assert any(isinstance(m, TokenTransformer2D) for m in model.modules())
        got = model(x, t, **inputs).sample.float()
        graphed = PlannedForward(model, inputs, cuda_graph=True)
        replays = [graphed(x, t).float() for _ in range(3)]
    set_inference_layers(model, enabled=False)
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 2e-2, rel  # bf16 rounding in different places, nothing more
    torch.testing.assert_close(replays[-1], got, atol=1e-3, rtol=1e-3)
