"""Audio features for CyberHost's audio attention (Sec. 3.1).

A frozen ``transformers.Wav2Vec2Model`` turns 16 kHz speech into 50 Hz features; several hidden
layers are stacked (all of them by default, as Hallo), resampled to the video frame times, and for
each frame a window of ``2*context + 1`` frames is projected by an MLP into ``K`` audio tokens that
the UNet's audio cross-attention layers of that frame attend to. A frame's tokens depend on audio
features in its window only (the receptive-field test checks this by gradient). The window holds
from the wav2vec2 features on: wav2vec2 itself (its transformer, as in Hallo) sees the whole
waveform it is given, so at the waveform level every frame can depend on all of that audio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Wav2Vec2Model


def frame_windows(features: Tensor, context: int) -> Tensor:
    """Per-frame windows with edge padding: (B, F, ...) -> (B, F, 2*context+1, ...)."""
    if context == 0:
        return features.unsqueeze(2)
    frames = features.shape[1]
    first = features[:, :1].expand(-1, context, *features.shape[2:])
    last = features[:, -1:].expand(-1, context, *features.shape[2:])
    padded = torch.cat([first, features, last], dim=1)  # (B, F + 2c, ...)
    index = torch.arange(frames, device=features.device)[:, None] + torch.arange(2 * context + 1, device=features.device)
    return padded[:, index]  # (B, F, 2c+1, ...)


class AudioProjection(nn.Module):
    """Window of stacked wav2vec2 layers -> K context tokens per frame (trainable).

    Args:
        layers: stacked hidden layers L.
        width: wav2vec2 hidden width D.
        context: frames each side.
        hidden: MLP width.
        tokens: K.
        out_dim: token width (the UNet cross-attention width).
    """

    def __init__(self, layers: int, width: int, context: int, hidden: int, tokens: int, out_dim: int) -> None:
        super().__init__()
        self.context, self.tokens, self.out_dim = context, tokens, out_dim
        self.mlp = nn.Sequential(
            nn.Linear((2 * context + 1) * layers * width, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, tokens * out_dim),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, features: Tensor) -> Tensor:
        """(B, F, L, D) per-frame features -> (B, F, K, out_dim) tokens."""
        b, f = features.shape[:2]
        windows = frame_windows(features, self.context).flatten(2)  # (B, F, (2c+1)*L*D)
        return self.norm(self.mlp(windows).view(b, f, self.tokens, self.out_dim))


class AudioEncoder(nn.Module):
    """Frozen wav2vec2 + trainable per-frame projection.

    Args:
        wav2vec2: the (frozen) model.
        layers: how many of the last hidden states to stack (None = all).
        context: frames of context each side.
        hidden: projection MLP width.
        tokens: tokens per frame.
        out_dim: token width.
    """

    def __init__(self, wav2vec2: Wav2Vec2Model, layers: int | None, context: int, hidden: int, tokens: int,
                 out_dim: int) -> None:
        super().__init__()
        total = wav2vec2.config.num_hidden_layers + 1
        self.layers = total if layers is None else layers
        if not 1 <= self.layers <= total:
            raise ValueError(f"audio_layers must be in 1..{total} for this wav2vec2, got {layers}")
        self.wav2vec2 = wav2vec2
        self.proj = AudioProjection(self.layers, wav2vec2.config.hidden_size, context, hidden, tokens, out_dim)

    @torch.no_grad()
    def features(self, waveform: Tensor, num_frames: int) -> Tensor:
        """Frozen features at the video frame times.

        Args:
            waveform: ``(B, S)`` 16 kHz mono covering exactly the ``num_frames`` frames.
            num_frames: F.

        Returns:
            ``(B, F, L, D)`` float32.
        """
        x = waveform.float()
        x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True) + 1e-7)  # as the feature extractor
        min_len = 400  # wav2vec2's conv stack needs ~25 ms
        if x.shape[1] < min_len:
            x = F.pad(x, (0, min_len - x.shape[1]))
        with torch.autocast(x.device.type, enabled=False):
            out = self.wav2vec2(x.to(self.wav2vec2.dtype), output_hidden_states=True)
        hidden = torch.stack(out.hidden_states[-self.layers:], dim=2).float()  # (B, T, L, D)
        b, t, layers, d = hidden.shape
        hidden = hidden.permute(0, 2, 3, 1).reshape(b, layers * d, t)
        hidden = F.interpolate(hidden, size=num_frames, mode="linear", align_corners=False)  # (B, L*D, F)
        return hidden.view(b, layers, d, num_frames).permute(0, 3, 1, 2)

    def forward(self, waveform: Tensor, num_frames: int) -> Tensor:
        """(B, S) -> (B, F, K, out_dim) audio tokens."""
        return self.proj(self.features(waveform, num_frames))
