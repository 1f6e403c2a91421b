"""Noise schedule of CyberHost's latent diffusion, on diffusers' schedulers (Sec. 3, SD-1.5 base).

SD-1.5's schedule (scaled-linear betas 0.00085..0.012, 1000 steps) with epsilon prediction is the
default. v-prediction and zero-terminal-SNR (Lin et al. 2024, "Common diffusion noise schedules and
sample steps are flawed") are options; they need a fine-tune because SD-1.5 was trained with eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor


@dataclass
class ScheduleConfig:
    """Noise schedule options.

    Attributes:
        prediction_type: ``"epsilon"`` (SD-1.5) or ``"v_prediction"``.
        zero_terminal_snr: rescale betas so the last step is pure noise (use with v-prediction).
        num_train_timesteps: training steps of the schedule.
        beta_start: first beta (SD-1.5: 0.00085).
        beta_end: last beta (SD-1.5: 0.012).
    """

    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")


class NoiseSchedule:
    """Training-side noise schedule: timestep sampling, noising, regression target.

    Args:
        config: schedule options.
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        c = self.config
        self.scheduler = DDPMScheduler(
            num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
            beta_schedule="scaled_linear", prediction_type=c.prediction_type, rescale_betas_zero_snr=c.zero_terminal_snr,
            clip_sample=False, steps_offset=1, timestep_spacing="trailing" if c.zero_terminal_snr else "leading",
        )

    @property
    def num_train_timesteps(self) -> int:
        """Number of training timesteps."""
        return self.config.num_train_timesteps

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> Tensor:
        """Uniform integer timesteps ``(batch,)``."""
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        return t.to(device)

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """q(x_t | x_0) for latents of any rank whose first axis is the batch."""
        return self.scheduler.add_noise(latents, noise, timesteps.to(latents.device))

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the network regresses: the noise, or v."""
        if self.config.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps.to(latents.device))

    def sampling_scheduler(self) -> DDIMScheduler:
        """A DDIM scheduler with the same betas and prediction type (for the sampler)."""
        return DDIMScheduler.from_config(self.scheduler.config, set_alpha_to_one=False)
