"""Checkpoint files: atomic Lightning checkpoints, safetensors exports, safe weight loading.

Lightning's local ``_atomic_save`` writes through an fsspec transaction whose temporary file lives
in the system temp folder: when that is another file system, the final move is a copy, and there
is no ``fsync``. :class:`AtomicCheckpointIO` streams ``torch.save`` into a temporary file beside the
target (never the whole checkpoint in memory: an sd15 one is ~10 GB), syncs it and ``os.replace``-s
it, so a killed job leaves either the old or the new ``last.ckpt``, never half.

Loading never runs code from a file: :func:`safe_torch_load` unpickles with ``weights_only=True`` and
an explicit allowlist (:func:`checkpoint_safe_globals`) of the config dataclasses and plain
containers our checkpoints hold; anything else is refused before a byte is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import load_file, save_file
from torch import Tensor

DCP_METADATA = ".metadata"
"""File that marks a ``torch.distributed.checkpoint`` folder (what FSDP2 runs write as ``last.ckpt``)."""


def checkpoint_safe_globals() -> list[type]:
    """Every non-tensor type our checkpoints may pickle: the config dataclasses and plain containers.

    A module built in Python (not by LightningCLI) saves its dataclass arguments as hyper-parameters;
    Lightning adds ``AttributeDict``; paths and namespaces come from configs. Nothing else is allowed:
    in particular no function, so a crafted file cannot call into our code while unpickling.
    """
    import argparse
    import pathlib

    from jsonargparse import Namespace
    from lightning.fabric.utilities.data import AttributeDict

    from cyberhost.data.buckets import BucketConfig
    from cyberhost.data.transforms import TransformConfig
    from cyberhost.diffusion import LossConfig, SamplerConfig, ScheduleConfig
    from cyberhost.models import CyberHostConfig
    from cyberhost.training.module import OptimConfig, ParamGroups

    return [
        CyberHostConfig, OptimConfig, ParamGroups, ScheduleConfig, LossConfig, SamplerConfig, BucketConfig,
        TransformConfig, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, argparse.Namespace,
        Namespace, AttributeDict,
    ]  # fmt: skip


def _qualname(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


class UnsafeCheckpointError(ValueError):
    """A checkpoint pickles objects outside :func:`checkpoint_safe_globals`; it was not unpickled."""


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and our allowlist; refuses any other pickled global.

    The pickle's globals are listed without unpickling (``get_unsafe_globals_in_checkpoint``), so a
    refused file executes nothing.

    Raises:
        UnsafeCheckpointError: naming the globals that are not allowed.
    """
    allowed = checkpoint_safe_globals()
    names = {_qualname(t) for t in allowed}
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    bad = sorted(g for g in unsafe if g not in names)
    if bad:
        raise UnsafeCheckpointError(
            f"checkpoint {path} pickles {bad[:5]}, which is not a tensor or one of our config types; refusing to "
            "load it (it could run code). Use a safetensors export, or a checkpoint this code base wrote."
        )
    with torch.serialization.safe_globals(allowed):
        return torch.load(str(path), map_location=map_location, weights_only=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file in the same folder and a rename."""
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Any:
    """Open ``.<name>.tmp<pid>`` beside ``path`` for writing; on success fsync it and ``os.replace`` it.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_local(path: Any) -> bool:
    protocol = getattr(get_filesystem(path), "protocol", None) or ()
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a partial file at a local path and loads with our allowlist."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Stream to a temporary file beside ``path``, then rename (local paths); remote: Lightning's writer."""
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
        return None

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Resume loading through :func:`safe_torch_load` (local files); ``weights_only=False`` is Lightning's."""
        if weights_only is False or not _is_local(path) or not Path(path).is_file():
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return safe_torch_load(path, map_location=map_location or (lambda storage, loc: storage))


def export_safetensors(state: dict[str, Tensor], path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write weights as safetensors (atomically) with the run settings as JSON metadata ``config``."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata={"config": json.dumps(config, default=str), "format": "pt"}))
    return Path(path)


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


def load_network_weights(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """Network state dict (keys as in ``CyberHost.state_dict()``) from a Lightning ckpt or a safetensors export.

    Args:
        path: ``.ckpt`` file (keys ``model.*`` are used), an FSDP2 distributed-checkpoint folder
            (``last.ckpt/`` holding ``.metadata``), or ``.safetensors``.
        what: the config key that named the file (for messages).

    Raises:
        FileNotFoundError: naming ``what`` when the file is missing.
        ValueError: a folder that is not a distributed checkpoint.
        UnsafeCheckpointError: a ``.ckpt`` that pickles objects outside our allowlist.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / DCP_METADATA).is_file():
            raise ValueError(
                f"{what}: {path} is a folder but not a distributed checkpoint (no {DCP_METADATA}); point it at "
                "the run's export/last.safetensors or a last.ckpt"
            )
        state = load_distributed_state(path)
    elif not path.is_file():
        raise FileNotFoundError(
            f"{what}: no checkpoint at {path} (a stage-1 last.ckpt, or the run's export/last.safetensors)"
        )
    elif path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        ckpt = safe_torch_load(path)
        state = ckpt.get("state_dict", ckpt)
    if any(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return state


__all__ = [
    "AtomicCheckpointIO", "UnsafeCheckpointError", "atomic_file", "atomic_write_bytes", "checkpoint_safe_globals",
    "export_safetensors", "load_distributed_state", "load_network_weights", "safe_torch_load", "save_file",
]  # fmt: skip
