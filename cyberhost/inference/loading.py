"""Build the trained network for generation from our checkpoint files (and, optionally, training YAMLs).

The files are read by :mod:`cyberhost.weights` (no Lightning, no training code): a Lightning
``.ckpt``, an FSDP2 checkpoint folder or a safetensors export. The EMA weights are used when the
file has them, unless ``prefer_ema=False`` (``generate --no-ema``).

The settings come from what the checkpoint records explicitly: the network config and the noise
schedule from the module's saved hyper-parameters (``model``, ``schedule``; an export's metadata
``config`` holds the same two), the clip transform and the buckets from its ``conditions`` record
(``transform``, ``buckets``), which is also handed on raw as :attr:`InferenceSettings.conditions`.
Training YAMLs given with ``--config`` are composed left to right (as LightningCLI does with
repeated ``--config``) and read at their LightningCLI paths (``model.init_args.model``,
``model.init_args.schedule``, ``data.init_args.transform``, ``data.init_args.buckets``; ``init_args``
may be left out); their keys win over the checkpoint's. Nothing is inferred from tensor shapes: a
checkpoint that records no network config needs the training YAML.

The network is built from that config on the meta device and filled by
:func:`cyberhost.weights.load_network`, the loader training uses: the checkpoint's tensors, and
pretrained folders only for parts the checkpoint lacks.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from cyberhost import weights
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.transforms import TransformConfig
from cyberhost.diffusion.schedule import ScheduleConfig
from cyberhost.models import CyberHost, CyberHostConfig
from cyberhost.weights import Checkpoint, SavedRecord, UnsafeCheckpointError, read_checkpoint

from .errors import CheckpointMismatchError, GenerateError

log = logging.getLogger(__name__)

_SECTIONS = {"model": ("model", "model"), "schedule": ("model", "schedule"), "transform": ("data", "transform"),
             "buckets": ("data", "buckets")}
"""Setting -> (LightningCLI group, argument) where a training YAML holds it."""


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
        conditions: the checkpoint's ``conditions`` record as saved (e.g. ``hand_clarity``, the
            trained mode); empty when the checkpoint has none.
        ema: whether EMA weights were loaded.
    """

    model: CyberHostConfig
    transform: TransformConfig = field(default_factory=TransformConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    source: str = "defaults"
    conditions: dict[str, Any] = field(default_factory=dict)
    ema: bool = False


# ----------------------------------------------------------------------------- settings


def _plain(obj: Any) -> Any:
    """Dataclasses, namespaces, records and tuples -> dicts and lists."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, argparse.Namespace | SavedRecord):
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


def yaml_sections(tree: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings a LightningCLI config tree holds (``model.init_args.model`` etc.), by :data:`_SECTIONS` name."""
    out = {}
    for name, (group, arg) in _SECTIONS.items():
        node = tree.get(group)
        node = node.get("init_args", node) if isinstance(node, Mapping) else None
        value = node.get(arg) if isinstance(node, Mapping) else None
        if isinstance(value, Mapping):
            out[name] = _plain(value)
    return out


def checkpoint_sections(ckpt: Checkpoint) -> dict[str, dict[str, Any]]:
    """The settings a checkpoint records: ``model``/``schedule`` of its config, ``transform``/``buckets`` of its conditions."""
    found = {"model": ckpt.config.get("model"), "schedule": ckpt.config.get("schedule"),
             "transform": ckpt.conditions.get("transform"), "buckets": ckpt.conditions.get("buckets")}
    out = {name: _plain(value) for name, value in found.items() if value is not None}
    return {name: value for name, value in out.items() if isinstance(value, dict)}


def _build(cls: type, section: dict[str, Any] | None, where: str) -> Any:
    values = {k: tuple(v) if isinstance(v, list) and k in ("movement_scale", "crop_scale") else v
              for k, v in (section or {}).items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise GenerateError(f"{where}: invalid {cls.__name__} {values}: {err}") from err


def build_settings(sections: Mapping[str, dict[str, Any]], where: str) -> InferenceSettings:
    """:class:`InferenceSettings` of the named sections (absent ones take the dataclass defaults)."""
    return InferenceSettings(
        model=_build(CyberHostConfig, sections["model"], where),
        transform=_build(TransformConfig, sections.get("transform"), where),
        schedule=_build(ScheduleConfig, sections.get("schedule"), where),
        buckets=_build(BucketConfig, sections.get("buckets"), where),
        source=where,
    )


# ----------------------------------------------------------------------------- checkpoint files


def read_for_generation(path: str | Path, trust: bool = False) -> Checkpoint:
    """:func:`cyberhost.weights.read_checkpoint` with errors as :class:`GenerateError` (what the user can fix).

    Raises:
        GenerateError: missing or unreadable file, or a pickle that is not allowed (unless ``trust``).
    """
    try:
        return read_checkpoint(path, trust)
    except FileNotFoundError:
        raise GenerateError(f"checkpoint {path} does not exist") from None
    except UnsafeCheckpointError as err:
        raise GenerateError(f"{err} If you made this file yourself, pass --trust-checkpoint.") from None
    except ValueError as err:
        raise GenerateError(str(err)) from err


def choose_weights(ckpt: Checkpoint, prefer_ema: bool) -> tuple[dict[str, Tensor], bool]:
    """The network weights of one file and whether they are the EMA ones (logged either way)."""
    use = prefer_ema and bool(ckpt.ema)
    try:
        state = ckpt.weights(ema=use)
    except ValueError as err:
        raise GenerateError(f"checkpoint {ckpt.path}: {err}") from err
    why = ("its EMA copy of the trainable weights" if use else "--no-ema; the checkpoint also has EMA weights"
           if ckpt.ema else "the checkpoint has no EMA copy")
    log.info("%s: %s weights (%s)", ckpt.path, "EMA" if use else "raw", why)
    return state, use


# ----------------------------------------------------------------------------- the network


def build_and_load(config: CyberHostConfig, state: Mapping[str, Tensor], where: str) -> CyberHost:
    """The network of ``config`` built on the meta device and filled by :func:`cyberhost.weights.load_network`.

    Pretrained folders are read only for parts the checkpoint lacks (the frozen VAE, wav2vec2 and
    ArcFace of an export); nothing is initialised at random, since every tensor is loaded.

    Raises:
        CheckpointMismatchError: missing, unexpected or mis-shaped keys (each named).
        GenerateError: a pretrained folder the checkpoint needs is missing or of another architecture.
    """
    with torch.device("meta"):
        model = CyberHost(config)
    try:
        weights.load_network(model, state, what=f"checkpoint {where}")
    except weights.WeightsMismatchError as err:
        raise CheckpointMismatchError(f"{err}. Pass the YAML(s) the checkpoint was trained with (--config).",
                                      err.missing, err.unexpected, err.mismatched) from err
    except (FileNotFoundError, weights.PretrainedMismatchError) as err:
        raise GenerateError(f"{err} (the checkpoint {where} lacks these weights; --set the local path)") from err
    return model


def load_model(
    checkpoint: str | Path | list[str | Path],
    configs: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    prefer_ema: bool = True,
) -> tuple[CyberHost, InferenceSettings]:
    """The trained network (eval mode, CPU, float32) and the settings it was trained with.

    Args:
        checkpoint: Lightning ``.ckpt``, FSDP2 checkpoint folder or exported ``.safetensors``; a list is
            merged left to right (e.g. a stage-1 export, then a stage-2 export of only the weights stage 2 trains).
        configs: training YAML(s), composed left to right; their settings win over the checkpoint's.
        overrides: :class:`CyberHostConfig` fields to replace (e.g. local pretrained paths).
        trust_checkpoint: allow a pickled ``.ckpt`` with arbitrary objects (files you made).
        prefer_ema: load the EMA weights when the checkpoint has them (False: the raw weights).

    Raises:
        GenerateError: no usable config, a stage-1 network, or unreadable files.
        CheckpointMismatchError: the tensors do not fit the config's network.
    """
    configs = list(configs)
    paths = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
    if not paths:
        raise GenerateError("no checkpoint given")
    state: dict[str, Tensor] = {}
    sections: dict[str, dict[str, Any]] = {}
    conditions: dict[str, Any] = {}
    used_ema = False
    for path in paths:
        ckpt = read_for_generation(path, trust_checkpoint)
        part, ema = choose_weights(ckpt, prefer_ema)
        state.update(part)
        used_ema |= ema
        sections.update(checkpoint_sections(ckpt))
        conditions = ckpt.conditions or conditions
    checkpoint = " + ".join(map(str, paths))
    where = f"checkpoint {checkpoint}"
    if configs:
        for name, value in yaml_sections(read_configs(configs)).items():
            sections[name] = _merge(sections.get(name, {}), value)
        where += " + " + " + ".join(map(str, configs))
    if "model" not in sections:
        raise GenerateError(f"no network config in {where} (the checkpoint saves no hyper-parameters and no --config "
                            "names model.init_args.model); pass the training YAML(s) with --config")
    unrecorded = [name for name in ("transform", "buckets") if name not in sections]
    if unrecorded:  # checkpoints written before the conditions record
        log.warning("%s records no %s: using the defaults; pass the training YAML(s) with --config if they differed",
                    where, " or ".join(unrecorded))
    settings = build_settings(sections, where)
    settings.conditions, settings.ema = dict(conditions), used_ema
    settings.model = _build(CyberHostConfig, {**asdict(settings.model), **(overrides or {})}, settings.source)
    if settings.model.stage != 2:
        raise GenerateError(f"{checkpoint} is a stage-{settings.model.stage} network; audio-driven generation needs "
                            "stage 2 (temporal modules, audio attention, RCA)")
    model = build_and_load(settings.model, state, str(checkpoint))
    model.eval().requires_grad_(False)
    return model, settings
