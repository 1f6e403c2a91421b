"""Region Codebook Attention (CyberHost Sec. 3.2, Eq. 2-5) and the hand keypoint heatmap head.

For features ``F`` of a UNet stage and an identity descriptor ``R(I_r)`` of the region (face or
hands)::

    F_motion = Attn(F, C_spa, C_spa) + Attn(F_t, C_temp, C_temp)     (Eq. 2-3)
    F_id     = Attn(F, R(I_r), R(I_r))                               (Eq. 4)
    F_out    = (F_motion + F_id) * M_r + F                           (Eq. 5)

``C_spa`` (n x d) and ``C_temp`` (m x d) are learnable bases made orthonormal on every forward
(QR with the sign fixed so that it equals Gram-Schmidt, or Gram-Schmidt itself). The spatial term
attends per frame; for the temporal term, which the paper does not detail, each pixel's sequence
over frames first goes through a temporal self-attention (with sinusoidal frame positions) so that
its query to ``C_temp`` carries motion across frames. ``M_r`` is predicted by small convs from
``F`` and returned as logits for the mask loss (supervised by the region boxes). All output
projections are zero, so an RCA is a no-op at initialisation.

Identity tokens of a region missing from the reference (no face found, one hand out of view) are
masked out of the identity attention (``identity_valid``), never attended as a black crop; a
sample with no valid token, or whose reference is dropped for CFG, gets ``F_id = 0``.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from .attention import AddedCrossAttention, PlainProcessor, sdpa, sinusoid


def gram_schmidt(rows: Tensor) -> Tensor:
    """Orthonormalise the rows of ``rows`` (n x d, n <= d) by classical Gram-Schmidt (in float32+)."""
    out: list[Tensor] = []
    for vec in rows:
        for basis in out:
            vec = vec - (vec @ basis) * basis
        out.append(vec / vec.norm())
    return torch.stack(out)


def qr_orthonormalise(rows: Tensor) -> Tensor:
    """Orthonormal rows equal to Gram-Schmidt's: QR of ``rows^T`` with ``diag(R) > 0``."""
    q, r = torch.linalg.qr(rows.transpose(0, 1))  # q (d, n), r (n, n)
    sign = torch.sign(torch.diagonal(r))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (q * sign).transpose(0, 1)


class Codebook(nn.Module):
    """Learnable bases ``C`` (n x d), orthonormalised on every forward.

    Args:
        size: n, number of bases (<= dim).
        dim: d, their width.
        method: ``"qr"`` or ``"gram_schmidt"``.
    """

    def __init__(self, size: int, dim: int, method: str = "qr") -> None:
        super().__init__()
        if size > dim:
            raise ValueError(f"a codebook of {size} orthonormal bases needs width >= {size}, got {dim}")
        self.method = method
        self.weight = nn.Parameter(torch.randn(size, dim) / dim**0.5)
        self.last: Tensor | None = None  # the bases of the last forward (tests read it)

    def forward(self) -> Tensor:
        """Returns the orthonormal bases ``(n, d)`` in float32."""
        with torch.autocast(self.weight.device.type, enabled=False):
            w = self.weight.float()
            basis = qr_orthonormalise(w) if self.method == "qr" else gram_schmidt(w)
        self.last = basis.detach()
        return basis


class RegionCodebookAttention(nn.Module):
    """One RCA for a region (face or hands) at one UNet stage, Eq. 2-5.

    Args:
        channels: d, the stage width.
        id_dim: width of the identity tokens R(I_r).
        spatial_size: n.
        temporal_size: m.
        heads: attention heads.
        method: orthonormalisation method.
    """

    def __init__(self, channels: int, id_dim: int, spatial_size: int, temporal_size: int, heads: int,
                 method: str = "qr") -> None:
        super().__init__()
        self.c_spa = Codebook(spatial_size, channels, method)
        self.c_temp = Codebook(temporal_size, channels, method)
        groups = 32 if channels % 32 == 0 else 8
        self.norm = nn.GroupNorm(groups, channels)
        heads = max(1, min(heads, channels))
        self.spatial = AddedCrossAttention(channels, channels, heads)
        self.temporal = AddedCrossAttention(channels, channels, heads)
        self.identity = AddedCrossAttention(channels, id_dim, heads)
        self.temporal_mix = Attention(channels, heads=heads, dim_head=channels // heads, processor=PlainProcessor())
        self.mask_head = nn.Sequential(
            nn.Conv2d(channels, max(channels // 4, 8), 3, padding=1), nn.SiLU(),
            nn.Conv2d(max(channels // 4, 8), 1, 3, padding=1),
        )
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, identity: Tensor | None, num_frames: int, identity_valid: Tensor | None = None,
                drop_reference: Tensor | None = None, mask_override: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Apply Eq. 2-5.

        Args:
            x: F, ``(B*F, C, h, w)``.
            identity: R(I_r) tokens ``(B, T, id_dim)`` or None (no identity term).
            num_frames: F.
            identity_valid: ``(B, T)`` bool, True = the token may be attended (its region was
                found in the reference); None = every token valid, which keeps the unmasked SDPA
                path. A sample with no valid token gets ``F_id = 0``.
            drop_reference: ``(B,)`` bool, True removes the identity term of that sample (the
                reference is dropped for CFG); None = dropped for none.
            mask_override: ``(B*F, 1, h, w)`` mask used instead of sigmoid(logits) (tests).

        Returns:
            ``(out (B*F, C, h, w), mask logits (B*F, 1, h, w))``.
        """
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, identity, num_frames, identity_valid,
                                                     drop_reference, mask_override, use_reentrant=False)
        return self._forward(x, identity, num_frames, identity_valid, drop_reference, mask_override)

    def _forward(self, x: Tensor, identity: Tensor | None, num_frames: int, identity_valid: Tensor | None,
                 drop_reference: Tensor | None, mask_override: Tensor | None) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        b = n // num_frames
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (BF, hw, C)
        c_spa = self.c_spa().to(tokens.dtype)[None]  # (1, n, C): K/V projected once, shared by all frames
        f_motion = self.spatial(tokens, c_spa)  # (BF, hw, C), Eq. 2

        seq = tokens.view(b, num_frames, h * w, c).transpose(1, 2).reshape(b * h * w, num_frames, c)  # (B*hw, F, C)
        pos = sinusoid(torch.arange(num_frames, device=x.device), c).to(seq.dtype)  # (F, C)
        seq = seq + pos
        seq = seq + sdpa(self.temporal_mix, seq, seq)  # (B*hw, F, C)
        c_temp = self.c_temp().to(seq.dtype)[None]  # (1, m, C), shared by every pixel sequence
        f_temp = self.temporal(seq, c_temp)  # (B*hw, F, C), Eq. 3
        f_motion = f_motion + f_temp.view(b, h * w, num_frames, c).transpose(1, 2).reshape(n, h * w, c)

        if identity is not None:
            f_motion = f_motion + self._identity_term(tokens, identity, num_frames, identity_valid, drop_reference)
        delta = f_motion.transpose(1, 2).reshape(n, c, h, w)  # (BF, C, h, w)
        logits = self.mask_head(x)  # (BF, 1, h, w)
        mask = torch.sigmoid(logits) if mask_override is None else mask_override
        return x + delta * mask.to(delta.dtype), logits  # Eq. 5

    def _identity_term(self, tokens: Tensor, identity: Tensor, frames: int, valid: Tensor | None,
                       drop: Tensor | None) -> Tensor:
        """F_id (Eq. 4) of ``(B*F, hw, C)`` features over the valid identity tokens of their sample."""
        ident = identity.to(tokens.dtype).repeat_interleave(frames, 0)  # (BF, T, id_dim)
        gate = None if drop is None else ~drop  # (B,)
        if valid is None:
            f_id = self.identity(tokens, ident)  # (BF, hw, C), unmasked: the fast kernels stay available
        else:
            any_valid = valid.any(dim=1)  # (B,)
            # a softmax over no key is NaN: a sample without valid tokens attends to all of them here
            # and is zeroed below, so nothing of its (invalid) tokens reaches the output or the gradient
            attend = valid | ~any_valid[:, None]  # (B, T)
            f_id = self.identity(tokens, ident, attend.repeat_interleave(frames, 0)[:, None, None, :])
            gate = any_valid if gate is None else gate & any_valid
        if gate is not None:
            f_id = f_id * gate.to(f_id.dtype).repeat_interleave(frames).view(-1, 1, 1)
        return f_id  # (BF, hw, C)


class HeatmapHead(nn.Module):
    """Convs after a hand RCA predicting the 42 hand keypoint heatmaps (Eq. 6, second term).

    Args:
        channels: the stage width.
        num_keypoints: heatmaps to predict (21 per hand).
    """

    def __init__(self, channels: int, num_keypoints: int = 42) -> None:
        super().__init__()
        hidden = max(channels // 2, 16)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, num_keypoints, 1),
        )
        # a small start: the random head's output energy grows with the map's pixels (at sd15 size the
        # heatmap term began ~20x the diffusion term); scaled, not zeroed, so its gradient still flows
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.mul_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        """(B*F, C, h, w) -> (B*F, K, h, w)."""
        return self.net(x)


def orthonormality_error(basis: Tensor) -> float:
    """``||C C^T - I||_max`` of row bases, i.e. ``||Q^T Q - I||`` of the column matrix ``Q = C^T``."""
    eye = torch.eye(basis.shape[0], dtype=basis.dtype, device=basis.device)
    return float((basis @ basis.transpose(0, 1) - eye).abs().max())


__all__ = ["Codebook", "HeatmapHead", "RegionCodebookAttention", "gram_schmidt", "orthonormality_error",
           "qr_orthonormalise"]
