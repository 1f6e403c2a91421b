"""Random initialisation of a network built on the meta device, one module at a time.

``CyberHost(config)`` built under ``torch.device("meta")`` has shapes but no values. After
``to_empty`` its tensors hold whatever memory they got; :func:`init_module` gives one module's own
(non-recursive) parameters and buffers the values construction would have drawn from the same
distributions: PyTorch's ``reset_parameters`` for its layers, and for the few modules that
initialise differently in their ``__init__`` the same rule again (zero output projections of
everything stage 2 adds, the codebooks' scaled normal, the hand embedding's small normal, the
sinusoid tables of the temporal modules, ...). The values are not those of an eager build under
the same seed (the random stream is consumed in another order); zeros, constants and the spread
of every tensor are (``tests/models/test_meta.py`` compares every tensor with an eager build).

A module type with its own tensors and no rule here is an error, so a new part cannot silently
start from uninitialised memory. Sharding (materialising one shard of a module at a time) is the
caller's business (:func:`cyberhost.weights.materialize`); nothing here touches files or
``torch.distributed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel, Wav2Vec2Model

from .attention import AddedCrossAttention
from .encoders import HandClarityEmbedding, HandEncoder, PoseEncoder
from .rca import Codebook, HeatmapHead


def _zero(module: nn.Module) -> None:
    nn.init.zeros_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def _weight_norm_conv(module: nn.Module) -> None:
    """A weight-normed conv (wav2vec2's positional conv): draw the plain weight, then let the parametrisation split it."""
    module.reset_parameters()  # the bias (the weight it draws is a computed tensor, dropped)
    weight = torch.empty(module.weight.shape, dtype=module.weight.dtype, device=module.weight.device)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    with torch.no_grad():
        module.weight = weight  # right_inverse of the parametrisation sets its originals (g, v)


def _sinusoid_table(module: SinusoidalPositionalEmbedding) -> None:
    _, length, dim = module.pe.shape
    with torch.device("cpu"):
        table = SinusoidalPositionalEmbedding(dim, length).pe
    module.pe.copy_(table)


RULES: dict[type[nn.Module], Callable[[nn.Module], None]] = {
    Codebook: lambda m: nn.init.normal_(m.weight, std=m.weight.shape[1] ** -0.5),  # randn(n, d) / sqrt(d)
    HandEncoder: lambda m: nn.init.normal_(m.hand_embedding, std=0.02),
    AddedCrossAttention: lambda m: _zero(m.attn.to_out[0]),
    PoseEncoder: lambda m: _zero(m.out),
    HandClarityEmbedding: lambda m: _zero(m.mlp[2]),
    HeatmapHead: lambda m: (m.net[-1].weight.mul_(0.1), m.net[-1].bias.mul_(0.1)),  # its "small start"
    SinusoidalPositionalEmbedding: _sinusoid_table,
    Wav2Vec2Model: lambda m: nn.init.uniform_(m.masked_spec_embed),
}
"""Modules whose ``__init__`` sets values that ``reset_parameters`` of their layers would not give.

A rule runs after every module inside it, so zeroing a child's projection wins over the child's
own reset. ``CyberHost`` itself adds its rule (:meth:`CyberHost.init_own_weights`)."""


def own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The module's direct (non-recursive) parameters and buffers, by attribute name."""
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def init_module(module: nn.Module, owner: PreTrainedModel | None = None) -> None:
    """Initialise ``module``'s direct tensors (and apply its rule, which may reach into its children).

    Args:
        module: the module.
        owner: the transformers model it belongs to (wav2vec2), whose own ``_init_weights`` rule
            then runs after the generic one, as in its ``post_init``.

    Raises:
        TypeError: the module has tensors of its own and no way to initialise them.
    """
    rule = next((fn for cls, fn in RULES.items() if isinstance(module, cls)), None)
    own = any(True for _ in own_tensors(module))
    with torch.no_grad():
        if parametrize.is_parametrized(module, "weight"):
            _weight_norm_conv(module)
        elif own and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        elif hasattr(module, "init_own_weights"):
            module.init_own_weights()
        elif rule is None and owner is None and own and not isinstance(module, parametrize.ParametrizationList):
            raise TypeError(f"{type(module).__name__} has tensors of its own but no initialisation rule; add one to "
                            "cyberhost.models.init.RULES")
        if owner is not None and not isinstance(module, parametrize.ParametrizationList):
            owner._init_weights(module)  # noqa: SLF001 -- transformers' per-module rule (normal(0.02), zero biases)
        if rule is not None:
            rule(module)


def init_order(root: nn.Module) -> list[tuple[str, nn.Module, PreTrainedModel | None]]:
    """``(name, module, owner)`` in the order :func:`init_module` must see them: each module after all inside it.

    ``owner`` is the innermost transformers model holding the module (or None).
    """
    owners: dict[str, PreTrainedModel] = {}
    out = []
    for name, module in root.named_modules():
        owner = next((o for prefix, o in reversed(owners.items()) if name == prefix or name.startswith(f"{prefix}.")),
                     None)
        if isinstance(module, PreTrainedModel):
            owners[name] = owner = module
        out.append((name, module, owner))
    return list(reversed(out))


def init_weights(root: nn.Module) -> None:
    """Initialise every tensor of ``root`` (materialised from the meta device, e.g. by ``to_empty``)."""
    for _, module, owner in init_order(root):
        init_module(module, owner)
