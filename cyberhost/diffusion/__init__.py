"""Diffusion math of CyberHost, apart from the network: schedule, losses (Eq. 6), targets, CFG sampler."""

from .guidance import GuidedSampler, SamplerConfig, combine_guidance
from .losses import LossConfig, cyberhost_losses, heatmap_gate, heatmap_loss, mask_loss, weighted_diffusion_loss
from .schedule import NoiseSchedule, ScheduleConfig
from .targets import bounding_box_of_valid_points, box_masks, keypoint_heatmaps, keypoint_region_mask

__all__ = [
    "GuidedSampler", "LossConfig", "NoiseSchedule", "SamplerConfig", "ScheduleConfig",
    "bounding_box_of_valid_points", "box_masks", "combine_guidance", "cyberhost_losses", "heatmap_gate",
    "heatmap_loss", "keypoint_heatmaps", "keypoint_region_mask", "mask_loss", "weighted_diffusion_loss",
]
