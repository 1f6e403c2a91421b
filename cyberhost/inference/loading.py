"""Build the trained network for generation from a checkpoint and the training config.

Two checkpoint kinds are read:

* a Lightning ``.ckpt``: loaded with ``torch.load(weights_only=True)``. When its saved
  hyper-parameters hold our own config dataclasses, exactly those ``cyberhost.*`` classes (and a
  few plain containers) are allow-listed, nothing else; any other pickled global is refused with
  its name unless the user says the file is theirs (``trust_checkpoint``).
* a ``.safetensors`` export (no code can run from it); a ``config`` entry of its metadata, when
  present, is read like the hyper-parameters of a ``.ckpt``.

The settings (network config, clip/transform config, noise schedule, resolution buckets) come
from the training YAML(s) when given (composed left to right, as LightningCLI does with repeated
``--config``), else from the checkpoint. They are found by *shape*, not by path: the first
mapping anywhere in the tree whose keys are fields of :class:`CyberHostConfig` (and that names a
``size`` or ``stage``) is the network config, and likewise for the other dataclasses. This keeps
generation independent of how the training module nests its arguments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from cyberhost.data.buckets import BucketConfig
from cyberhost.data.transforms import TransformConfig
from cyberhost.diffusion.schedule import ScheduleConfig
from cyberhost.models import CyberHost, CyberHostConfig

from .errors import CheckpointMismatchError, GenerateError

log = logging.getLogger(__name__)

_ANCHOR = "text_context"
"""A top-level parameter of :class:`CyberHost`; finds the key prefix of a state dict."""
_PRETRAINED_PARTS = {
    "sd15_path": ("vae.", "unet.", "reference_net."),
    "motion_adapter_path": ("unet.",),
    "wav2vec2_path": ("audio.wav2vec2.",),
    "arcface_path": ("face_encoder.",),
}
"""Config path field -> state-dict prefixes of the parts built from it."""
_FROZEN_FROM_PATH = {"sd15_path": "vae.", "wav2vec2_path": "audio.wav2vec2.", "arcface_path": "face_encoder."}
"""Config path field -> the frozen part it loads (those keys may be absent from a checkpoint)."""


@dataclass
class InferenceSettings:
    """What generation takes over from training.

    Attributes:
        model: the network config (must be stage 2 for audio-driven generation).
        transform: clip settings: fps, frames per clip (segment length), motion frames, movement
            map and crop settings, confidence threshold.
        schedule: the noise schedule (prediction type, betas).
        buckets: training resolutions; the output size is the bucket nearest the reference's aspect.
        source: where the settings were read (for messages).
    """

    model: CyberHostConfig
    transform: TransformConfig = field(default_factory=TransformConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    source: str = "defaults"


# ----------------------------------------------------------------------------- config trees


def _plain(obj: Any) -> Any:
    """Dataclasses, namespaces and tuples -> dicts and lists (for the shape search)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if hasattr(obj, "__dict__") and type(obj).__name__ in ("Namespace", "AttributeDict"):
        return {str(k): _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def read_configs(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Compose YAML files left to right (later keys win, mappings merge).

    Raises:
        GenerateError: a file is missing or is not a YAML mapping.
    """
    tree: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise GenerateError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping):
            raise GenerateError(f"config file {path} is not a YAML mapping")
        tree = _merge(tree, data)
    return tree


def find_section(tree: Any, cls: type, marks: tuple[str, ...]) -> dict[str, Any] | None:
    """First mapping (depth first) whose keys are all fields of ``cls`` and include one of ``marks``."""
    names = {f.name for f in fields(cls)}
    if isinstance(tree, Mapping):
        keys = set(tree)
        if keys and keys <= names and keys & set(marks):
            return dict(tree)
        for value in tree.values():
            found = find_section(value, cls, marks)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for value in tree:
            found = find_section(value, cls, marks)
            if found is not None:
                return found
    return None


def _build(cls: type, section: dict[str, Any] | None, where: str) -> Any:
    values = {k: tuple(v) if isinstance(v, list) and k in ("movement_scale", "crop_scale") else v
              for k, v in (section or {}).items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise GenerateError(f"{where}: invalid {cls.__name__} {values}: {err}") from err


def settings_from_tree(tree: Any, where: str) -> InferenceSettings | None:
    """Settings found in a config tree, or None when it holds no network config."""
    tree = _plain(tree)
    model = find_section(tree, CyberHostConfig, ("size", "stage"))
    if model is None:
        return None
    return InferenceSettings(
        model=_build(CyberHostConfig, model, where),
        transform=_build(TransformConfig, find_section(tree, TransformConfig, ("fps", "num_frames", "num_motion")), where),
        schedule=_build(ScheduleConfig, find_section(tree, ScheduleConfig, ("prediction_type", "zero_terminal_snr")), where),
        buckets=_build(BucketConfig, find_section(tree, BucketConfig, ("area", "sizes")), where),
        source=where,
    )


# ----------------------------------------------------------------------------- checkpoint files


def _torch_load(path: Path, trust: bool) -> dict[str, Any]:
    """Tensors and our config types only (the training side's allowlist); anything else needs ``trust``."""
    from cyberhost.training.checkpoints import UnsafeCheckpointError, safe_torch_load

    try:
        return safe_torch_load(path)
    except UnsafeCheckpointError as err:
        if not trust:
            raise GenerateError(f"{err} If you made this file yourself, pass --trust-checkpoint.") from None
    log.warning("loading %s with weights_only=False (--trust-checkpoint)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: str | Path, trust: bool = False) -> tuple[dict[str, Tensor], Any]:
    """Tensors and saved hyper-parameters of a ``.ckpt``/``.pt`` or ``.safetensors`` file.

    Returns:
        ``(state_dict, hparams)``; ``hparams`` is None when the file has none.

    Raises:
        GenerateError: missing file, unreadable file, or a pickle that is not allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise GenerateError(f"cannot read safetensors checkpoint {path}: {err}") from err
        hparams = None
        for key in ("config", "hparams", "hyper_parameters"):
            if key in meta:
                hparams = json.loads(meta[key])
                break
        return state, hparams
    try:
        ckpt = _torch_load(path, trust)
    except GenerateError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise GenerateError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, Mapping):
        raise GenerateError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of tensors")
    if "state_dict" in ckpt:
        return dict(ckpt["state_dict"]), {k: v for k, v in ckpt.items() if k in ("hyper_parameters", "datamodule_hyper_parameters")}
    return {k: v for k, v in ckpt.items() if isinstance(v, Tensor)}, None


def strip_prefix(state: Mapping[str, Tensor], prefer_ema: bool = True) -> dict[str, Tensor]:
    """Keys of the network inside a module's state dict (``model.unet...`` -> ``unet...``).

    The prefix is read off the key that ends in the network's top-level ``text_context``; when
    an EMA copy exists too (a prefix containing ``ema``), it is preferred unless ``prefer_ema``
    is False. Keys outside the chosen prefix are dropped (optimiser-free Lightning extras, the
    other copy).
    """
    prefixes = sorted({k[: -len(_ANCHOR)] for k in state if k == _ANCHOR or k.endswith("." + _ANCHOR)}, key=len)
    if not prefixes:
        return dict(state)
    ema = [p for p in prefixes if "ema" in p.lower()]
    plain = [p for p in prefixes if p not in ema]
    prefix = (ema if prefer_ema and ema else plain or ema)[0]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- the network


def _covered(state: Mapping[str, Tensor], parts: tuple[str, ...]) -> bool:
    return all(any(k.startswith(p) for k in state) for p in parts)


def check_and_load(model: CyberHost, state: Mapping[str, Tensor], where: str) -> None:
    """Load ``state`` into ``model`` or raise naming every missing, unexpected and mis-shaped key.

    Keys of pretrained, frozen parts that the config builds from a local path may be absent.

    Raises:
        CheckpointMismatchError: the tensors do not fit the network of the config.
    """
    own = model.state_dict()
    from_paths = tuple(p for name, p in _FROZEN_FROM_PATH.items() if getattr(model.config, name))
    missing = sorted(k for k in own if k not in state and not k.startswith(from_paths))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")

        parts = [f"{len(v)} {name} key(s): {show(v)}" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)) if v]
        raise CheckpointMismatchError(
            f"checkpoint {where} does not fit the network of the config "
            f"(size={model.config.size!r}, stage={model.config.stage}): " + "; ".join(parts)
            + ". Pass the YAML(s) the checkpoint was trained with (--config).", missing, unexpected, mismatched)
    model.load_state_dict(state, strict=False)


def load_model(
    checkpoint: str | Path | list[str | Path],
    configs: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    prefer_ema: bool = True,
) -> tuple[CyberHost, InferenceSettings]:
    """The trained network (eval mode, CPU, float32) and the settings it was trained with.

    Args:
        checkpoint: Lightning ``.ckpt`` or exported ``.safetensors``; a list is merged left to right
            (e.g. a stage-1 export, then a stage-2 export of only the weights stage 2 trains).
        configs: training YAML(s); when empty the checkpoint's saved hyper-parameters are used.
        overrides: :class:`CyberHostConfig` fields to replace (e.g. local pretrained paths).
        trust_checkpoint: allow a pickled ``.ckpt`` with arbitrary objects (files you made).
        prefer_ema: load the EMA weights when the checkpoint has them.

    Raises:
        GenerateError: no usable config, a stage-1 network, or unreadable files.
        CheckpointMismatchError: the tensors do not fit the config's network.
    """
    configs = list(configs)
    paths = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
    if not paths:
        raise GenerateError("no checkpoint given")
    state: dict[str, Tensor] = {}
    hparams = None
    for path in paths:
        part, saved = read_checkpoint(path, trust_checkpoint)
        state.update(strip_prefix(part, prefer_ema))
        hparams = saved if saved is not None else hparams
    checkpoint = " + ".join(map(str, paths))
    settings = (settings_from_tree(read_configs(configs), " + ".join(map(str, configs))) if configs
                else settings_from_tree(hparams, f"{checkpoint} (saved hyper-parameters)") if hparams is not None else None)
    if settings is None:
        where = "the given --config files" if configs else f"checkpoint {checkpoint}"
        raise GenerateError(f"no network config (a mapping with 'size'/'stage') found in {where}; pass the training "
                            "YAML(s) with --config")
    cfg = asdict(settings.model)
    cfg.update(overrides or {})
    for name, parts in _PRETRAINED_PARTS.items():  # weights in the checkpoint need no local pretrained directory
        if cfg.get(name) and name not in (overrides or {}) and _covered(state, parts):
            cfg[name] = None
    settings.model = _build(CyberHostConfig, cfg, settings.source)
    if settings.model.stage != 2:
        raise GenerateError(f"{checkpoint} is a stage-{settings.model.stage} network; audio-driven generation needs "
                            "stage 2 (temporal modules, audio attention, RCA)")
    model = CyberHost(settings.model)
    check_and_load(model, state, str(checkpoint))
    model.eval().requires_grad_(False)
    return model, settings
