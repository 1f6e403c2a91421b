"""Weights into a built network: pretrained folders, then a checkpoint; plain, on the meta device, or FSDP2-sharded.

:func:`load_network` is the one path for training (from scratch, stage 1 -> stage 2) and
``generate``. It plans first -- which pretrained sources the checkpoint does not already cover,
which keys are missing, unexpected or mis-shaped -- then, when the network was built on the meta
device, materialises it (:func:`materialize`: only what nothing will load is initialised), then
copies the sources and the checkpoint in.

Under FSDP2 (parameters are sharded ``DTensor``\\ s, ``CyberHostModule.configure_model``) every call
is collective: rank 0 alone reads files and plans; the plan is broadcast (so every rank fails
together, with rank 0's message); tensors reach the other ranks one at a time
(``set_model_state_dict(broadcast_from_rank0=True)``), each rank keeping its shard. So at start-up
a rank holds:

* its shard of every ``fully_shard`` unit (UNet blocks and stems, every trainable part);
* whole copies of what FSDP2 leaves unsharded: the frozen VAE, wav2vec2 and ArcFace, and the
  root's own ``text_context``;
* one full tensor in flight (a broadcast tensor, or the one module being initialised);
* rank 0 only, while it is copied: the source being read -- one pretrained part at a time (the
  SD-1.5 UNet is the largest, ~3.4 GB in fp32), or the starting checkpoint: a ``.ckpt`` is
  memory-mapped (pages are read as tensors are sent), a safetensors export or an FSDP2 folder is
  read whole (a stage-1 sd15 checkpoint, ~7 GB).

No rank holds the whole network. What is not done yet: reading an FSDP2 folder shard by shard
straight into the sharded network (``torch.distributed.checkpoint.load`` resharding).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cyberhost.models.cyberhost import CyberHost, Part, part_of

from .files import load_network_weights
from .pretrained import Source, check_source, read_source, source_keys, sources

log = logging.getLogger(__name__)


class WeightsMismatchError(ValueError):
    """A state dict does not fit the network: the message names the keys (first 10 of each kind)."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 mismatched: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing or [], unexpected or [], mismatched or []


# ----------------------------------------------------------------------------- sharded or not


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is a ``DTensor`` (FSDP2's ``fully_shard`` was applied)."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def is_meta(model: nn.Module) -> bool:
    """Whether any parameter or buffer is on the meta device (built under ``torch.device("meta")``)."""
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _rank0(sharded: bool) -> bool:
    return not sharded or torch.distributed.get_rank() == 0


def _share(sharded: bool, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself when not sharded)."""
    if not sharded:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _on_rank0(sharded: bool, fn: Callable[[], Any], share: bool = True) -> Any:
    """Run ``fn`` on rank 0; raise its exception on every rank; return its result there (and, with ``share``, everywhere).

    Without ``share`` the other ranks get None: for tensors, which travel by :func:`assign` instead.
    """
    value, err = None, None
    if _rank0(sharded):
        try:
            value = fn()
        except Exception as exc:  # re-raised below, on every rank
            err = exc
    if sharded and share:
        value, err = _share(sharded, (value, err))
    elif sharded:
        err = _share(sharded, err)
    if err is not None:
        raise err
    return value


# ----------------------------------------------------------------------------- materialise


@contextlib.contextmanager
def _full_parameters(module: nn.Module, src: int) -> Iterator[bool]:
    """Swap the module's own sharded parameters for full temporaries; on exit scatter rank ``src``'s values.

    Yields whether this rank draws the values: always for a module without sharded parameters
    (every rank draws the same, from the module's own seed), else only on rank ``src``; the
    others just receive their shards. Only one module's tensors are ever full.
    """
    sharded = {n: p for n, p in module.named_parameters(recurse=False) if type(p).__name__ == "DTensor"}
    if not sharded:
        yield True
        return
    from torch.distributed.tensor import distribute_tensor

    for name, p in sharded.items():
        full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device)
        module._parameters[name] = nn.Parameter(full, requires_grad=p.requires_grad)
    try:
        yield torch.distributed.get_rank() == src
        for name, p in sharded.items():
            shard = distribute_tensor(module._parameters[name].detach(), p.device_mesh, p.placements,
                                      src_data_rank=src).to_local()
            with torch.no_grad():
                p.to_local().copy_(shard)
    finally:
        for name, p in sharded.items():
            module._parameters[name] = p


def materialize(model: nn.Module, device: torch.device | str, covered: frozenset[str] | set[str] = frozenset(),
                seed: int = 0) -> None:
    """Give a network built on the meta device real, initialised tensors on ``device``.

    ``to_empty`` allocates them (sharded parameters: this rank's shard only); then every module
    whose own tensors are not all in ``covered`` (the keys that loading will overwrite) is
    initialised by :func:`cyberhost.models.init.init_module` from a seed of its own (``seed`` and
    its place in the network), so the values do not depend on the number of ranks. A sharded
    module is drawn by one rank (round robin) and scattered, so the ranks share the work.
    """
    from cyberhost.models.init import init_module, init_order, own_tensors

    device = torch.device(device)
    model.to_empty(device=device)
    world = torch.distributed.get_world_size() if is_sharded(model) else 1
    devices = [device] if device.type == "cuda" else []
    for index, (prefix, module, owner) in enumerate(init_order(model)):
        names = [f"{prefix}.{n}" if prefix else n for n, _ in own_tensors(module)]
        if names and all(n in covered for n in names):
            continue
        with torch.random.fork_rng(devices=devices), _full_parameters(module, index % world) as draw:
            torch.manual_seed(seed * 1_000_003 + index)
            if draw:
                init_module(module, owner)


# ----------------------------------------------------------------------------- copying tensors in


def assign(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` (network keys, a subset) into the model; collective when sharded (rank 0's ``state`` counts)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, dict(state), options=options)
        return
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


# ----------------------------------------------------------------------------- plan and load


@dataclass
class LoadPlan:
    """What :func:`load_network` read: pretrained sources (by name) and the checkpoint's key count.

    Attributes:
        sources: names of the pretrained sources read (``sd15_path/vae``, ``wav2vec2_path``, ...).
        skipped: sources not read because the checkpoint holds all their tensors.
        checkpoint_keys: tensors taken from the checkpoint.
        initialised: keys left at their initial values (nothing loaded them).
    """

    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    checkpoint_keys: int = 0
    initialised: list[str] = field(default_factory=list)


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")


def _check(model: CyberHost, shapes: Mapping[str, tuple[int, ...]], state: Mapping[str, Tensor], loaded: set[str],
           allow_missing: Callable[[Part], bool], what: str) -> list[str]:
    """Keys left at their initial values; raises :class:`WeightsMismatchError` when ``state`` does not fit."""
    unexpected = sorted(k for k in state if k not in shapes)
    mismatched = sorted(f"{k}: checkpoint {tuple(v.shape)} vs network {tuple(shapes[k])}" for k, v in state.items()
                        if k in shapes and tuple(v.shape) != tuple(shapes[k]))
    left = [k for k in shapes if k not in state and k not in loaded]
    missing = sorted(k for k in left if not allow_missing(part_of(model.parts, k)))
    if missing or unexpected or mismatched:
        kinds = [f"{len(v)} {name} key(s): {_show(v)}" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)) if v]
        raise WeightsMismatchError(f"{what} does not fit the network (size={model.config.size!r}, "
                                   f"stage={model.config.stage}): " + "; ".join(kinds), missing, unexpected, mismatched)
    return left


def load_network(
    model: CyberHost,
    checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None,
    what: str = "checkpoint",
    allow_missing: Callable[[Part], bool] | None = None,
    ema: bool = True,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> LoadPlan:
    """Pretrained folders the config names, then ``checkpoint`` over them (collective under FSDP2).

    A pretrained source whose every tensor the checkpoint holds is not read (a stage-1 ``.ckpt``
    holds the SD-1.5 UNet and VAE it was trained from; an export without frozen parts does not
    hold the VAE, which then comes from ``sd15_path/vae``).

    Args:
        model: a built network: initialised (eager), on the meta device (materialised here on
            ``device``, initialising only what nothing loads), or sharded by FSDP2 (on meta or not).
        checkpoint: a state dict in network keys, or a path :func:`load_network_weights` reads
            (``.ckpt``, FSDP2 folder, safetensors export); None = pretrained folders only.
        what: names the checkpoint in messages (e.g. the config key).
        allow_missing: which parts the checkpoint may lack (they keep their pretrained or initial
            values); default none (without a checkpoint every part keeps them).
        ema: take the checkpoint's EMA weights when it has them.
        device: where a meta network is materialised.
        seed: seed of the initialisation of a meta network (the same on every rank).

    Raises:
        WeightsMismatchError: missing, unexpected or mis-shaped keys (named).
        FileNotFoundError: a pretrained folder or the checkpoint is missing.
        PretrainedMismatchError: a pretrained folder of another architecture.
    """
    sharded = is_sharded(model)
    if checkpoint is None:
        allow: Callable[[Part], bool] = lambda part: True  # noqa: E731 -- nothing to miss without a checkpoint
    else:
        allow = allow_missing or (lambda part: False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state: dict[str, Tensor] = {}

    def plan() -> tuple[list[Source], LoadPlan]:
        nonlocal state
        if checkpoint is not None:
            state = (dict(checkpoint) if isinstance(checkpoint, Mapping)
                     else load_network_weights(Path(checkpoint), what, ema))
        needed, skipped, loaded = [], [], set()
        for source in sources(model):
            keys = source_keys(list(shapes), model, source)
            if keys and keys <= state.keys():
                skipped.append(source.name)
                continue
            check_source(source)
            needed.append(source)
            loaded |= keys
        left = _check(model, shapes, state, loaded, allow, f"{what} {checkpoint}" if isinstance(checkpoint, str | os.PathLike) else what)
        return needed, LoadPlan([s.name for s in needed], skipped, len(state), left)

    needed, result = _on_rank0(sharded, plan)
    if is_meta(model):
        materialize(model, device, frozenset(shapes) - set(result.initialised), seed)
    for source in needed:
        part = _on_rank0(sharded, lambda source=source: read_source(model, source, shapes), share=False)
        assign(model, part or {})
        del part
    if checkpoint is not None:
        assign(model, state if _rank0(sharded) else {})
    state.clear()
    log.info("weights: pretrained %s (skipped, in the checkpoint: %s); %d checkpoint tensors; %d left at init",
             result.sources, result.skipped, result.checkpoint_keys, len(result.initialised))
    return result


__all__ = ["LoadPlan", "WeightsMismatchError", "assign", "is_meta", "is_sharded", "load_network", "materialize"]
