"""CyberHost's training losses (Eq. 6 and the RCA mask supervision, Sec. 3.2-3.4).

``L = (1 + alpha*M) * L_diffusion + (1/N) * sum_i ||H_i - H^_i||^2`` with ``M`` the face/hand
keypoint-region mask at latent resolution, the heatmap term averaged over the N hand RCAs and
applied, per sample, only when ``t < 500`` and with probability 0.5; plus a BCE between each RCA's
mask logits and its region box mask (weight ours: the paper gives none). Every term is returned
separately for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossConfig:
    """Loss weights.

    Attributes:
        alpha: local reweighting strength of Eq. 6 (paper: 1).
        heatmap_weight: weight of the heatmap term (paper: 1).
        heatmap_max_t: the heatmap term applies only for t below this (paper: 500).
        heatmap_prob: probability a sample gets the heatmap term (paper: 0.5).
        mask_weight: weight of the RCA mask BCE (not in the paper; 0.1 keeps it below the diffusion loss).
    """

    alpha: float = 1.0
    heatmap_weight: float = 1.0
    heatmap_max_t: int = 500
    heatmap_prob: float = 0.5
    mask_weight: float = 0.1


def weighted_diffusion_loss(pred: Tensor, target: Tensor, region_mask: Tensor | None, alpha: float = 1.0) -> Tensor:
    """Mean of ``(1 + alpha*M) * (pred - target)^2`` (Eq. 6, first term).

    Args:
        pred: ``(B, F, C, h, w)`` (or any rank with channels at -3).
        target: same shape.
        region_mask: ``(B, F, 1, h, w)`` broadcastable {0, 1} mask M, or None (plain MSE).
        alpha: reweighting strength.
    """
    err = (pred.float() - target.float()) ** 2
    if region_mask is None:
        return err.mean()
    return ((1.0 + alpha * region_mask.float()) * err).mean()


def heatmap_gate(timesteps: Tensor, max_t: int = 500, prob: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample {0, 1} gate of the heatmap loss: ``t < max_t`` and a coin with ``prob``."""
    coin = torch.rand(timesteps.shape, generator=generator).to(timesteps.device) < prob
    return ((timesteps < max_t) & coin).float()


def heatmap_loss(preds: list[Tensor], target: Tensor, gate: Tensor) -> Tensor:
    """``(1/N) sum_i ||H_i - H^_i||^2`` over hand RCAs, masked per sample by ``gate``.

    Args:
        preds: per hand RCA ``(B, F, K, h_i, w_i)``.
        target: ``(B, F, K, H, W)`` heatmaps at the highest RCA resolution (resized per RCA).
        gate: ``(B,)`` from :func:`heatmap_gate`.

    Returns:
        Scalar: per-sample mean squared error, gated, averaged over samples and over the RCAs.
    """
    if not preds:
        return target.new_zeros(())
    total = target.new_zeros((), dtype=torch.float32)
    for pred in preds:
        tgt = target
        if tgt.shape[-2:] != pred.shape[-2:]:
            tgt = F.interpolate(target.flatten(0, 1).float(), size=pred.shape[-2:], mode="bilinear",
                                align_corners=False).unflatten(0, target.shape[:2])
        per_sample = ((pred.float() - tgt.float()) ** 2).flatten(1).mean(1)  # (B,)
        total = total + (per_sample * gate).mean()
    return total / len(preds)


def mask_loss(logits: list[Tensor], target: Tensor) -> Tensor:
    """Mean BCE between each RCA's mask logits and the region box mask (resized per RCA by max-pool).

    Args:
        logits: per RCA ``(B, F, 1, h_i, w_i)``.
        target: ``(B, F, 1, H, W)`` {0, 1} box mask at the highest RCA resolution.
    """
    if not logits:
        return target.new_zeros(())
    total = target.new_zeros((), dtype=torch.float32)
    for logit in logits:
        tgt = target.float()
        if tgt.shape[-2:] != logit.shape[-2:]:
            tgt = F.adaptive_max_pool2d(tgt.flatten(0, 1), logit.shape[-2:]).unflatten(0, target.shape[:2])
        total = total + F.binary_cross_entropy_with_logits(logit.float(), tgt)
    return total / len(logits)


def cyberhost_losses(
    pred: Tensor,
    target: Tensor,
    timesteps: Tensor,
    config: LossConfig,
    region_mask: Tensor | None = None,
    heatmaps: list[Tensor] | None = None,
    heatmap_target: Tensor | None = None,
    face_masks: list[Tensor] | None = None,
    face_box_mask: Tensor | None = None,
    hand_masks: list[Tensor] | None = None,
    hand_box_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """All of CyberHost's terms; ``loss`` is their weighted sum, the rest are for logging.

    Returns:
        ``{"loss", "loss_diffusion", "loss_heatmap", "loss_mask"}`` scalars.
    """
    diffusion = weighted_diffusion_loss(pred, target, region_mask, config.alpha)
    zero = diffusion.new_zeros(())
    heat = zero
    if heatmaps and heatmap_target is not None:
        gate = heatmap_gate(timesteps, config.heatmap_max_t, config.heatmap_prob, generator)
        heat = heatmap_loss(heatmaps, heatmap_target, gate)
    masks = zero
    if face_masks and face_box_mask is not None:
        masks = masks + mask_loss(face_masks, face_box_mask)
    if hand_masks and hand_box_mask is not None:
        masks = masks + mask_loss(hand_masks, hand_box_mask)
    loss = diffusion + config.heatmap_weight * heat + config.mask_weight * masks
    return {"loss": loss, "loss_diffusion": diffusion.detach(), "loss_heatmap": heat.detach(), "loss_mask": masks.detach()}
