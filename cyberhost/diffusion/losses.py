"""CyberHost's training losses (Eq. 6 and the RCA mask supervision, Sec. 3.2-3.4).

``L = (1 + alpha*M) * L_diffusion + (1/N) * sum_i ||H_i - H^_i||^2`` with ``M`` the face/hand
keypoint-region mask at latent resolution and, per hand RCA, ``H_i`` the Gaussian map of hand
keypoint ``i`` (one of the ``N`` visible ones) and ``H^_i`` its prediction; the heatmap term
applies per sample only when ``t < 500`` and with probability 0.5. Plus a BCE between each RCA's
mask logits and its region box mask (weight ours: the paper gives none). Every term is returned
separately for logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cyberhost.diffusion.targets import keypoint_heatmaps


@dataclass
class LossConfig:
    """Loss weights.

    The heatmap term follows Eq. 6 literally: for each visible hand keypoint the squared L2 norm
    ``||H_i - H^_i||^2`` is *summed* over the pixels of its map, and the sum over keypoints is
    divided by the number ``N`` of visible ones (absent keypoints are neither supervised nor
    counted); a sample whose gate is off (``t >= heatmap_max_t`` or the coin) contributes zero, and
    the batch mean runs over all samples, like the diffusion term's. Targets are Gaussians of
    peak 1 drawn at each hand RCA's own resolution with ``heatmap_sigma`` in that map's cells, so
    a target map has energy ``sum H^2 ~ pi * sigma^2`` (3.1 for sigma 1) at every RCA level, and
    a head that predicts zeros pays about that. With the gate (P(t < 500) * 0.5 = 1/4) the logged
    term is ~1.1 at init on ``tiny`` next to a diffusion term of ~1.3 (README, "Loss terms";
    ``benchmarks/loss_terms.py``): the same order, so weight 1. What a randomly initialised head
    predicts adds its own energy, which grows with the map's pixel count (at sd15's 80x48 finest RCA it
    can dominate the term at init). The per-pixel mean this replaces was hundreds of times smaller than the diffusion
    term and did not supervise.

    Attributes:
        alpha: local reweighting strength of Eq. 6 (paper: 1).
        heatmap_weight: weight of the heatmap term (paper: 1, with the sum-over-pixels norm above).
        heatmap_sigma: std of the Gaussian keypoint targets, in cells of each heatmap (ours: 1).
        heatmap_max_t: the heatmap term applies only for t below this (paper: 500).
        heatmap_prob: probability a sample gets the heatmap term (paper: 0.5).
        mask_weight: weight of the RCA mask BCE (not in the paper; 0.1 keeps it below the diffusion loss).
    """

    alpha: float = 1.0
    heatmap_weight: float = 1.0
    heatmap_sigma: float = 1.0
    heatmap_max_t: int = 500
    heatmap_prob: float = 0.5
    mask_weight: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.heatmap_sigma) and self.heatmap_sigma > 0):
            raise ValueError(f"loss.heatmap_sigma must be > 0 (cells of the heatmap), got {self.heatmap_sigma}")
        if not 0.0 <= self.heatmap_prob <= 1.0:
            raise ValueError(f"loss.heatmap_prob is a probability in [0, 1], got {self.heatmap_prob}")
        for name in ("alpha", "heatmap_weight", "mask_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


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


def heatmap_gate(timesteps: Tensor, max_t: int = 500, prob: float = 0.5, generator: torch.Generator | None = None,
                 coin: Tensor | None = None) -> Tensor:
    """Per-sample {0, 1} gate of the heatmap loss: ``t < max_t`` and a coin with ``prob``.

    ``coin`` is the ``(B,)`` uniform draw in ``[0, 1)`` of the coin (drawn from ``generator`` when None).
    """
    if coin is None:
        coin = torch.rand(timesteps.shape, generator=generator)
    heads = coin.to(timesteps.device) < prob
    return ((timesteps < max_t) & heads).float()


def heatmap_loss(preds: list[Tensor], points: Tensor, valid: Tensor, image_size: tuple[int, int], gate: Tensor,
                 sigma: float = 1.0) -> Tensor:
    """``(1/N) sum_i ||H_i - H^_i||^2`` per sample, gated, averaged over the batch and the hand RCAs.

    Args:
        preds: per hand RCA ``(B, F, K, h_i, w_i)`` predicted heatmaps.
        points: ``(B, F, K, 2)`` keypoints x, y in pixels of the frames (the 42 hand points).
        valid: ``(B, F, K)`` bool; the ``N`` of a sample counts its valid (frame, keypoint) pairs.
        image_size: (H, W) of the frames.
        gate: ``(B,)`` from :func:`heatmap_gate`.
        sigma: target Gaussian std in cells of each RCA's map.

    Returns:
        Scalar. Per RCA and sample: the squared L2 norm of each valid map's error summed over its
        pixels, divided by the sample's ``N`` (0 when ``N = 0``), times the gate; then the mean
        over the batch (gated-out samples count as zero) and over the RCAs.
    """
    if not preds:
        return points.new_zeros((), dtype=torch.float32)
    keep = valid.float()  # (B, F, K)
    count = keep.flatten(1).sum(1).clamp(min=1.0)  # (B,) N per sample
    total = points.new_zeros((), dtype=torch.float32)
    for pred in preds:
        target = keypoint_heatmaps(points, valid, image_size, tuple(pred.shape[-2:]), sigma)  # (B, F, K, h, w)
        energy = (pred.float() - target).square().sum((-2, -1))  # (B, F, K) ||H_i - H^_i||^2
        per_sample = (energy * keep).flatten(1).sum(1) / count  # (B,)
        total = total + (per_sample * gate.float()).mean()
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
    hand_keypoints: Tensor | None = None,
    hand_keypoints_valid: Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    face_masks: list[Tensor] | None = None,
    face_box_mask: Tensor | None = None,
    hand_masks: list[Tensor] | None = None,
    hand_box_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    coin: Tensor | None = None,
) -> dict[str, Tensor]:
    """All of CyberHost's terms; ``loss`` is their weighted sum, the rest are for logging.

    Args:
        pred: network output ``(B, F, C, h, w)``.
        target: what it regresses (noise or v), same shape.
        timesteps: ``(B,)`` diffusion timesteps (gate the heatmap term).
        config: weights and the heatmap target's sigma.
        region_mask: ``(B, F, 1, h, w)`` M of Eq. 6 (:func:`~cyberhost.diffusion.targets.keypoint_region_mask`).
        heatmaps: per hand RCA ``(B, F, 42, h_i, w_i)`` predictions.
        hand_keypoints: ``(B, F, 42, 2)`` hand keypoints in pixels (targets drawn here, per RCA).
        hand_keypoints_valid: ``(B, F, 42)`` bool.
        image_size: (H, W) of the frames the keypoints refer to.
        face_masks: per face RCA ``(B, F, 1, h_i, w_i)`` mask logits.
        face_box_mask: ``(B, F, 1, H', W')`` face box mask (:func:`~cyberhost.diffusion.targets.box_masks`).
        hand_masks: per hand RCA mask logits.
        hand_box_mask: ``(B, F, 1, H', W')`` union of the hand boxes.
        generator: CPU generator of the heatmap gate's coin.
        coin: ``(B,)`` uniform draws of the gate's coin (instead of drawing them from ``generator``).

    Returns:
        ``{"loss", "loss_diffusion", "loss_heatmap", "loss_mask"}`` scalars.
    """
    diffusion = weighted_diffusion_loss(pred, target, region_mask, config.alpha)
    zero = diffusion.new_zeros(())
    heat = zero
    if heatmaps:
        if hand_keypoints is None or hand_keypoints_valid is None or image_size is None:
            raise ValueError("heatmaps need hand_keypoints, hand_keypoints_valid and image_size")
        gate = heatmap_gate(timesteps, config.heatmap_max_t, config.heatmap_prob, generator, coin)
        heat = heatmap_loss(heatmaps, hand_keypoints, hand_keypoints_valid, image_size, gate, config.heatmap_sigma)
    masks = zero
    if face_masks and face_box_mask is not None:
        masks = masks + mask_loss(face_masks, face_box_mask)
    if hand_masks and hand_box_mask is not None:
        masks = masks + mask_loss(hand_masks, hand_box_mask)
    loss = diffusion + config.heatmap_weight * heat + config.mask_weight * masks
    return {"loss": loss, "loss_diffusion": diffusion.detach(), "loss_heatmap": heat.detach(), "loss_mask": masks.detach()}
