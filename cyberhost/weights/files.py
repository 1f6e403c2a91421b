"""Our checkpoint files, read and written without Lightning (part of the weights room, :mod:`cyberhost.weights`).

Three kinds of file hold a CyberHost network (DESIGN.md, "Weights"):

* a Lightning ``.ckpt`` (``torch.save`` of a dict): the module's ``state_dict`` (keys ``model.*``),
  the EMA copy of the trainable weights under ``ema`` (network keys), the module's saved
  ``hyper_parameters`` and ``conditions`` (what the run conditioned on: clip transform, buckets, ...);
* an FSDP2 folder (``conf/trainer/fsdp.yaml``): a ``torch.distributed.checkpoint`` folder with the
  module under ``state_dict`` and everything else in Lightning's ``meta.pt``; read here in one
  process, without a process group;
* a safetensors export (:func:`export_safetensors`): the network's weights under their own names,
  the EMA copies under ``ema.<name>``, and the run's config tree and conditions as JSON metadata.

:func:`read_checkpoint` turns any of them into a :class:`Checkpoint`; :meth:`Checkpoint.weights`
chooses EMA (the EMA copies overlay the raw weights of the trainable parameters) or raw weights.

Unpickling never runs code from a file: :func:`safe_torch_load` uses ``weights_only=True`` and an
allowlist (:func:`checkpoint_safe_globals`) of our config dataclasses and plain containers; any
other global is refused before a byte is unpickled. Types that live with the training code or
Lightning (optimiser settings, ``AttributeDict``) are read as plain stand-ins unless the caller
passes the real classes (``cyberhost.training.checkpoints`` does), so reading a checkpoint never
imports Lightning.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cyberhost.media.files import atomic_write_bytes

log = logging.getLogger(__name__)

MODULE_PREFIX = "model."
"""Prefix of the network's keys in the LightningModule's state dict (``CyberHostModule.model``)."""
EMA_PREFIX = "ema."
"""Prefix of the EMA copies in a safetensors export."""
DCP_METADATA = ".metadata"
"""File that marks a ``torch.distributed.checkpoint`` folder (what FSDP2 runs write as ``last.ckpt``)."""
LIGHTNING_META = "meta.pt"
"""Lightning's file of everything but the weights and optimizer states inside such a folder."""


# ----------------------------------------------------------------------------- safe unpickling


class SavedRecord:
    """Stand-in for a pickled object whose class is not imported here (e.g. the optimiser settings).

    Its attributes are the pickled object's fields; it has no behaviour, so reading a checkpoint
    needs neither Lightning nor the training code.
    """

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"SavedRecord({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class SavedDict(dict):
    """Stand-in for Lightning's ``AttributeDict`` (a dict with attribute access)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


STAND_INS: dict[str, type] = {
    "cyberhost.training.module.OptimConfig": SavedRecord,
    "cyberhost.training.module.ParamGroups": SavedRecord,
    "lightning.fabric.utilities.data.AttributeDict": SavedDict,
    "jsonargparse._namespace.Namespace": SavedRecord,
}
"""Allowed globals that are read as stand-ins unless the caller passes the real class."""


def _qualname(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def checkpoint_safe_globals(extra: Iterable[type] = ()) -> list[type | tuple[type, str]]:
    """Every non-tensor type our checkpoints may pickle: the config dataclasses and plain containers.

    A module built in Python (not by LightningCLI) saves its dataclass arguments as hyper-parameters;
    Lightning adds ``AttributeDict``; paths and namespaces come from configs. Nothing else is allowed:
    in particular no function, so a crafted file cannot call into our code while unpickling.

    Args:
        extra: real classes to use instead of the :data:`STAND_INS` of the same name (the training
            side passes its own, so a resumed run gets its dataclasses back).

    Returns:
        Entries for ``torch.serialization.safe_globals``: classes, or ``(stand-in, pickled name)``.
    """
    import argparse
    import pathlib

    from cyberhost.data.buckets import BucketConfig
    from cyberhost.data.transforms import TransformConfig
    from cyberhost.diffusion import LossConfig, SamplerConfig, ScheduleConfig
    from cyberhost.models import CyberHostConfig

    real = [CyberHostConfig, ScheduleConfig, LossConfig, SamplerConfig, BucketConfig, TransformConfig, pathlib.PosixPath,
            pathlib.WindowsPath, pathlib.PurePosixPath, argparse.Namespace, *extra]
    named: dict[str, type | tuple[type, str]] = {name: (cls, name) for name, cls in STAND_INS.items()}
    named.update({_qualname(cls): cls for cls in real})
    return list(named.values())


class UnsafeCheckpointError(ValueError):
    """A checkpoint pickles objects outside :func:`checkpoint_safe_globals`; it was not unpickled."""


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", extra_globals: Iterable[type] = (),
                    mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and our allowlist; refuses any other pickled global.

    The pickle's globals are listed without unpickling (``get_unsafe_globals_in_checkpoint``), so a
    refused file executes nothing.

    Args:
        path: the file.
        map_location: as for ``torch.load``.
        extra_globals: real classes replacing stand-ins (see :func:`checkpoint_safe_globals`).
        mmap: map the tensors from the file instead of reading them (a 10 GB checkpoint of which
            only the weights are used).

    Raises:
        UnsafeCheckpointError: naming the globals that are not allowed.
    """
    allowed = checkpoint_safe_globals(extra_globals)
    names = {entry[1] if isinstance(entry, tuple) else _qualname(entry) for entry in allowed}
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    bad = sorted(g for g in unsafe if g not in names)
    if bad:
        raise UnsafeCheckpointError(
            f"checkpoint {path} pickles {bad[:5]}, which is not a tensor or one of our config types; refusing to "
            "load it (it could run code). Use a safetensors export, or a checkpoint this code base wrote."
        )
    with torch.serialization.safe_globals(allowed):
        return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)


def _load_pickle(path: Path, trust: bool) -> Any:
    """:func:`safe_torch_load` (mapped); with ``trust``, a refused file is loaded with ``weights_only=False``."""
    try:
        return safe_torch_load(path, mmap=True)
    except UnsafeCheckpointError:
        if not trust:
            raise
    log.warning("loading %s with weights_only=False (trusted by the caller)", path)
    return torch.load(str(path), map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- weights


def strip_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The network's keys of a LightningModule state dict (``model.unet...`` -> ``unet...``).

    A state dict without any ``model.`` key is already the network's and is returned as is;
    otherwise keys outside the prefix (none today) are dropped.
    """
    if not any(k.startswith(MODULE_PREFIX) for k in state):
        return dict(state)
    return {k.removeprefix(MODULE_PREFIX): v for k, v in state.items() if k.startswith(MODULE_PREFIX)}


def with_ema(raw: Mapping[str, Tensor], ema: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The raw weights with the EMA copies (of the trainable parameters) in their place.

    Raises:
        ValueError: the EMA copy names a weight the raw state dict lacks (two networks mixed up).
    """
    unknown = sorted(k for k in ema if k not in raw)
    if unknown:
        raise ValueError(f"EMA weights {unknown[:5]} have no raw weight of the same name ({len(unknown)} in all)")
    return {**raw, **ema}


@dataclass
class Checkpoint:
    """What one of our checkpoint files holds.

    Attributes:
        path: the file or folder.
        kind: ``"lightning"`` (``.ckpt``), ``"distributed"`` (FSDP2 folder) or ``"safetensors"`` (export).
        state: raw network weights (keys as in ``CyberHost.state_dict()``).
        ema: EMA copies of the trainable weights, same keys; empty when the run kept none.
        config: the run's settings: the module's saved hyper-parameters (``.ckpt``, folder) or the
            export's config tree; both name the network config ``model`` and the noise schedule
            ``schedule`` (dataclasses, plain dicts or None). Empty when the file has none.
        conditions: the top-level ``conditions`` record (clip transform, buckets, ...); empty when absent.
    """

    path: Path
    kind: str
    state: dict[str, Tensor]
    ema: dict[str, Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)

    def weights(self, ema: bool = True) -> dict[str, Tensor]:
        """The network state dict: with the EMA copies over the raw weights when ``ema`` and present."""
        return with_ema(self.state, self.ema) if ema and self.ema else dict(self.state)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _from_dict(ckpt: Any, path: Path, kind: str, state: dict[str, Tensor] | None = None) -> Checkpoint:
    """A :class:`Checkpoint` of Lightning's checkpoint dict (``state`` given: the folder's weights)."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict")
    if state is None:
        raw = ckpt["state_dict"] if "state_dict" in ckpt else {k: v for k, v in ckpt.items() if isinstance(v, Tensor)}
        state = strip_module_prefix(raw)
    return Checkpoint(path, kind, state, ema=dict(_mapping(ckpt.get("ema"))),
                      config=_mapping(ckpt.get("hyper_parameters")), conditions=_mapping(ckpt.get("conditions")))


def load_distributed_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The module state dict (``model.*`` keys, full tensors) of a distributed-checkpoint folder, in one process.

    FSDP2 runs (``conf/trainer/fsdp.yaml``) write ``last.ckpt`` as such a folder with the module under
    ``state_dict``; FSDP v1 sharded ones (``conf/trainer/fsdp1.yaml``) under ``model``. The optimizer
    state in it is not read.
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(path))
    entries = reader.read_metadata().state_dict_metadata
    section = next((s for s in ("state_dict", "model") if any(k.startswith(f"{s}.") for k in entries)), None)
    if section is None:
        raise ValueError(f"{path}: distributed checkpoint without the module's weights (not a Lightning checkpoint?)")
    state = {
        key.removeprefix(f"{section}."): torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in entries.items()
        if key.startswith(f"{section}.") and isinstance(md, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent here
        warnings.simplefilter("ignore", UserWarning)
        load({section: state}, storage_reader=reader, no_dist=True)
    return state


def read_distributed(path: Path, trust: bool = False) -> Checkpoint:
    """An FSDP2 (or FSDP v1 sharded) checkpoint folder: weights from the shards, the rest from ``meta.pt``."""
    state = strip_module_prefix(load_distributed_state(path))
    meta = path / LIGHTNING_META
    return _from_dict(_load_pickle(meta, trust) if meta.is_file() else {}, path, "distributed", state)


def read_export(path: Path) -> Checkpoint:
    """A safetensors export: raw weights, ``ema.*`` copies, JSON metadata ``config`` and ``conditions``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    tensors = load_file(str(path))
    ema = {k.removeprefix(EMA_PREFIX): v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}

    def entry(key: str) -> dict[str, Any]:
        try:
            return _mapping(json.loads(meta[key])) if key in meta else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: metadata {key!r} is not JSON: {err}") from err

    return Checkpoint(path, "safetensors", state, ema, entry("config"), entry("conditions"))


def read_checkpoint(path: str | os.PathLike, trust: bool = False) -> Checkpoint:
    """Read a Lightning ``.ckpt``, an FSDP2 checkpoint folder or a safetensors export.

    Args:
        path: the file, or the folder (``last.ckpt/`` holding ``.metadata``).
        trust: load a ``.ckpt`` that pickles objects outside our allowlist with ``weights_only=False``
            (only for files the user made).

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeCheckpointError: a pickle outside our allowlist (without ``trust``).
        ValueError: a folder that is not a distributed checkpoint, or a file that is not a checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / DCP_METADATA).is_file():
            raise ValueError(f"{path} is a folder but not a distributed checkpoint (no {DCP_METADATA})")
        return read_distributed(path, trust)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        if path.suffix == ".safetensors":
            return read_export(path)
        return _from_dict(_load_pickle(path, trust), path, "lightning")
    except (UnsafeCheckpointError, ValueError):
        raise
    except Exception as err:  # a truncated or foreign file: torch and safetensors raise their own types
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def load_network_weights(path: str | os.PathLike, what: str, ema: bool = True) -> dict[str, Tensor]:
    """Network state dict (keys as in ``CyberHost.state_dict()``) of any of our checkpoint kinds.

    Args:
        path: ``.ckpt``, an FSDP2 checkpoint folder or a ``.safetensors`` export.
        what: the config key that named the file (for messages).
        ema: use the EMA weights when the file has them (as ``generate`` does by default).

    Raises:
        FileNotFoundError: naming ``what`` when the file is missing.
        ValueError: a folder that is not a distributed checkpoint.
        UnsafeCheckpointError: a ``.ckpt`` that pickles objects outside our allowlist.
    """
    path = Path(path)
    if path.is_dir() and not (path / DCP_METADATA).is_file():
        raise ValueError(
            f"{what}: {path} is a folder but not a distributed checkpoint (no {DCP_METADATA}); point it at "
            "the run's export/last.safetensors or a last.ckpt"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"{what}: no checkpoint at {path} (a stage-1 last.ckpt, or the run's export/last.safetensors)"
        )
    ckpt = read_checkpoint(path)
    if ckpt.ema:
        log.info("%s: %s weights of %s", what, "EMA" if ema else "raw", path)
    return ckpt.weights(ema)


def export_safetensors(state: Mapping[str, Tensor], path: str | os.PathLike, config: Mapping[str, Any],
                       conditions: Mapping[str, Any] | None = None, ema: Mapping[str, Tensor] | None = None) -> Path:
    """Write a safetensors export atomically (read back by :func:`read_checkpoint`).

    Args:
        state: raw network weights (network keys).
        path: the ``.safetensors`` file.
        config: the run's config tree (``CyberHostModule.config_tree()``), JSON metadata ``config``.
        conditions: the run's conditions record (``CyberHostModule.condition_record()``), metadata ``conditions``.
        ema: EMA copies of the trainable weights, stored as ``ema.<key>``.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tensors.update({f"{EMA_PREFIX}{k}": v.detach().to("cpu").contiguous() for k, v in (ema or {}).items()})
    meta = {"format": "pt", "config": json.dumps(dict(config), default=str),
            "conditions": json.dumps(dict(conditions or {}), default=str)}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return Path(path)


__all__ = [
    "Checkpoint", "DCP_METADATA", "EMA_PREFIX", "MODULE_PREFIX", "SavedDict", "SavedRecord", "UnsafeCheckpointError",
    "checkpoint_safe_globals", "export_safetensors", "load_distributed_state",
    "load_network_weights", "read_checkpoint", "read_distributed", "read_export", "safe_torch_load",
    "strip_module_prefix", "with_ema",
]  # fmt: skip
