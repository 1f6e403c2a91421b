"""Layers that keep 16-bit activations 16-bit under autocast (for networks whose weights are 16-bit).

CUDA autocast runs ``group_norm`` and ``layer_norm`` in float32: a bf16 activation is normalised
into a float32 tensor, the SiLU after a GroupNorm then reads and writes float32, and the next
convolution or linear layer casts it back to bf16 -- a float32 write, a float32 element-wise pass
and a cast per norm, about 150 norms per UNet call. With the weights already in bf16
(``CyberHost.cast_frozen``) nothing needs float32 there: PyTorch's 16-bit norm kernels accumulate
mean and variance in float32 and round only the output, which the next layer would round to bf16
anyway. Likewise AnimateDiff's temporal layers add a float32 positional table to their bf16
input, which turns every temporal attention's input float32 (and each of its Q/K/V projections
casts it back). :func:`set_half_activations` switches a network's layers to computing in the
activations' 16-bit dtype (and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


_NATIVE: dict[type[nn.Module], type[nn.Module]] = {nn.GroupNorm: NativeGroupNorm, nn.LayerNorm: NativeLayerNorm,
                                                   SinusoidalPositionalEmbedding: NativePositionalEmbedding}
_PLAIN = {v: k for k, v in _NATIVE.items()}


def set_half_activations(module: nn.Module, enabled: bool = True) -> int:
    """Have ``module``'s 16-bit norms and its positional embeddings compute in 16 bits (or undo it).

    A GroupNorm/LayerNorm switches where its weights are bf16/fp16 (one without affine weights,
    or with float32 ones, is left as it is); a positional embedding switches always (with a
    float32 input it adds exactly as before). The layers keep their parameters, buffers and state
    dict (only their class changes), so checkpoints and optimisers do not notice.

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
