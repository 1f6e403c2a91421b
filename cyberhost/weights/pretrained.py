"""Pretrained folders (SD-1.5 UNet/VAE, AnimateDiff adapter, wav2vec2, ArcFace) read into network keys.

The network declares which of its parts come from which config path
(:func:`cyberhost.models.cyberhost.network_parts`: ``weights`` and ``folder`` of each part); a
:class:`Source` is one such folder with the parts it fills. :func:`read_source` reads it and
returns a state dict under the network's own names (the SD-1.5 UNet fills both ``reference_net.*``
and ``unet.*``; the adapter's motion modules land in ``unet.*.motion_modules.*``), after checking
that the folder holds the architecture the size builds (its ``config.json`` against the built
part's config, then every key and shape): the size registry fixes the architecture, so a
wav2vec2-large folder under ``size: sd15`` fails naming ``hidden_size``.

Nothing is downloaded: every path is local (README, "Pretrained weights"). No Lightning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cyberhost.models.cyberhost import CyberHost, Part, part_of

from .files import safe_torch_load

log = logging.getLogger(__name__)

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors",
                "pytorch_model.bin")
"""Weight files a diffusers/transformers folder may hold (the first found is read; ``*.index.json`` for sharded ones)."""
HINTS = {
    "sd15_path": "model.sd15_path must be a diffusers Stable Diffusion 1.5 directory",
    "motion_adapter_path": "model.motion_adapter_path must be a diffusers MotionAdapter directory, e.g. "
                           "animatediff-motion-adapter-v1-5-2",
    "wav2vec2_path": "model.wav2vec2_path must be a transformers wav2vec2 directory, e.g. wav2vec2-base-960h",
    "arcface_path": "set model.arcface_path to an insightface arcface_torch iresnet backbone.pth (or .safetensors), "
                    "or use face_encoder='conv'",
}
WHAT = {("sd15_path", "unet"): "SD-1.5 UNet", ("sd15_path", "vae"): "SD-1.5 VAE",
        ("motion_adapter_path", ""): "AnimateDiff motion adapter", ("wav2vec2_path", ""): "wav2vec2",
        ("arcface_path", ""): "ArcFace"}
WAV2VEC2_ARCH = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                 "layer_norm_eps", "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride",
                 "conv_kernel", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
                 "do_stable_layer_norm", "add_adapter")
"""wav2vec2 config fields that change the frozen encoder's weights or its eval-mode output (dropout and masking do not)."""
IGNORED_CONFIG = ("sample_size",)
"""diffusers config fields that only pipelines read (a default image size), not the network."""


class PretrainedMismatchError(ValueError):
    """A pretrained folder does not hold the architecture the network's size builds."""


@dataclass(frozen=True)
class Source:
    """One pretrained folder or file and the declared parts it fills.

    Attributes:
        field: the ``CyberHostConfig`` field naming it.
        folder: subfolder (SD-1.5's ``unet``/``vae``) or ``""``.
        path: the folder or file read.
        parts: the parts it fills.
    """

    field: str
    folder: str
    path: Path
    parts: tuple[Part, ...]

    @property
    def name(self) -> str:
        """``sd15_path/unet``, ``wav2vec2_path``, ... (for plans and messages)."""
        return f"{self.field}/{self.folder}" if self.folder else self.field

    @property
    def what(self) -> str:
        return WHAT.get((self.field, self.folder), self.name)


def sources(model: CyberHost) -> list[Source]:
    """The pretrained sources the model's config names (fields left at None are random init), in declaration order."""
    found: dict[tuple[str, str], list[Part]] = {}
    for part in model.parts:
        if part.weights and getattr(model.config, part.weights):
            found.setdefault((part.weights, part.folder), []).append(part)
    out = []
    for (name, folder), parts in found.items():
        path = Path(getattr(model.config, name))
        out.append(Source(name, folder, path / folder if folder else path, tuple(parts)))
    return out


def source_keys(model_keys: list[str], model: CyberHost, source: Source) -> set[str]:
    """The network keys ``source`` fills (those of its parts)."""
    return {k for k in model_keys if part_of(model.parts, k) in source.parts}


def check_source(source: Source) -> None:
    """Raise FileNotFoundError naming what is missing at the source's path (before anything is read)."""
    hint = HINTS.get(source.field, "")
    if source.field == "arcface_path":
        if not source.path.is_file():
            raise FileNotFoundError(f"ArcFace weights not found at {source.path}; {hint}")
        return
    if not source.path.is_dir():
        raise FileNotFoundError(f"{source.what}: directory {source.path} does not exist ({hint})")
    if not (source.path / "config.json").is_file():
        raise FileNotFoundError(f"{source.what}: {source.path / 'config.json'} is missing ({hint})")
    if _weight_files(source.path) is None:
        raise FileNotFoundError(f"{source.what}: no weights in {source.path} (looked for {', '.join(WEIGHT_FILES)} "
                                f"and their .index.json; {hint})")


def _weight_files(folder: Path) -> list[Path] | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    return None


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _compare(source: Source, theirs: Mapping[str, Any], ours: Mapping[str, Any], keys: Any, size: str) -> None:
    diff = [f"{k}={_plain(theirs[k])!r} (size {size!r} builds {_plain(ours[k])!r})" for k in keys
            if k in theirs and k in ours and _plain(theirs[k]) != _plain(ours[k])]
    if diff:
        raise PretrainedMismatchError(
            f"{source.what} at {source.path}: config.json has {'; '.join(diff[:6])}. The size registry "
            "(cyberhost/models/config.py SIZES) fixes each part's architecture; use the folder the size is made "
            f"for ({HINTS.get(source.field, '')}) or another model.size")


def _diffusers_state(source: Source, part: nn.Module, size: str) -> dict[str, Tensor]:
    """A diffusers folder's tensors with diffusers' own key fixes (old attention names), checked against ``part``."""
    from diffusers.models.model_loading_utils import load_state_dict

    theirs = json.loads((source.path / "config.json").read_text())
    ours = dict(part.config)
    _compare(source, theirs, ours, [k for k in theirs if not k.startswith("_") and k not in IGNORED_CONFIG], size)
    state: dict[str, Tensor] = {}
    for file in _weight_files(source.path) or []:
        state.update(load_state_dict(str(file)))
    part._fix_state_dict_keys_on_load(state)  # noqa: SLF001 -- what from_pretrained applies to old VAE attention names
    return state


def _read(model: CyberHost, source: Source) -> dict[str, Tensor]:
    """The source's tensors under the keys of the module its parts load into."""
    size = model.config.size
    if source.field == "sd15_path":
        return _diffusers_state(source, model.vae if source.folder == "vae" else model.reference_net, size)
    if source.field == "motion_adapter_path":
        from diffusers import MotionAdapter

        with torch.device("meta"):
            adapter = MotionAdapter(**model.config.spec.motion_adapter)
        return _diffusers_state(source, adapter, size)
    if source.field == "wav2vec2_path":
        from transformers import Wav2Vec2Model

        loaded = Wav2Vec2Model.from_pretrained(str(source.path), local_files_only=True)  # its key renames included
        ours = model.audio.wav2vec2.config
        _compare(source, loaded.config.to_dict(), ours.to_dict(), WAV2VEC2_ARCH, size)
        return dict(loaded.state_dict())
    if source.field == "arcface_path":
        if source.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(source.path))
        return safe_torch_load(source.path, mmap=True)
    raise ValueError(f"no reader for pretrained source {source.name}")


def read_source(model: CyberHost, source: Source, model_keys: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The source's tensors under network keys, checked key by key and shape by shape.

    Args:
        model: the network (any device, meta included: only its config and part configs are read).
        source: from :func:`sources`.
        model_keys: the network's state-dict keys and shapes.

    Raises:
        FileNotFoundError: naming the missing folder, ``config.json`` or weights.
        PretrainedMismatchError: another architecture (config fields), or keys/shapes that do not fit.
    """
    check_source(source)
    raw = _read(model, source)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in raw.items():
        for part in source.parts:  # the SD-1.5 UNet fills two parts: reference_net and unet
            name = f"{part.load_root}.{key}"
            if name in model_keys and part_of(model.parts, name) is part:
                out[name] = value
                used.add(key)
    unexpected = sorted(k for k in raw if k not in used)
    missing = sorted(source_keys(list(model_keys), model, source) - out.keys())
    shapes = sorted(f"{k}: file {tuple(v.shape)} vs network {model_keys[k]}" for k, v in out.items()
                    if tuple(v.shape) != tuple(model_keys[k]))
    if unexpected or missing or shapes:
        raise PretrainedMismatchError(
            f"{source.what} at {source.path} does not fit the {model.config.size!r} network: unexpected "
            f"{unexpected[:5]}, missing {missing[:5]}, mis-shaped {shapes[:5]} ({HINTS.get(source.field, '')})")
    log.info("%s: %d tensors from %s", source.name, len(out), source.path)
    return out


__all__ = ["PretrainedMismatchError", "Source", "check_source", "read_source", "source_keys", "sources"]
