"""Condition encoders of CyberHost (Sec. 3.2-3.3): Pose Encoder, Hand Encoder, hand clarity embedding.

* Pose Encoder: encodes the body movement map (added to the noised latent) and, as a separate
  instance, the reference skeleton map (added to the reference latent; pose-aligned reference
  feature). Its output conv is zero, so at init it adds nothing.
* Hand Encoder: same family, deeper; reads the two 128-px hand crops of the reference image
  concatenated on channels and returns identity tokens R(I_hand) for the hand RCAs.
* Hand clarity embedding: per-frame, per-hand clarity scores (std of the Laplacian) -> a vector
  added to that frame's time embedding; zero-initialised output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import sinusoid


def _conv_stack(in_channels: int, channels: tuple[int, ...], groups: int | None = None) -> nn.Sequential:
    """conv-SiLU, then per further stage a stride-2 conv-SiLU and a conv-SiLU (halves size each stage)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=2), nn.SiLU(),
                   nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU()]
    return nn.Sequential(*layers)


class PoseEncoder(nn.Module):
    """Map image -> latent-resolution residual (ControlNet-style conv stack, zero output conv).

    Args:
        in_channels: channels of the map (3 for an RGB skeleton/box drawing).
        out_channels: latent channels (the result is added to a latent).
        channels: conv stage widths; ``len(channels) - 1`` halvings, 4 stages = /8 like the VAE.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.body = _conv_stack(in_channels, channels)
        self.out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.factor = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H/f, W/f)."""
        return self.out(self.body(x))


class HandEncoder(nn.Module):
    """Hand crops (both hands, concatenated) -> identity tokens R(I_hand).

    Args:
        channels: conv stage widths (each after the first halves the 128-px crop).
        id_dim: width of the tokens.
        grid: side of the token grid (tokens = grid**2).
    """

    def __init__(self, channels: tuple[int, ...], id_dim: int, grid: int = 4) -> None:
        super().__init__()
        self.body = _conv_stack(6, channels)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(channels[-1], id_dim)
        self.norm = nn.LayerNorm(id_dim)

    def forward(self, crops: Tensor) -> Tensor:
        """(B, 2, 3, S, S) in [-1, 1] -> (B, grid**2, id_dim)."""
        b, hands, c, s, _ = crops.shape
        x = self.pool(self.body(crops.reshape(b, hands * c, s, s)))  # (B, C, g, g)
        return self.norm(self.proj(x.flatten(2).transpose(1, 2)))


class ConvFaceEncoder(nn.Module):
    """Trainable conv face encoder, the fallback of ArcFace for tiny/demo configs.

    Args:
        channels: conv stage widths.
        embed_dim: width of the face embedding.
    """

    def __init__(self, channels: tuple[int, ...], embed_dim: int = 512) -> None:
        super().__init__()
        self.body = _conv_stack(3, channels)
        self.fc = nn.Linear(channels[-1], embed_dim)
        self.embed_dim = embed_dim

    def forward(self, face: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, embed_dim)."""
        return self.fc(self.body(face).mean(dim=(2, 3)))


class HandClarityEmbedding(nn.Module):
    """Per-frame (left, right) hand clarity -> time-embedding offset (Sec. 3.3).

    Scores are ``log1p``-compressed and sinusoidally encoded; a missing hand (NaN) contributes a
    learned "absent" flag instead. The last layer is zero, so it adds nothing at init.

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

    def forward(self, clarity: Tensor) -> Tensor:
        """(B, F, 2) scores (NaN = absent) -> (B*F, temb_dim)."""
        absent = torch.isnan(clarity)
        score = torch.log1p(torch.nan_to_num(clarity, nan=0.0).clamp_min(0.0)) * 100.0
        feats = sinusoid(score, self.freq_dim) * (~absent)[..., None]  # (B, F, 2, freq)
        feats = torch.cat([feats, absent[..., None].float()], dim=-1).flatten(2)  # (B, F, 2*(freq+1))
        return self.mlp(feats.flatten(0, 1).to(self.mlp[0].weight.dtype))
