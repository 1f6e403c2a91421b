"""Behaviour of the whole CyberHost network on the tiny size (its shared contract -- shapes, seeds, one
optimiser step, checkpointing, bf16, batch independence -- runs in ``test_contract.py``)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from cyberhost.models import CyberHost
from cyberhost.models.unet import run_unet, time_embedding

from .conftest import LATENT, build, inputs, run, wake_zero_inits


def test_run_unet_matches_diffusers_forward() -> None:
    """Our block-by-block loop equals UNet2DConditionModel.forward (independent computation)."""
    model = build(1)
    unet: UNet2DConditionModel = model.unet
    x, t = torch.randn(3, 4, LATENT, LATENT), torch.tensor([1, 500, 999])
    ctx = torch.randn(3, 1, 32)
    model.state.clear()
    want = unet(x, t, ctx).sample
    got = run_unet(unet, x, time_embedding(unet, t), ctx, num_frames=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_stage2_at_init_reproduces_stage1_per_frame() -> None:
    """Zero-init: the 3D network with motion frames, audio, RCA and clarity equals the 2D one per frame."""
    s1 = build(1, seed=0)
    wake_zero_inits(s1)  # a "trained" stage 1: pose encoders and text tokens are no longer zero
    s2: CyberHost = build(2, seed=5)
    s2.load_stage1(s1.state_dict())
    x = inputs(2, frames=3)
    out2, _ = run(s2, x)
    x1 = dict(x)
    ref = s1.encode_reference(x["ref_latents"], x["ref_skeleton"])
    b, f = x["noisy"].shape[:2]
    per_frame = s1(x["noisy"].flatten(0, 1)[:, None], x["t"].repeat_interleave(f), _repeat(ref, f),
                   x1["driving_map"].flatten(0, 1)[:, None])
    torch.testing.assert_close(out2.sample, per_frame.sample.view(b, f, 4, LATENT, LATENT), rtol=0, atol=1e-5)


def _repeat(ref, f):
    ref.spatial = {k: v.repeat_interleave(f, 0) for k, v in ref.spatial.items()}
    return ref


def test_reference_dropout_removes_reference() -> None:
    model = build(2, stage2_trainable="all")
    wake_zero_inits(model)
    x = inputs(2)
    for key in ("ref_latents", "ref_skeleton", "face", "hands"):
        x[key].requires_grad_(True)
    out, _ = run(model, x, drop_reference=torch.tensor([True, False]))
    out.sample[0].sum().backward(retain_graph=True)
    for key in ("ref_latents", "ref_skeleton", "face", "hands"):
        assert x[key].grad[0].abs().max() == 0, key
        x[key].grad = None
    out.sample[1].sum().backward()
    for key in ("ref_latents", "ref_skeleton", "face", "hands"):
        assert x[key].grad[1].abs().max() > 0, key
    # a dropped sample equals the same sample run with the reference dropped for everyone
    alone, _ = run(model, x, drop_reference=torch.tensor([True, True]))
    torch.testing.assert_close(out.sample[0], alone.sample[0], rtol=0, atol=1e-5)


def test_frame_output_ignores_audio_of_other_frames() -> None:
    model = build(2)
    wake_zero_inits(model)
    for name, p in model.named_parameters():  # keep the frame-mixing paths at their zero init
        if ("motion_modules" in name and "proj_out" in name) or "temporal.attn.to_out" in name:
            torch.nn.init.zeros_(p)
    x = inputs(2, frames=4)
    ref = model.encode_reference(x["ref_latents"], x["ref_skeleton"], x["motion"], x["face"], x["hands"])
    tokens = model.encode_audio(x["audio"], 4).detach().requires_grad_(True)
    out = model(x["noisy"], x["t"], ref, x["driving_map"], tokens, x["clarity"])
    out.sample[:, 1].sum().backward()
    per_frame = tokens.grad.abs().flatten(2).amax(-1)  # (B, F)
    assert (per_frame[:, 1] > 0).all() and per_frame[:, [0, 2, 3]].max() == 0
    # dropping the audio of sample 0 removes its influence entirely
    tokens.grad = None
    ref = model.encode_reference(x["ref_latents"], x["ref_skeleton"], x["motion"], x["face"], x["hands"])
    out = model(x["noisy"], x["t"], ref, x["driving_map"], tokens, x["clarity"], drop_audio=torch.tensor([True, False]))
    out.sample.sum().backward()
    assert tokens.grad[0].abs().max() == 0 and tokens.grad[1].abs().max() > 0


def test_run_unet_matches_diffusers_motion_forward() -> None:
    """The loop also equals UNetMotionModel.forward, with non-zero (trained-like) temporal modules."""
    model = build(2)
    wake_zero_inits(model.unet)
    model.state.clear()  # no reference, motion frames or audio: every processor computes plain attention
    b, f = 2, 3
    x, t = torch.randn(b * f, 4, LATENT, LATENT), torch.tensor([3, 700])
    ctx = torch.randn(b * f, 1, 32)
    want = model.unet(x.unflatten(0, (b, f)).transpose(1, 2), t, ctx).sample  # (B, C, F, h, w)
    got = run_unet(model.unet, x, time_embedding(model.unet, t).repeat_interleave(f, 0), ctx, num_frames=f)
    torch.testing.assert_close(got, want.transpose(1, 2).flatten(0, 1), rtol=0, atol=1e-5)


def test_drop_none_equals_no_drop_flags() -> None:
    model = build(2)
    wake_zero_inits(model)
    x = inputs(2)
    a, _ = run(model, x)
    b, _ = run(model, x, drop_reference=torch.tensor([False, False]), drop_audio=torch.tensor([False, False]))
    assert model.state.reference_mode == "kept"
    torch.testing.assert_close(a.sample, b.sample, rtol=0, atol=0)
    run(model, x, drop_reference=torch.tensor([False, True]))
    assert model.state.reference_mode == "mixed"
    run(model, x, drop_reference=torch.tensor([True, True]))
    assert model.state.reference_mode == "dropped"


@pytest.mark.parametrize("keep", [[True, False, True], [False, True, True], [True, True, False]],
                         ids=["scattered", "dropped-first", "kept-first"])
def test_mixed_reference_batch_equals_masked_attention(keep: list[bool]) -> None:
    """Splitting a mixed batch into kept/dropped groups equals one SDPA with a boolean key mask.

    Groups that are one block each (sampling's batched CFG: dropped first) are sliced, not gathered."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    from cyberhost.models.attention import InjectionState, ReferenceSelfAttnProcessor

    torch.manual_seed(0)
    attn = Attention(32, heads=4, dim_head=8)
    state = InjectionState()
    proc = ReferenceSelfAttnProcessor(state, "layer")
    b, f, length = 3, 2, 5
    x, ref = torch.randn(b * f, length, 32), torch.randn(b, 7, 32)
    keep = torch.tensor(keep)
    state.reference = {"layer": ref}
    state.set_drop_reference(~keep, f)
    assert state.reference_mode == "mixed"
    assert (state.reference_blocks is None) == (keep.tolist() == [True, False, True])
    got = proc(attn, x)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], 4, 8).transpose(1, 2)

    k = torch.cat([attn.to_k(x), attn.to_k(ref).repeat_interleave(f, 0)], dim=1)
    v = torch.cat([attn.to_v(x), attn.to_v(ref).repeat_interleave(f, 0)], dim=1)
    mask = torch.ones(b * f, 1, 1, k.shape[1], dtype=torch.bool)
    mask[:, :, :, length:] = keep.repeat_interleave(f).view(-1, 1, 1, 1)
    out = F.scaled_dot_product_attention(heads(attn.to_q(x)), heads(k), heads(v), attn_mask=mask)
    want = attn.to_out[0](out.transpose(1, 2).reshape(b * f, length, 32))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_missing_identity_regions_are_masked_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Receptive field by gradient: an invalid crop reaches nothing; all invalid = no identity at all."""
    from cyberhost.models.rca import RegionCodebookAttention

    model = build(2)
    wake_zero_inits(model)
    x = inputs(2)
    x["face"].requires_grad_(True)
    x["hands"].requires_grad_(True)
    x["face_valid"] = torch.tensor([False, True])
    x["hand_valid"] = torch.tensor([[True, False], [True, True]])  # sample 0 lacks its right hand
    out, ref = run(model, x)
    assert ref.face_id_valid.shape == (2, 2) and ref.hand_id_valid.shape == (2, 32)
    loss = out.sample.sum() + sum(h.sum() for h in out.heatmaps)
    loss.backward()
    hands, face = x["hands"].grad.abs().flatten(2).amax(-1), x["face"].grad.abs().flatten(1).amax(-1)  # (B, 2), (B,)
    assert hands[0, 1] == 0 and hands[0, 0] > 0 and (hands[1] > 0).all()
    assert face[0] == 0 and face[1] > 0

    seen: list[bool] = []
    original = RegionCodebookAttention._identity_term

    def spy(self, tokens, identity, frames, valid, drop):  # noqa: ANN001, ANN202
        seen.append(valid is None)
        return original(self, tokens, identity, frames, valid, drop)

    monkeypatch.setattr(RegionCodebookAttention, "_identity_term", spy)
    with torch.no_grad():
        none_valid = {**x, "face_valid": torch.zeros(2, dtype=torch.bool), "hand_valid": torch.zeros(2, 2, dtype=torch.bool)}
        masked, _ = run(model, none_valid)
        no_crops, _ = run(model, {k: v for k, v in x.items() if k not in ("face", "hands")})
        torch.testing.assert_close(masked.sample, no_crops.sample, rtol=0, atol=0)
        seen.clear()
        all_valid = {**x, "face_valid": torch.ones(2, dtype=torch.bool), "hand_valid": torch.ones(2, 2, dtype=torch.bool)}
        flagged, _ = run(model, all_valid)
        assert seen == [True] * 3  # every RCA kept the unmasked SDPA path
        unflagged, _ = run(model, {k: v for k, v in x.items() if k not in ("face_valid", "hand_valid")})
        torch.testing.assert_close(flagged.sample, unflagged.sample, rtol=0, atol=0)


def test_drop_and_validity_flags_are_checked() -> None:
    model = build(2)
    x = inputs(2)
    with pytest.raises(ValueError, match="drop_reference must be a bool"):
        run(model, x, drop_reference=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="identity validity"):
        run(model, {**x, "hand_valid": torch.ones(2, dtype=torch.bool)})
    x["clarity"][0, 1, 0] = float("nan")  # NaN is no "absent" marker
    with pytest.raises(ValueError, match="hand_clarity is NaN"):
        run(model, x)
    valid = torch.ones(x["clarity"].shape, dtype=torch.bool)
    valid[0, 1, 0] = False
    with torch.no_grad():
        out, _ = run(model, {**x, "clarity_valid": valid})
    assert torch.isfinite(out.sample).all()


@pytest.mark.parametrize("trainable", ["stage1", "added", "all"])
def test_declared_trainable_split(trainable: str) -> None:
    """Which parameters CyberHost itself leaves trainable (the split the contract's optimiser step runs on)."""
    from tests.training.test_params import REFERENCE_TAIL, STAGE2_ADDED

    model = build(1) if trainable == "stage1" else build(2, stage2_trainable=trainable)
    for name, p in model.named_parameters():
        pretrained = name.startswith(("vae.", "audio.wav2vec2."))
        if trainable == "added":
            want = not pretrained and any(part in name for part in STAGE2_ADDED)
        else:
            want = not pretrained and not name.startswith(REFERENCE_TAIL)
        assert p.requires_grad == want, name
