"""Two-scale classifier-free guidance sampling (CyberHost Sec. 4.1).

Training drops the reference and the audio (the dropout flags of :mod:`cyberhost.data.conditions`)
so that one network gives ``eps(ref, audio)``, ``eps(ref, -)`` and ``eps(-, -)``; sampling
combines them as::

    eps = eps(-,-) + s_ref*(eps(ref,-) - eps(-,-)) + s_audio*(eps(ref,audio) - eps(ref,-))

with s_ref = 2.5 and s_audio = 4.5 (paper). The reference features are computed once.

The combination and the scheduler step run in float32 whatever the network's precision: under
bf16 autocast the branches come back in bf16 (8 bits of mantissa), and scaling their difference
by 4.5 would scale its rounding error with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from torch import Tensor


def combine_guidance(eps_uncond: Tensor, eps_ref: Tensor, eps_full: Tensor, ref_scale: float = 2.5,
                     audio_scale: float = 4.5) -> Tensor:
    """Two-scale CFG: ``e(-,-) + s_ref(e(ref,-) - e(-,-)) + s_audio(e(ref,audio) - e(ref,-))``.

    The branches are cast to float32 first (float64 stays float64), so bf16/fp16 network outputs
    are combined at full precision; the result is float32.
    """
    def up(t: Tensor) -> Tensor:
        return t if t.dtype == torch.float64 else t.float()

    uncond, ref, full = up(eps_uncond), up(eps_ref), up(eps_full)
    return uncond + ref_scale * (ref - uncond) + audio_scale * (full - ref)


Denoiser = Callable[[Tensor, Tensor, bool, bool], Tensor]
"""``denoise(x_t (B, F, C, h, w), t (B,), use_reference, use_audio) -> prediction`` (eps or v)."""


@dataclass
class SamplerConfig:
    """Sampler options.

    Attributes:
        steps: DDIM steps (the paper does not say; 25-40 is the peers' range).
        ref_scale: reference guidance scale (paper: 2.5).
        audio_scale: audio guidance scale (paper: 4.5).
        eta: DDIM eta (0 = deterministic).
    """

    steps: int = 30
    ref_scale: float = 2.5
    audio_scale: float = 4.5
    eta: float = 0.0


class GuidedSampler:
    """DDIM sampling (diffusers' ``DDIMScheduler``) with two-scale CFG.

    Args:
        scheduler: e.g. ``NoiseSchedule.sampling_scheduler()``.
        config: steps and scales.
    """

    def __init__(self, scheduler: DDIMScheduler, config: SamplerConfig | None = None) -> None:
        self.scheduler = scheduler
        self.config = config or SamplerConfig()

    def guided(self, denoise: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        """The combined prediction at one step (three network calls, no guidance if both scales are 1 and 1)."""
        c = self.config
        full = denoise(x, t, True, True)
        if c.ref_scale == 1.0 and c.audio_scale == 1.0:
            return full.float()
        uncond = denoise(x, t, False, False)
        ref_only = denoise(x, t, True, False)
        return combine_guidance(uncond, ref_only, full, c.ref_scale, c.audio_scale)

    @torch.no_grad()
    def sample(self, denoise: Denoiser, shape: tuple[int, ...], device: torch.device | str = "cpu",
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Run the reverse process from Gaussian noise.

        Args:
            denoise: the network closure (reference features already computed inside it).
            shape: latent shape ``(B, F, C, h, w)``.
            device: where to sample.
            generator: CPU generator for the initial noise and DDIM's eta noise.
            dtype: latent dtype.

        Returns:
            Clean latents of ``shape``.
        """
        sched = self.scheduler
        sched.set_timesteps(self.config.steps, device=device)
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            tt = t.expand(shape[0]).to(device)
            pred = self.guided(denoise, sched.scale_model_input(x, t), tt)  # float32
            x = sched.step(pred, t, x.float(), eta=self.config.eta, generator=generator).prev_sample.to(dtype)
        return x
