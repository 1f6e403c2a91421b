"""Lightning's side of our checkpoint files: atomic ``.ckpt`` saves and resume loading with our allowlist.

Reading and writing the files themselves (the unpickling allowlist, ``.ckpt``, FSDP2 folders,
safetensors exports, EMA) lives in the Lightning-free :mod:`cyberhost.weights`, shared with
``generate``; its names are re-exported here for the training code.

Lightning's local ``_atomic_save`` writes through an fsspec transaction whose temporary file lives
in the system temp folder: when that is another file system, the final move is a copy, and there
is no ``fsync``. :class:`AtomicCheckpointIO` streams ``torch.save`` through the project's one
atomic write (:func:`cyberhost.media.files.atomic_file`: a synced temporary file beside the target,
then ``os.replace``; never the whole checkpoint in memory: an sd15 one is ~10 GB), so a killed job
leaves either the old or the new ``last.ckpt``, never half.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import save_file

from cyberhost import weights
from cyberhost.media.files import atomic_file
from cyberhost.weights import (
    DCP_METADATA,
    UnsafeCheckpointError,
    export_safetensors,
    load_distributed_state,
    load_network_weights,
)


def training_globals() -> list[type]:
    """The real classes behind :data:`cyberhost.weights.STAND_INS`: a resumed run gets its own objects back."""
    from jsonargparse import Namespace
    from lightning.fabric.utilities.data import AttributeDict

    from cyberhost.training.module import OptimConfig, ParamGroups

    return [OptimConfig, ParamGroups, AttributeDict, Namespace]


def checkpoint_safe_globals() -> list[type | tuple[type, str]]:
    """:func:`cyberhost.weights.checkpoint_safe_globals` with the training classes themselves."""
    return weights.checkpoint_safe_globals(training_globals())


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """:func:`cyberhost.weights.safe_torch_load` with the training classes themselves.

    Raises:
        UnsafeCheckpointError: naming the globals that are not allowed.
    """
    return weights.safe_torch_load(path, map_location, training_globals())


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


__all__ = [
    "DCP_METADATA", "AtomicCheckpointIO", "UnsafeCheckpointError", "checkpoint_safe_globals", "export_safetensors",
    "load_distributed_state", "load_network_weights", "safe_torch_load", "save_file", "training_globals",
]  # fmt: skip
