"""16-bit activations under autocast: norms and positional embeddings computed in 16 bits."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from torch import nn

from cyberhost.models.precision import NativeGroupNorm, NativeLayerNorm, NativePositionalEmbedding, set_inference_layers


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 16, 1), nn.Flatten(2), nn.LayerNorm(64),
                         nn.LayerNorm(64, elementwise_affine=False))


def test_native_norms_keep_bf16_and_match_float32() -> None:
    net = _net()
    x = torch.randn(2, 16, 8, 8)
    want = net(x)  # float32 throughout
    net.to(torch.bfloat16)
    assert set_inference_layers(net) == 2  # the affine-free LayerNorm has no weight dtype: left alone
    assert isinstance(net[0], NativeGroupNorm) and isinstance(net[4], NativeLayerNorm)
    assert type(net[5]) is nn.LayerNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](x).dtype == net[4](x.flatten(2)).dtype == torch.bfloat16  # float32 in, bf16 out
        got = net(x)
    torch.testing.assert_close(got.float(), want, atol=0.08, rtol=0.05)  # bf16 rounding of the weights and output
    assert set(net.state_dict()) == set(_net().state_dict())  # checkpoints do not see the switch
    assert set_inference_layers(net, enabled=False) == 2 and type(net[0]) is nn.GroupNorm


def test_float32_norms_are_left_alone() -> None:
    net = _net()
    assert set_inference_layers(net) == 0 and type(net[0]) is nn.GroupNorm


def test_positional_embedding_adds_in_the_inputs_dtype() -> None:
    pos = nn.Sequential(SinusoidalPositionalEmbedding(8, max_seq_length=6))
    x = torch.randn(3, 5, 8)
    want = pos(x)
    assert pos(x.bfloat16()).dtype == torch.float32  # diffusers' float32 table promotes a bf16 input
    assert set_inference_layers(pos) == 1 and isinstance(pos[0], NativePositionalEmbedding)
    assert pos(x.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(pos(x), want, atol=0, rtol=0)  # float32 in: exactly as before
    assert pos[0].pe.dtype == torch.float32 and "0.pe" in pos.state_dict()


def test_split_geglu_equals_diffusers_geglu() -> None:
    from diffusers.models.activations import GEGLU

    from cyberhost.models.precision import SplitGEGLU

    torch.manual_seed(0)
    ff = nn.Sequential(GEGLU(16, 24))
    x = torch.randn(2, 5, 16)
    want = ff(x)
    assert set_inference_layers(ff) == 1 and isinstance(ff[0], SplitGEGLU)
    got = ff(x)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _transformer(linear: bool) -> nn.Module:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(0)
    net = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=4,
                             cross_attention_dim=12, use_linear_projection=linear)
    for p in net.parameters():  # diffusers zero-initialises nothing here, but make every weight count
        p.data.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("linear", [False, True])
def test_token_transformer_equals_diffusers_transformer(linear: bool) -> None:
    """The spatial transformer's 1x1-conv projections as matrix products: the same output, contiguous
    tokens for the blocks; a linear-projection transformer keeps diffusers' path."""
    from cyberhost.models.precision import TokenTransformer2D

    net = _transformer(linear)
    x, ctx = torch.randn(3, 16, 5, 7), torch.randn(3, 4, 12)
    seen: list[bool] = []
    net.transformer_blocks[0].norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    with torch.no_grad():
        want = net(x, encoder_hidden_states=ctx).sample
        assert set_inference_layers(net) >= 1 and isinstance(net, TokenTransformer2D)
        got = net(x, encoder_hidden_states=ctx).sample
    assert got.shape == want.shape and got.is_contiguous()
    assert seen == [linear, True]  # diffusers hands its blocks a transposed view of the conv's NCHW output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    set_inference_layers(net, enabled=False)
    assert type(net).__name__ == "Transformer2DModel"
