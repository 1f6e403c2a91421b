"""Diffusion math of CyberHost, apart from the network: schedule, losses (Eq. 6), targets, CFG sampler."""

from .guidance import ConditionDropout, GuidedSampler, SamplerConfig, combine_guidance
from .losses import LossConfig, cyberhost_losses, heatmap_gate, heatmap_loss, mask_loss, weighted_diffusion_loss
from .schedule import NoiseSchedule, ScheduleConfig
from .targets import box_masks, keypoint_heatmaps, keypoint_region_mask, points_box

__all__ = [
    "ConditionDropout", "GuidedSampler", "LossConfig", "NoiseSchedule", "SamplerConfig", "ScheduleConfig",
    "box_masks", "combine_guidance", "cyberhost_losses", "heatmap_gate", "heatmap_loss", "keypoint_heatmaps",
    "keypoint_region_mask", "mask_loss", "points_box", "weighted_diffusion_loss",
]
