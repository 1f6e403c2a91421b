"""The probes' stand-in for a pretrained wav2vec2: per-frame band energies behind the frozen-encoder interface.

A real run's audio features come from a *pretrained* wav2vec2, whose hidden states keep what is
said in each 20 ms; none can be fetched here, and a random-init wav2vec2 keeps too little of each
frame's sound for a brief probe run to learn from (held-out read-out R^2 0.57; the audio gap
stays at +0.02 %, while per-frame oracle features give +6.9 %: PROBES.md, "Audio").
:class:`BandEnergyAudio` keeps the product's :class:`~cyberhost.models.audio.AudioEncoder` whole
-- its trainable projection, frame windows and output -- and replaces only the frozen
``features``: the log energy of each video frame's audio in log-spaced frequency bands, which is
time-local by construction and knows nothing of the probe's sounds. So the audio probe tests
everything the product trains and wires (frame alignment, windows, projection, audio attention,
dropout), not the frozen pretrained encoder, which no probe here could test.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.models.audio import AudioEncoder

BANDS = 24
"""Frequency bands, log-spaced from :data:`LOWEST_HZ` to the Nyquist frequency."""
LOWEST_HZ = 60.0


class BandEnergyAudio(AudioEncoder):
    """An :class:`AudioEncoder` whose frozen features are per-frame log band energies (tiled to ``(L, D)``).

    Each frame's log energies are normalised over the bands (zero mean, unit variance, as
    wav2vec2's per-time-step layer norm), so they say how the frame's sound is spread over
    frequencies, on a fixed scale.
    """

    @torch.no_grad()
    def features(self, waveform: Tensor, num_frames: int) -> Tensor:
        """``(B, S)`` 16 kHz audio of ``num_frames`` frames -> ``(B, F, L, D)``: each frame's own samples only."""
        b, n = waveform.shape
        per = n // num_frames
        x = waveform[:, : per * num_frames].float()
        x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)  # as wav2vec2's extractor
        frames = x.view(b, num_frames, per) * torch.hann_window(per, periodic=False, device=x.device)
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2) / per  # (B, F, per // 2 + 1)
        hz = torch.fft.rfftfreq(per, 1 / AUDIO_SAMPLE_RATE).to(x.device)
        edges = torch.logspace(math.log10(LOWEST_HZ), math.log10(AUDIO_SAMPLE_RATE / 2), BANDS + 1, device=x.device)
        band = (torch.bucketize(hz, edges) - 1).clamp(0, BANDS - 1)  # bin -> band (below LOWEST_HZ: the first)
        energy = torch.zeros(b, num_frames, BANDS, device=x.device).index_add_(2, band, power)
        count = torch.zeros(BANDS, device=x.device).index_add_(0, band, torch.ones_like(hz))
        v = torch.log10(energy / count.clamp_min(1) + 1e-4)
        return tile_to_features(self, torch.nn.functional.layer_norm(v, (BANDS,)))  # per frame, as wav2vec2's output


def tile_to_features(encoder: AudioEncoder, v: Tensor) -> Tensor:
    """Per-frame values ``(B, F, n)`` tiled to the shape of ``encoder``'s features, ``(B, F, L, D)``."""
    b, f, n = v.shape
    size = encoder.layers * encoder.wav2vec2.config.hidden_size
    return v.repeat(1, 1, -(-size // n))[..., :size].reshape(b, f, encoder.layers, -1)


def use_band_energies(encoder: AudioEncoder) -> BandEnergyAudio:
    """A :class:`BandEnergyAudio` with ``encoder``'s (trainable) projection and frozen wav2vec2 (for its shape)."""
    proj = encoder.proj
    new = BandEnergyAudio(encoder.wav2vec2, encoder.layers, proj.context, proj.mlp[0].out_features, proj.tokens,
                          proj.out_dim)
    new.proj = proj
    return new
