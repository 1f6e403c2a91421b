"""Condition encoders of CyberHost (Sec. 3.2-3.3): Pose Encoder, Hand Encoder, hand clarity embedding.

* Pose Encoder: encodes the body movement map (added to the noised latent) and, as a separate
  instance, the reference skeleton map (added to the reference latent; pose-aligned reference
  feature). Its output conv is zero, so at init it adds nothing.
* Hand Encoder: same family, deeper; encodes each 128-px hand crop of the reference image on its
  own (shared weights) and concatenates the two token sets, each tagged with a learned left/right
  embedding, into the identity tokens R(I_hand) for the hand RCAs.
* Hand clarity embedding: per-frame, per-hand clarity scores (std of the Laplacian) with a
  validity mask -> a vector added to that frame's time embedding; zero-initialised output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import sinusoid

SILU_GAIN = 1.68
"""1 / sqrt(E[silu(x)^2]) for x ~ N(0, 1) (0.356): the init gain that keeps a conv-SiLU stack's scale."""


class ScaleKeepingConv(nn.Conv2d):
    """A 3x3 conv whose init keeps the signal's scale through the SiLU after it (fan-in normal, gain
    ``SILU_GAIN``, zero bias), in ``reset_parameters``: so an eager build and a network materialised
    from the meta device (``cyberhost.models.init`` calls it per module, sharded or not) agree."""

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        nn.init.normal_(self.weight, std=SILU_GAIN / fan_in**0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class ConvStack(nn.Sequential):
    """conv-SiLU, then per further stage a stride-2 conv-SiLU and a conv-SiLU (halves size each stage).

    The convs are :class:`ScaleKeepingConv`. PyTorch's default conv init (variance 1 / (3 fan_in), random
    biases) shrinks the signal about 2.5x per conv-SiLU, so after the 7 convs of a 4-stage stack
    the input-dependent part of the output was ~1000x smaller than the biases' constant part: at
    init the encoders ignored their input (pose stack on sparse skeleton-like maps: std across
    inputs 2.8e-5 against a constant of 0.021; now 0.065 against 0.023), so the skeleton, hand and
    face paths behind them could barely learn (PROBES.md, "Condition encoders").
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        layers: list[nn.Module] = [ScaleKeepingConv(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [ScaleKeepingConv(c_in, c_out, 3, padding=1, stride=2), nn.SiLU(),
                       ScaleKeepingConv(c_out, c_out, 3, padding=1), nn.SiLU()]
        super().__init__(*layers)


class PoseEncoder(nn.Module):
    """Map image -> latent-resolution residual (ControlNet-style conv stack, zero output conv).

    Args:
        in_channels: channels of the map (3 for an RGB skeleton/box drawing).
        out_channels: latent channels (the result is added to a latent).
        channels: conv stage widths; ``len(channels) - 1`` halvings, 4 stages = /8 like the VAE.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.body = ConvStack(in_channels, channels)
        self.out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.factor = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H/f, W/f)."""
        return self.out(self.body(x))


class HandEncoder(nn.Module):
    """Hand crops -> identity tokens R(I_hand): each hand encoded on its own, the two concatenated.

    Both crops go through one conv stack as a batch of ``2B`` (shared weights), so a hand's tokens
    depend on that hand's pixels only and a missing hand can be masked out of the identity
    attention token by token. A learned per-hand embedding (index 0 = the person's left hand, 1 =
    the right, as ``cyberhost.data.schema.HAND_ORDER``) is added after the norm so that the
    attention can tell the hands apart.

    Args:
        channels: conv stage widths (each after the first halves the 128-px crop).
        id_dim: width of the tokens.
        grid: side of each hand's token grid (``grid**2`` tokens per hand).
    """

    def __init__(self, channels: tuple[int, ...], id_dim: int, grid: int = 4) -> None:
        super().__init__()
        self.body = ConvStack(3, channels)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(channels[-1], id_dim)
        self.norm = nn.LayerNorm(id_dim)
        self.hand_embedding = nn.Parameter(torch.randn(2, id_dim) * 0.02)  # ViT-style small init
        self.tokens_per_hand = grid**2

    def forward(self, crops: Tensor) -> Tensor:
        """(B, 2, 3, S, S) in [-1, 1] -> (B, 2 * grid**2, id_dim): left-hand tokens, then right-hand tokens."""
        b, hands, c, s, _ = crops.shape
        if hands != 2:
            raise ValueError(f"HandEncoder expects 2 hand crops per sample (left, right), got {hands}")
        x = self.pool(self.body(crops.reshape(b * hands, c, s, s)))  # (2B, C, g, g)
        tokens = self.norm(self.proj(x.flatten(2).transpose(1, 2)))  # (2B, T, id_dim)
        tokens = tokens.unflatten(0, (b, hands)) + self.hand_embedding.to(tokens.dtype)[:, None]  # (B, 2, T, id_dim)
        return tokens.flatten(1, 2)  # (B, 2T, id_dim)


class ConvFaceEncoder(nn.Module):
    """Trainable conv face encoder, the fallback of ArcFace for tiny/demo configs.

    Args:
        channels: conv stage widths.
        embed_dim: width of the face embedding.
    """

    def __init__(self, channels: tuple[int, ...], embed_dim: int = 512) -> None:
        super().__init__()
        self.body = ConvStack(3, channels)
        self.fc = nn.Linear(channels[-1], embed_dim)
        self.embed_dim = embed_dim

    def forward(self, face: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, embed_dim)."""
        return self.fc(self.body(face).mean(dim=(2, 3)))


class HandClarityEmbedding(nn.Module):
    """Per-frame (left, right) hand clarity -> time-embedding offset (Sec. 3.3).

    Scores are ``log1p``-compressed and sinusoidally encoded. A hand that is absent in a frame
    (``valid`` False) gets zero sinusoid features and an "absent" flag of 1, so after the first
    linear layer it contributes that layer's learned absent column (a learned "absent"
    embedding), whatever its score value. Scores of valid hands must be finite. The last layer
    is zero, so the embedding adds nothing at init.

    Args:
        temb_dim: width of the UNet time embedding.
        freq_dim: sinusoid width per hand.
    """

    def __init__(self, temb_dim: int, freq_dim: int = 64) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(2 * (freq_dim + 1), temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, clarity: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, F, 2) scores and (B, F, 2) bool validity (None = every hand present) -> (B*F, temb_dim)."""
        if valid is None:
            valid = torch.ones(clarity.shape, dtype=torch.bool, device=clarity.device)
        score = torch.where(valid, clarity.float(), 0.0).clamp_min(0.0)  # the value of an absent hand is never read
        feats = sinusoid(torch.log1p(score) * 100.0, self.freq_dim) * valid[..., None]  # (B, F, 2, freq)
        feats = torch.cat([feats, (~valid)[..., None].float()], dim=-1).flatten(2)  # (B, F, 2*(freq+1))
        return self.mlp(feats.flatten(0, 1).to(self.mlp[0].weight.dtype))
