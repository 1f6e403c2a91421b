"""Checkpoint files: atomic Lightning checkpoints, safetensors exports, safe weight loading.

Lightning's local ``_atomic_save`` writes through an fsspec transaction whose temporary file lives
in the system temp folder: when that is another file system, the final move is a copy, and there
is no ``fsync``. :class:`AtomicCheckpointIO` writes ``<name>.tmp`` beside the target, syncs it and
``os.replace``-s it, so a killed job leaves either the old or the new ``last.ckpt``, never half.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import load_file, save_file
from torch import Tensor

_SAFE_GLOBALS = ("pathlib.PosixPath", "pathlib.WindowsPath", "argparse.Namespace",
                 "jsonargparse._namespace.Namespace", "lightning.fabric.utilities.data.AttributeDict")
"""Plain containers that checkpoint hyper-parameters may pickle besides our own config dataclasses."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a partial file at a local checkpoint path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save atomically (local paths); remote paths use Lightning's own writer."""
        fs = get_filesystem(path)
        if getattr(fs, "protocol", None) not in ("file", ("file", "local")) and "file" not in (fs.protocol or ()):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())


def export_safetensors(state: dict[str, Tensor], path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write weights as safetensors (atomically) with the run settings as JSON metadata ``config``."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = _save_bytes(tensors, {"config": json.dumps(config, default=str), "format": "pt"})
    atomic_write_bytes(path, data)
    return Path(path)


def _save_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _torch_load(path: Path) -> dict[str, Any]:
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    bad = [g for g in unsafe if not g.startswith("cyberhost.") and g not in _SAFE_GLOBALS]
    if bad:
        raise ValueError(f"checkpoint {path} pickles objects other than tensors and our configs: {bad[:5]}; refusing")
    allowed = []
    for name in unsafe:
        module, _, attr = name.rpartition(".")
        allowed.append(getattr(__import__(module, fromlist=[attr]), attr))
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_network_weights(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """Network state dict (keys as in ``CyberHost.state_dict()``) from a Lightning ckpt or a safetensors export.

    Args:
        path: ``.ckpt`` (keys ``model.*`` are used) or ``.safetensors``.
        what: the config key that named the file (for messages).

    Raises:
        FileNotFoundError: naming ``what`` when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint at {path} (a stage-1 last.ckpt or exported .safetensors)")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        ckpt = _torch_load(path)
        state = ckpt.get("state_dict", ckpt)
    if any(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return state


__all__ = ["AtomicCheckpointIO", "atomic_write_bytes", "export_safetensors", "load_network_weights", "save_file"]
