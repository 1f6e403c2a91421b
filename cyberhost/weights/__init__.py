"""The weights room, free of Lightning: our checkpoint files, pretrained folders, and loading into a network.

* :mod:`cyberhost.weights.files`: read and write our checkpoints (Lightning ``.ckpt``, FSDP2
  folders, safetensors exports, EMA) with the unpickling allowlist
  (files are written through :func:`cyberhost.media.files.atomic_file`, the project's one atomic write).
* :mod:`cyberhost.weights.pretrained`: the pretrained folders the network's part declaration
  names (SD-1.5 UNet/VAE, AnimateDiff adapter, wav2vec2, ArcFace), read into network keys.
* :mod:`cyberhost.weights.network`: :func:`load_network` (pretrained folders, then a checkpoint,
  into a network built eagerly, on the meta device or sharded by FSDP2) and :func:`materialize`.

Training (``cyberhost.training``) and ``cyberhost generate`` both call these; the network itself
(``cyberhost.models``) reads no file. The file readers import no network code: ``network`` and
``pretrained`` (which build on ``cyberhost.models`` and diffusers) load on first use of one of
their names, so ``cyberhost evaluate`` reads its feature extractors through
:func:`safe_torch_load` without importing the denoiser.
"""

import importlib
from typing import Any

from .files import (
    DCP_METADATA,
    EMA_PREFIX,
    LIGHTNING_META,
    MODULE_PREFIX,
    STAND_INS,
    Checkpoint,
    SavedDict,
    SavedRecord,
    UnsafeCheckpointError,
    checkpoint_safe_globals,
    export_safetensors,
    load_distributed_state,
    load_network_weights,
    read_checkpoint,
    read_distributed,
    read_export,
    safe_torch_load,
    strip_module_prefix,
    with_ema,
)

_LAZY = {
    **dict.fromkeys(("LoadPlan", "WeightsMismatchError", "assign", "is_meta", "is_sharded", "load_network",
                     "materialize"), "network"),
    **dict.fromkeys(("PretrainedMismatchError", "Source", "read_source", "sources"), "pretrained"),
}


def __getattr__(name: str) -> Any:
    """The names of ``network`` and ``pretrained``, imported when first asked for (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Checkpoint", "DCP_METADATA", "EMA_PREFIX", "LIGHTNING_META", "LoadPlan", "MODULE_PREFIX",
    "PretrainedMismatchError", "STAND_INS", "SavedDict", "SavedRecord", "Source", "UnsafeCheckpointError",
    "WeightsMismatchError", "assign", "checkpoint_safe_globals",
    "export_safetensors", "is_meta", "is_sharded", "load_distributed_state", "load_network", "load_network_weights",
    "materialize", "read_checkpoint", "read_distributed", "read_export", "read_source", "safe_torch_load", "sources",
    "strip_module_prefix", "with_ema",
]  # fmt: skip
