"""Sampling's layers: the same results with fewer passes over memory (for networks whose weights are 16-bit).

CUDA autocast runs ``group_norm`` and ``layer_norm`` in float32: a bf16 activation is normalised
into a float32 tensor, the SiLU after a GroupNorm then reads and writes float32, and the next
convolution or linear layer casts it back to bf16 -- a float32 write, a float32 element-wise pass
and a cast per norm, about 150 norms per UNet call. With the weights already in bf16
(``CyberHost.cast_frozen``) nothing needs float32 there: PyTorch's 16-bit norm kernels accumulate
mean and variance in float32 and round only the output, which the next layer would round to bf16
anyway. Likewise AnimateDiff's temporal layers add a float32 positional table to their bf16
input, which turns every temporal attention's input float32 (and each of its Q/K/V projections
casts it back). And the GEGLU of every transformer's feed-forward applies GELU and the product
to two halves of one projection's output, both strided, which runs PyTorch's slow strided
element-wise kernels; two products with the weight's halves give contiguous halves. And each
spatial transformer (SD-1.5's ``Transformer2DModel``) projects in and out with 1x1 convolutions on
NCHW maps: cuDNN converts each to NHWC and back, the tokens it hands the transformer blocks are a
transposed view (so their LayerNorm and residual adds run strided), and the output is copied to
NCHW before its convolution and added to the residual in another pass. The same projections as
batched matrix products read the NCHW map as transposed tokens, write contiguous tokens, and write
the output straight into the residual's NCHW layout.
:func:`set_inference_layers` switches a network's layers to these forms (and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import Tensor, nn

HALF = (torch.bfloat16, torch.float16)


class NativeGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in its weight's dtype, whatever autocast says."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.to(self.weight.dtype), self.num_groups, self.weight, self.bias, self.eps)


class NativeLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in its weight's dtype, whatever autocast says."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.to(self.weight.dtype), self.normalized_shape, self.weight, self.bias, self.eps)


class NativePositionalEmbedding(SinusoidalPositionalEmbedding):
    """diffusers' sinusoidal positional embedding added in the input's dtype (the table stays float32)."""

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class SplitGEGLU(GEGLU):
    """diffusers' GEGLU (``a * gelu(b)``, ``[a, b] = proj(x)``) with ``a`` and ``b`` from the weight's two
    halves: contiguous outputs for GELU and the product, the same values."""

    def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        w, b = self.proj.weight.chunk(2), (None, None) if self.proj.bias is None else self.proj.bias.chunk(2)
        return F.linear(x, w[0], b[0]) * F.gelu(F.linear(x, w[1], b[1]))


class TokenTransformer2D(Transformer2DModel):
    """diffusers' ``Transformer2DModel`` whose 1x1-convolution projections run as matrix products on the
    NCHW map (the same values; see the module's docstring). Other projections run as diffusers has them."""

    def _by_matmul(self) -> bool:
        conv = isinstance(self.proj_in, nn.Conv2d) and isinstance(self.proj_out, nn.Conv2d)
        return conv and not self.use_linear_projection and self.proj_in.kernel_size == self.proj_out.kernel_size == (1, 1)

    def _operate_on_continuous_inputs(self, hidden_states: Tensor) -> tuple[Tensor, int]:
        if not self._by_matmul():
            return super()._operate_on_continuous_inputs(hidden_states)
        batch = hidden_states.shape[0]
        tokens = self.norm(hidden_states).flatten(2).transpose(1, 2)  # (B, HW, C), a transposed view
        weight = self.proj_in.weight.flatten(1)  # (inner, C)
        out = torch.bmm(tokens, weight.t().expand(batch, *weight.t().shape))  # contiguous (B, HW, inner)
        return (out if self.proj_in.bias is None else out + self.proj_in.bias), weight.shape[0]

    def _get_output_for_continuous_inputs(self, hidden_states: Tensor, residual: Tensor, batch_size: int,
                                          height: int, width: int, inner_dim: int) -> Tensor:
        if not self._by_matmul():
            return super()._get_output_for_continuous_inputs(hidden_states, residual, batch_size, height, width,
                                                              inner_dim)
        weight = self.proj_out.weight.flatten(1)  # (C, inner)
        base = residual.flatten(2)
        if self.proj_out.bias is not None:
            base = base + self.proj_out.bias[:, None]
        # residual (+ bias) + W @ tokens^T, written in the residual's NCHW layout (B, C, HW)
        out = torch.baddbmm(base, weight.expand(batch_size, *weight.shape), hidden_states.transpose(1, 2))
        return out.view_as(residual)


_NATIVE: dict[type[nn.Module], type[nn.Module]] = {nn.GroupNorm: NativeGroupNorm, nn.LayerNorm: NativeLayerNorm,
                                                   SinusoidalPositionalEmbedding: NativePositionalEmbedding,
                                                   GEGLU: SplitGEGLU, Transformer2DModel: TokenTransformer2D}
_PLAIN = {v: k for k, v in _NATIVE.items()}


def set_inference_layers(module: nn.Module, enabled: bool = True) -> int:
    """Have ``module``'s 16-bit norms and its positional embeddings compute in 16 bits, its GEGLUs in halves,
    its spatial transformers' projections as matrix products (or undo it).

    A GroupNorm/LayerNorm switches where its weights are bf16/fp16 (one without affine weights,
    or with float32 ones, is left as it is); a positional embedding (with a float32 input it adds
    exactly as before), a GEGLU and a ``Transformer2DModel`` switch always. The layers keep their parameters, buffers and
    state dict (only their class changes), so checkpoints and optimisers do not notice.

    Returns:
        How many layers were switched.
    """
    table = _NATIVE if enabled else _PLAIN
    switched = 0
    for m in module.modules():
        target = table.get(type(m))
        if target is None:
            continue
        weight = getattr(m, "weight", None) if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) else None
        if enabled and isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and (weight is None or weight.dtype not in HALF):
            continue
        m.__class__ = target
        switched += 1
    return switched
