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
element-wise kernels; two products with the weight's halves give contiguous halves.
:func:`set_inference_layers` switches a network's layers to these forms (and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
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


_NATIVE: dict[type[nn.Module], type[nn.Module]] = {nn.GroupNorm: NativeGroupNorm, nn.LayerNorm: NativeLayerNorm,
                                                   SinusoidalPositionalEmbedding: NativePositionalEmbedding,
                                                   GEGLU: SplitGEGLU}
_PLAIN = {v: k for k, v in _NATIVE.items()}


def set_inference_layers(module: nn.Module, enabled: bool = True) -> int:
    """Have ``module``'s 16-bit norms and its positional embeddings compute in 16 bits, its GEGLUs in halves (or undo it).

    A GroupNorm/LayerNorm switches where its weights are bf16/fp16 (one without affine weights,
    or with float32 ones, is left as it is); a positional embedding (with a float32 input it adds
    exactly as before) and a GEGLU switch always. The layers keep their parameters, buffers and
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
