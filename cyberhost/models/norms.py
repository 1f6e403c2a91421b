"""Normalisation layers that stay in their weights' 16-bit dtype under autocast.

CUDA autocast runs ``group_norm`` and ``layer_norm`` in float32: a bf16 activation is normalised
into a float32 tensor, the SiLU after a GroupNorm then reads and writes float32, and the next
convolution or linear layer casts it back to bf16 -- a float32 write, a float32 element-wise pass
and a cast per norm, about 150 norms per UNet call. With the weights already in bf16
(``CyberHost.cast_frozen``) nothing needs float32 there: PyTorch's 16-bit norm kernels accumulate
mean and variance in float32 and round only the output, which the next layer would round to bf16
anyway. :func:`set_native_norms` switches a network's 16-bit norms to that (and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


_NATIVE: dict[type[nn.Module], type[nn.Module]] = {nn.GroupNorm: NativeGroupNorm, nn.LayerNorm: NativeLayerNorm}
_PLAIN = {v: k for k, v in _NATIVE.items()}


def set_native_norms(module: nn.Module, native: bool = True) -> int:
    """Make every GroupNorm/LayerNorm of ``module`` with 16-bit weights normalise in that dtype (or undo it).

    The layers keep their parameters and state dict (only their class changes), so checkpoints and
    optimisers do not notice. A norm without affine weights, or with float32 ones, is left as it is.

    Returns:
        How many layers were switched.
    """
    table = _NATIVE if native else _PLAIN
    switched = 0
    for m in module.modules():
        target = table.get(type(m))
        if target is not None and getattr(m, "weight", None) is not None and (not native or m.weight.dtype in HALF):
            m.__class__ = target
            switched += 1
    return switched
