"""Tiny CyberHost builders and inputs shared by the model tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cyberhost.models import CyberHost, CyberHostConfig

pytest.register_assert_rewrite("tests.models.contract")  # the shared contract's asserts report their values

LATENT = 8  # tiny latents are 8x8 (64x64 frames)


def build(stage: int, seed: int = 0, **kwargs: object) -> CyberHost:
    torch.manual_seed(seed)
    return CyberHost(CyberHostConfig(size="tiny", stage=stage, **kwargs))


def inputs(stage: int, batch: int = 2, frames: int = 3, motion: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = 1 if stage == 1 else frames
    d = {
        "ref_latents": torch.randn(batch, 4, LATENT, LATENT, generator=g),
        "ref_skeleton": torch.randn(batch, 3, 8 * LATENT, 8 * LATENT, generator=g),
        "noisy": torch.randn(batch, f, 4, LATENT, LATENT, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "driving_map": torch.randn(batch, f, 3, 8 * LATENT, 8 * LATENT, generator=g),
    }
    if stage == 2:
        d["motion"] = torch.randn(batch, motion, 4, LATENT, LATENT, generator=g)
        d["face"] = torch.randn(batch, 3, 64, 64, generator=g)
        d["hands"] = torch.randn(batch, 2, 3, 128, 128, generator=g)
        d["audio"] = torch.randn(batch, 16000 * f // 25, generator=g)
        d["clarity"] = torch.rand(batch, f, 2, generator=g) * 80
    return d


def run(model: CyberHost, x: dict[str, torch.Tensor], **kwargs: object):
    """Reference encoding + forward; returns (output, reference features).

    Optional keys of ``x``: ``face_valid`` (B,), ``hand_valid`` (B, 2), ``clarity_valid`` (B, F, 2).
    """
    ref = model.encode_reference(x["ref_latents"], x["ref_skeleton"], x.get("motion"), x.get("face"), x.get("hands"),
                                 face_valid=x.get("face_valid"), hand_valid=x.get("hand_valid"))
    audio = model.encode_audio(x["audio"], x["noisy"].shape[1]) if "audio" in x else None
    out = model(x["noisy"], x["t"], ref, x["driving_map"], audio, x.get("clarity"), x.get("clarity_valid"), **kwargs)
    return out, ref


def wake_zero_inits(model: nn.Module, std: float = 0.05, seed: int = 7) -> None:
    """Give every all-zero trainable tensor random values (so the added paths do something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def sampling_inputs(model: CyberHost, frames: int = 3, seed: int = 0) -> dict[str, object]:
    """What sampling's batched CFG hands the network besides x_t and t: every condition, repeated for 3
    branches, with the (-, -), (ref, -), (ref, audio) dropout flags (a "mixed" reference batch)."""
    from cyberhost.models.conditioning import BRANCHES, _repeat

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    with torch.no_grad():
        ref = model.encode_reference(randn(1, 4, LATENT, LATENT), randn(1, 3, 8 * LATENT, 8 * LATENT),
                                     randn(1, 4, 4, LATENT, LATENT), randn(1, 3, 64, 64), randn(1, 2, 3, 128, 128))
        tokens = model.encode_audio(randn(1, 16000 * frames // 25), frames)
    one = {"reference": ref, "driving_map": randn(1, frames, 3, 8 * LATENT, 8 * LATENT), "audio_tokens": tokens,
           "hand_clarity": torch.full((1, frames, 2), 30.0, device=device),
           "hand_clarity_valid": torch.ones(1, frames, 2, dtype=torch.bool, device=device)}
    three = {k: _repeat(v, 3) for k, v in one.items()}
    ref_kept, audio_kept = BRANCHES
    three["drop_reference"] = torch.tensor([not r for r in ref_kept], device=device)
    three["drop_audio"] = torch.tensor([not a for a in audio_kept], device=device)
    return three
