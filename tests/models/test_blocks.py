"""Regional compilation, selective checkpointing and bf16 frozen weights (``cyberhost.models.blocks``).

Dynamo's own counters count the graphs: with the ``eager`` backend dynamo captures and guards
exactly as with inductor, without spending minutes generating CPU kernels, and its outputs are
bit-identical to the plain network, so any difference is a capture bug.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from cyberhost.models.blocks import CompileConfig, checkpoint_regions, checkpointing_paused, compile_regions, regions

from .conftest import build, inputs, run, wake_zero_inits


def _resized(x: dict[str, torch.Tensor], h: int, w: int) -> dict[str, torch.Tensor]:
    """The inputs of another resolution bucket (latents h x w)."""
    out = dict(x)
    for key, scale in (("ref_latents", 1), ("motion", 1), ("noisy", 1), ("ref_skeleton", 8), ("driving_map", 8)):
        if key in out:
            t = out[key]
            flat = F.interpolate(t.flatten(0, t.dim() - 4), size=(scale * h, scale * w))
            out[key] = flat.unflatten(0, t.shape[:-3])
    return out


def _step(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out, _ = run(model, x)
    loss = out.sample.square().mean() + sum(h.square().mean() for h in out.heatmaps)
    loss = loss + sum(m.square().mean() for m in (*out.face_masks, *out.hand_masks))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _assert_same(got: tuple[torch.Tensor, dict], want: tuple[torch.Tensor, dict], **tol: float) -> None:
    torch.testing.assert_close(got[0], want[0], **tol)
    assert got[1].keys() == want[1].keys() and want[1]
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], **tol, msg=name)


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def test_regions_are_the_repeated_block_classes() -> None:
    model = build(2)
    found = {type(m).__name__ for _, m in regions(model)}
    assert found == {"ResnetBlock2D", "Transformer2DModel", "AnimateDiffTransformer3D", "RegionCodebookAttention"}
    names = [n for n, _ in regions(model)]
    assert any(n.startswith("vae.") for n in names) and not any(n.startswith("vae.") for n, _ in regions(model, vae=False))
    # outermost only: no region inside another
    assert not any(a != b and b.startswith(a + ".") for a in names for b in names)


def test_compiled_network_matches_and_compiles_once_per_bucket() -> None:
    torch._dynamo.reset()
    counters.clear()
    plain, fast = build(2, stage2_trainable="all"), build(2, stage2_trainable="all")
    wake_zero_inits(plain)
    wake_zero_inits(fast)
    names = compile_regions(fast, CompileConfig(enabled=True, backend="eager"))
    assert len(names) > 20
    x = inputs(2, seed=3)
    _assert_same(_step(fast, x), _step(plain, x), rtol=0, atol=0)
    first = _graphs()
    # far fewer graphs than compiled blocks: instances of a class share their code
    assert 0 < first < len(names)
    for seed in (4,):  # another step of the same bucket of the same bucket: no recompilation
        _assert_same(_step(fast, inputs(2, seed=seed)), _step(plain, inputs(2, seed=seed)), rtol=0, atol=0)
    assert _graphs() == first
    assert not counters["graph_break"], dict(counters["graph_break"])
    per_bucket = []
    for h, w in ((8, 16), (16, 8), (16, 16)):  # other resolution buckets
        x = _resized(inputs(2, seed=6), h, w)
        _assert_same(_step(fast, x), _step(plain, x), rtol=0, atol=0)
        per_bucket.append(_graphs())
    # a bounded number across buckets: once sizes are dynamic, new buckets compile nothing
    assert per_bucket[-1] == per_bucket[-2], per_bucket
    assert per_bucket[-1] <= 2 * first, per_bucket


@pytest.mark.slow
def test_aot_autograd_capture_matches_the_plain_network() -> None:
    """``aot_eager`` traces forward and backward as inductor does (functionalised), without kernel codegen."""
    torch._dynamo.reset()
    plain, fast = build(2, stage2_trainable="all"), build(2, stage2_trainable="all")
    wake_zero_inits(plain)
    wake_zero_inits(fast)
    compile_regions(fast, CompileConfig(enabled=True, backend="aot_eager", vae=False))
    x = inputs(2, seed=8)
    _assert_same(_step(fast, x), _step(plain, x), rtol=1e-5, atol=1e-6)


def test_selection_and_checkpointing_paused() -> None:
    """The patterns pick their blocks; paused (the FLOP counter's switch) they run once, as the plain network.

    That selective checkpointing recomputes and keeps loss and gradients is the model contract's
    ``checkpointing-cyberhost_stage2_selective_checkpointing`` case (``test_contract.py``).
    """
    plain, ckpt = build(2, stage2_trainable="all"), build(2, stage2_trainable="all")
    wake_zero_inits(plain)
    wake_zero_inits(ckpt)
    chosen = ckpt.enable_gradient_checkpointing([r"^unet\.up_blocks\.1\.", "motion_modules", r"^hand_rca\."])
    assert chosen and all(n.startswith("unet.up_blocks.1.") or "motion_modules" in n or n.startswith("hand_rca.")
                          for n in chosen)
    calls = [0]
    ckpt.unet.up_blocks[1].resnets[0].conv1.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    x = inputs(2, seed=2)
    with checkpointing_paused():
        _assert_same(_step(ckpt, x), _step(plain, x), rtol=1e-5, atol=1e-6)
    assert calls[0] == 1  # not recomputed in backward


def test_selective_checkpointing_recomputes_in_backward() -> None:
    model = build(2, stage2_trainable="all")
    calls = [0]
    block = model.unet.up_blocks[1].resnets[0]
    block.conv1.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    model.enable_gradient_checkpointing([r"^unet\.up_blocks\.1\.resnets\.0$"])
    _step(model, inputs(2))
    assert calls[0] == 2  # forward, then again in backward


def test_checkpointing_patterns_must_match() -> None:
    model = build(2)
    with pytest.raises(ValueError, match="match no block"):
        checkpoint_regions(model, [r"^unet\.up_blocks\.9\."])
    with pytest.raises(ValueError, match="not a valid regex"):
        checkpoint_regions(model, ["("])


def test_cast_frozen_keeps_trainable_float32() -> None:
    model = build(2, stage2_trainable="added")
    n = model.cast_frozen(torch.bfloat16)
    frozen_bf16 = sum(p.numel() for p in model.parameters() if p.dtype == torch.bfloat16)
    assert n == frozen_bf16 > 0
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in model.audio.wav2vec2.parameters())
    assert model.vae.dtype == torch.bfloat16 and next(model.reference_net.parameters()).dtype == torch.bfloat16
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    z = model.encode_images(images)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


def test_compile_can_be_limited_to_some_classes() -> None:
    model = build(2)
    only = {type(m).__name__ for _, m in regions(model, classes=("RegionCodebookAttention", "AnimateDiffTransformer3D"))}
    assert only == {"RegionCodebookAttention", "AnimateDiffTransformer3D"}
    names = compile_regions(model, CompileConfig(enabled=True, backend="eager", classes=("RegionCodebookAttention",)))
    assert names and all(getattr(m, "_compiled_call_impl", None) is not None for n, m in model.named_modules()
                         if n in names)
    assert all(getattr(m, "_compiled_call_impl", None) is None for _, m in regions(model, classes=("ResnetBlock2D",)))
    with pytest.raises(ValueError, match="ResNet"):
        CompileConfig(classes=("ResNet",))


def test_condition_dropout_compiles_once_per_mode() -> None:
    """CFG dropout switches the attention between three code paths (reference kept, dropped, mixed in
    the batch; audio dropped is a multiply): each compiles the first time it is seen, never again."""
    torch._dynamo.reset()
    counters.clear()
    plain, fast = build(2, stage2_trainable="all"), build(2, stage2_trainable="all")
    wake_zero_inits(plain)
    wake_zero_inits(fast)
    compile_regions(fast, CompileConfig(enabled=True, backend="eager"))
    modes = {"kept": [False, False], "dropped": [True, True], "mixed": [True, False]}
    after = {}
    for rounds in range(2):
        for name, flags in modes.items():
            drops = {"drop_reference": torch.tensor(flags), "drop_audio": torch.tensor(flags[::-1])}
            x = inputs(2, seed=20 + rounds)
            got = run(fast, x, **drops)[0].sample
            want = run(plain, x, **drops)[0].sample
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            if rounds == 0:
                after[name] = _graphs()
            else:
                assert _graphs() == after["mixed"], f"{name} compiled again"
    assert after["kept"] < after["dropped"] <= after["mixed"] <= 3 * after["kept"], after
