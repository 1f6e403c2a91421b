"""The model-part contract (STYLE.md #15): one set of checks that every part of ``cyberhost/models`` must pass.

A part is described by a :class:`Part` (how to build it under a seed, its inputs, how to call it,
its output shapes, what is frozen, whether it supports activation checkpointing); ``test_contract.py``
holds the table of parts and runs each ``check_*`` below on each of them:

* :func:`check_shapes`: every output has the declared shape and is finite.
* :func:`check_deterministic`: two builds under one seed have equal weights and give bitwise equal
  outputs, a second call of one module too; another seed gives other outputs (so the seed is used).
* :func:`check_optimizer_step`: after one SGD step on a loss reaching every output, *exactly* the
  trainable parameters the call reaches change (each got a non-zero gradient: what DDP without
  ``find_unused_parameters`` needs, and stricter than ``grad is not None``); frozen parameters, and
  the buffers of modules in eval mode or with every parameter frozen (BatchNorm statistics of a
  frozen encoder), stay bitwise equal.
* :func:`check_checkpointing`: with activation checkpointing on, modules really are recomputed in
  backward, and loss and gradients equal those without it.
* :func:`check_bf16`: under CPU bf16 autocast (what ``precision: bf16-mixed`` and ``generate
  --autocast bf16`` run) every output is finite and within ``bf16_tol`` (relative L2) of float32,
  bf16 really was used (or, for parts that are float32 by design, the output is bitwise float32's),
  and the backward gives every reached trainable (float32) weight a finite gradient.
* :func:`check_batch_independence`: new inputs for one sample change that sample's outputs and leave
  every other sample's bitwise unchanged, for each sample in turn (receptive field across the batch:
  no mixing or reordering of samples through reshapes, the CFG-dropout grouping or the identity masks).

Zero-initialised output layers make a fresh part's added paths no-ops, which would make most of
these checks vacuous, so :func:`make` gives every all-zero weight small random values first (a
"trained" part) with a generator of its own, independent of the build seed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Inputs = dict[str, Any]


def _call_kwargs(module: nn.Module, x: Inputs) -> Any:
    return module(**x)


def freeze_half(module: nn.Module) -> None:
    """Freeze every second parameter tensor (in ``named_parameters`` order) of the trainable ones."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable[1::2]:
        p.requires_grad_(False)


@dataclass
class Part:
    """One model part under contract.

    Attributes:
        name: test id.
        build: builds the part; :func:`make` seeds the global RNG first.
        inputs: the part's inputs from a seeded generator (keyword arguments of ``call``).
        shapes: output name (as :func:`flatten` names it) -> shape; all outputs must be listed.
        call: runs the part on the inputs (default ``module(**inputs)``).
        freeze: makes the frozen subset (default: half the trainable tensors); None = the part's own
            ``requires_grad`` declaration is the frozen/trainable split under test.
        unreached: parameter-name prefixes this call does not reach (they must stay unchanged).
        inert: regexes of trainable parameters that get no gradient by construction, so may stay
            unchanged (each with its reason where the table sets it).
        optimizer_params: the parameters the optimiser gets (default: those with ``requires_grad``).
        checkpointing: ``(module, enabled)`` turning activation checkpointing on/off; None = the
            part has none.
        bf16_tol: allowed relative L2 error ``|out_bf16 - out_fp32| / |out_fp32|`` of each output (bf16
            rounds to 2**-8 ~ 0.4 %; measured: <= 0.5 % for single parts, <= 1.5 % for the UNets and networks).
        bf16_exact: the part computes in float32 under autocast by design: outputs must be bitwise equal.
        bf16_prepare: applied to the module before its autocast run (not before the float32 reference),
            e.g. storing its frozen weights in bf16 as ``frozen_bf16`` training does.
        per_sample: float inputs whose first axis is the batch (``batch`` samples, or a multiple of it
            with each sample's rows adjacent) for :func:`check_batch_independence`; () = not checked.
        batch: samples in the inputs.
        train: the mode the part runs in (False for parts that are always frozen in eval mode).
        only: run only these checks (a row that exists for one of them; the others run on a sibling row).
    """

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Inputs]
    shapes: dict[str, tuple[int, ...]]
    call: Callable[[nn.Module, Inputs], Any] = _call_kwargs
    freeze: Callable[[nn.Module], None] | None = freeze_half
    unreached: tuple[str, ...] = ()
    inert: tuple[str, ...] = ()
    optimizer_params: Callable[[nn.Module], Any] | None = None
    checkpointing: Callable[[nn.Module, bool], None] | None = None
    bf16_tol: float = 0.01
    bf16_exact: bool = False
    bf16_prepare: Callable[[nn.Module], object] | None = None
    per_sample: tuple[str, ...] = ()
    batch: int = 2
    train: bool = True
    only: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------- helpers


def wake_all_zero_tensors(module: nn.Module, std: float = 0.05, seed: int = 7) -> None:
    """Give every all-zero float parameter (frozen ones too) small random values, from a generator of its own."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def make(part: Part, seed: int = 0) -> nn.Module:
    """Build ``part`` under ``seed``, wake its zero-initialised weights, set its mode."""
    torch.manual_seed(seed)
    module = part.build()
    wake_all_zero_tensors(module)
    return module.train(part.train)


def make_inputs(part: Part, seed: int = 1) -> Inputs:
    return part.inputs(torch.Generator().manual_seed(seed))


def flatten(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Tensors of a (nested) output: tuples/lists by index, dicts by key, dataclasses by field; None skipped."""
    if obj is None:
        return {}
    if isinstance(obj, Tensor):
        return {prefix or "out": obj}
    if dataclasses.is_dataclass(obj):
        items: Any = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        raise TypeError(f"cannot flatten an output of type {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def outputs(part: Part, module: nn.Module, x: Inputs) -> dict[str, Tensor]:
    return flatten(part.call(module, x))


def _floats(outs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in outs.items() if v.is_floating_point()}


def contract_loss(outs: dict[str, Tensor]) -> Tensor:
    """A fixed random projection of every float output.

    Not a plain sum: the sum of a LayerNorm's output has no gradient at all.
    """
    g = torch.Generator().manual_seed(1234)
    total = torch.zeros((), dtype=torch.float32)
    for value in _floats(outs).values():
        weight = torch.randn(value.shape, generator=g)
        total = total + (value.float() * weight).mean()
    return total


def _trainable(part: Part, module: nn.Module) -> list[nn.Parameter]:
    if part.optimizer_params is not None:
        return list(part.optimizer_params(module))
    return [p for p in module.parameters() if p.requires_grad]


def _still_buffers(module: nn.Module) -> dict[str, Tensor]:
    """Buffers that must not move in a training step: of modules in eval mode or whose parameters are all frozen."""
    out: dict[str, Tensor] = {}
    for name, sub in module.named_modules():
        params = list(sub.parameters())
        if not sub.training or (params and not any(p.requires_grad for p in params)):
            for bname, buf in sub.named_buffers(recurse=False):
                out[f"{name}.{bname}" if name else bname] = buf.detach().clone()
    return out


# ----------------------------------------------------------------------------- checks


def check_shapes(part: Part) -> None:
    outs = outputs(part, make(part), make_inputs(part))
    assert {k: tuple(v.shape) for k, v in outs.items()} == part.shapes
    for name, value in _floats(outs).items():
        assert torch.isfinite(value).all(), name


def check_deterministic(part: Part) -> None:
    a, b, other = make(part, seed=0), make(part, seed=0), make(part, seed=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = make_inputs(part)
    first, again, twin = outputs(part, a, x), outputs(part, a, x), outputs(part, b, x)
    for name, value in first.items():
        assert torch.equal(value, again[name]), f"{name}: a second call differs"
        assert torch.equal(value, twin[name]), f"{name}: a second build under the same seed differs"
    moved = outputs(part, other, x)
    assert any(not torch.equal(v, moved[k]) for k, v in _floats(first).items()), "the seed changes nothing"


def check_optimizer_step(part: Part) -> None:
    module = make(part)
    if part.freeze is not None:
        part.freeze(module)
    params = _trainable(part, module)
    names = {id(p): n for n, p in module.named_parameters()}
    trainable = {names[id(p)] for p in params}
    frozen = {n for n, _ in module.named_parameters()} - trainable
    assert trainable, "nothing to train"
    assert frozen or len(trainable) == 1, "the freeze left nothing frozen"
    reached = {n for n in trainable if not n.startswith(part.unreached)}
    inert = {n for n in reached if any(re.search(pattern, n) for pattern in part.inert)}
    assert inert or not part.inert, f"no parameter matches inert={part.inert}"
    reached -= inert
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    buffers = _still_buffers(module)
    opt = torch.optim.SGD(params, lr=0.5)
    contract_loss(outputs(part, module, make_inputs(part))).backward()
    assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    by_name = dict(module.named_parameters())
    graphless = [n for n in sorted(reached | inert) if by_name[n].grad is None]
    assert not graphless, f"trainable but outside the graph (DDP would need find_unused_parameters): {graphless[:8]}"
    leaky = [n for n in inert if by_name[n].grad is not None and by_name[n].grad.abs().max() > 1e-8]
    assert not leaky, f"declared inert but with a gradient: {leaky[:8]}"
    opt.step()
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])} - inert
    assert not changed & frozen, sorted(changed & frozen)[:8]
    assert changed == reached, {"unchanged": sorted(reached - changed)[:8], "unreached but changed":
                                sorted(changed - reached)[:8]}
    after = _still_buffers(module)
    assert after.keys() == buffers.keys()
    moved = [k for k in buffers if not torch.equal(buffers[k], after[k])]
    assert not moved, moved[:8]


def _loss_and_grads(part: Part, checkpointing: bool) -> tuple[Tensor, dict[str, Tensor], int]:
    module = make(part)
    part.checkpointing(module, checkpointing)
    in_backward = [False]
    recomputed = [0]

    def count(*_: object) -> None:
        recomputed[0] += in_backward[0]

    handles = [m.register_forward_hook(count) for m in module.modules()]
    loss = contract_loss(outputs(part, module, make_inputs(part)))
    in_backward[0] = True
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, recomputed[0]


def check_checkpointing(part: Part) -> None:
    loss_a, grads_a, recomputed_a = _loss_and_grads(part, False)
    loss_b, grads_b, recomputed_b = _loss_and_grads(part, True)
    assert recomputed_a == 0 and recomputed_b > 0, (recomputed_a, recomputed_b)  # checkpointing really is on
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def check_bf16(part: Part) -> None:
    module = make(part)
    x = make_inputs(part)
    with torch.no_grad():
        want = outputs(part, module, x)
    if part.bf16_prepare is not None:
        part.bf16_prepare(module)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = outputs(part, module, x)
    assert got.keys() == want.keys()
    errors = {}
    for name, ref in _floats(want).items():
        value = got[name]
        assert torch.isfinite(value.float()).all(), name
        if part.bf16_exact:
            assert value.dtype == torch.float32 and torch.equal(value, ref), name
            continue
        errors[name] = float((value.float() - ref).norm() / ref.norm().clamp_min(1e-12))
        assert errors[name] <= part.bf16_tol, (name, errors[name], part.bf16_tol)
    if not part.bf16_exact:
        assert max(errors.values()) > 0, "autocast changed nothing: bf16 was never used"
    if part.freeze is not None:
        part.freeze(module)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = contract_loss(outputs(part, module, x))
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad and not n.startswith(part.unreached)}
    assert trainable and not [n for n, p in trainable.items() if p.grad is None], "a trainable weight got no gradient"
    assert all(p.dtype == torch.float32 for p in trainable.values()), "trainable weights are the float32 masters"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())


def _rows(value: Tensor, batch: int, sample: int) -> slice:
    rows = value.shape[0] // batch
    assert value.shape[0] == rows * batch, f"first axis {value.shape[0]} is not a multiple of the batch {batch}"
    return slice(sample * rows, (sample + 1) * rows)


def check_batch_independence(part: Part) -> None:
    module = make(part)
    x = make_inputs(part)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        before = _floats(outputs(part, module, x))
        for sample in range(part.batch):  # new inputs for this sample only
            changed = dict(x)
            for name in part.per_sample:
                value = x[name]
                assert value.is_floating_point(), name
                new = value.clone()
                rows = _rows(value, part.batch, sample)
                new[rows] = torch.randn(new[rows].shape, generator=g, dtype=value.dtype) * value.std() + value.mean()
                changed[name] = new
            after = _floats(outputs(part, module, changed))
            moved = False
            for name, value in before.items():
                for other in range(part.batch):
                    rows = _rows(value, part.batch, other)
                    if other == sample:
                        moved |= not torch.equal(after[name][rows], value[rows])
                    else:
                        same = torch.equal(after[name][rows], value[rows])
                        assert same, f"{name}: sample {other} moved with {sample}'s inputs"
            assert moved, f"new inputs for sample {sample} changed none of its outputs"


CHECKS: dict[str, Callable[[Part], None]] = {
    "shapes": check_shapes,
    "deterministic": check_deterministic,
    "optimizer_step": check_optimizer_step,
    "checkpointing": check_checkpointing,
    "bf16": check_bf16,
    "batch_independence": check_batch_independence,
}


def applies(check: str, part: Part) -> bool:
    """Whether ``check`` is part of ``part``'s contract."""
    if part.only is not None and check not in part.only:
        return False
    if check == "checkpointing":
        return part.checkpointing is not None
    if check == "batch_independence":
        return bool(part.per_sample)
    return True


def check_part(part: Part) -> None:
    """Run every check that applies to ``part`` (for one-off use; the test file parametrises instead)."""
    for name, check in CHECKS.items():
        if applies(name, part):
            check(part)
