"""Conditions contract -> keyword arguments of :meth:`CyberHost.forward`: one function for training and generation.

:func:`network_inputs` is the only place that turns a batch of
:class:`~cyberhost.data.conditions.Conditions` into what the network reads: the reference net run
on the reference latent (plus the skeleton map and the motion-frame latents), the identity crops
with their validity masks, the driving map, the audio tokens, the hand clarity with its validity
mask and the CFG dropout flags. The training stages and ``cyberhost generate`` both call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cyberhost.data.transforms import to_maps, to_unit

from .graphs import PlannedForward

if TYPE_CHECKING:
    from cyberhost.data.conditions import Conditions

    from .cyberhost import CyberHost


def network_inputs(
    model: CyberHost,
    cond: Conditions,
    ref_latent: Tensor,
    motion_latents: Tensor | None = None,
    dropout: bool = True,
) -> dict[str, Any]:
    """Keyword arguments of ``model.forward`` besides noisy latents and timesteps.

    Args:
        model: the network of the stage.
        cond: batched conditions on the model's device.
        ref_latent: ``(B, 4, h, w)`` VAE latent of ``cond.reference``.
        motion_latents: ``(B, M, 4, h, w)`` latents of the motion frames (stage 2), or None.
        dropout: pass the conditions' CFG dropout flags (training); False conditions on everything
            (sampling, where the guidance branches set their own flags).
    """
    stage2 = model.config.stage == 2
    reference = model.encode_reference(
        ref_latent, to_maps(cond.reference_skeleton),
        motion_latents if stage2 else None,
        to_unit(cond.face_crop) if stage2 else None,
        to_unit(cond.hand_crops) if stage2 else None,
        face_valid=cond.face_crop_valid if stage2 else None,
        hand_valid=cond.hand_crops_valid if stage2 else None,
    )  # fmt: skip
    frames = cond.driving_map.shape[1]
    kwargs: dict[str, Any] = {"reference": reference, "driving_map": to_maps(cond.driving_map)}
    if stage2:
        kwargs["audio_tokens"] = model.encode_audio(cond.audio, frames)
        kwargs["hand_clarity"] = cond.hand_clarity.float()
        kwargs["hand_clarity_valid"] = cond.hand_clarity_valid
    if dropout:
        kwargs["drop_reference"] = cond.drop_reference
        if stage2:
            kwargs["drop_audio"] = cond.drop_audio
    return kwargs


def _repeat(value: Any, n: int) -> Any:
    """Repeat tensors (and the tensors inside dicts and dataclasses) ``n`` times along the batch."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Tensor):
        return value.repeat(n, *([1] * (value.dim() - 1)))
    if isinstance(value, dict):
        return {k: _repeat(v, n) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _repeat(getattr(value, f.name), n) for f in dataclasses.fields(value)})
    raise TypeError(f"cannot batch a {type(value).__name__}")


BRANCHES = ([False, True, True], [False, False, True])
"""(reference kept, audio kept) of the batched CFG branches: (-, -), (ref, -), (ref, audio)."""


def guided_denoiser(model: CyberHost, inputs: dict[str, Any], batched: bool = True,
                    audio: bool = True, cuda_graph: bool = False) -> Callable[[Tensor, Tensor, bool, bool], Tensor]:
    """A ``GuidedSampler`` denoiser ``(x_t, t, use_reference, use_audio) -> prediction`` over :func:`network_inputs`.

    Each CFG branch sets ``drop_reference`` / ``drop_audio`` exactly as condition dropout does in
    training. ``batched`` runs the three branches of a step -- (-, -), (ref, -), (ref, audio) -- as
    one batch of 3 when the sampler asks for (ref, audio) first, and serves the other two from it.

    Args:
        model: the network.
        inputs: :func:`network_inputs` with ``dropout=False``.
        batched: one batch of 3 per step instead of three calls.
        audio: False: the audio is dropped in every branch (no audio was given).
        cuda_graph: with ``batched``, replay the batch of 3 from a CUDA graph after the first
            call (on a CUDA device).

    Each branch (or the batch of 3) is planned at its first call and only predicted after
    (:class:`~cyberhost.models.graphs.PlannedForward`): the Pose Encoder and the other
    condition-only work run once per segment, so ``inputs`` must stay unchanged while the
    denoiser is in use.
    """
    inputs = {k: v for k, v in inputs.items() if k not in ("drop_reference", "drop_audio")}
    three = {k: _repeat(v, 3) for k, v in inputs.items()} if batched else None
    cache: dict[str, Any] = {}
    planned: dict[tuple[bool, bool] | None, PlannedForward] = {}  # per branch (None: the batch of 3)

    def flags(x: Tensor, ref: list[bool], aud: list[bool]) -> dict[str, Tensor]:
        b = x.shape[0] // len(ref)
        dev = x.device
        out = {"drop_reference": torch.tensor([not r for r in ref], device=dev).repeat_interleave(b)}
        if model.config.stage == 2:
            out["drop_audio"] = torch.tensor([not (a and audio) for a in aud], device=dev).repeat_interleave(b)
        return out

    def denoise(x: Tensor, t: Tensor, use_reference: bool, use_audio: bool) -> Tensor:
        if three is None:
            key = (use_reference, use_audio)
            if key not in planned:
                planned[key] = PlannedForward(model, {**inputs, **flags(x, [use_reference], [use_audio])})
            return planned[key](x, t)
        if use_reference and use_audio:
            x3, t3 = _repeat(x, 3), _repeat(t, 3)
            if None not in planned:
                planned[None] = PlannedForward(model, {**three, **flags(x3, *BRANCHES)}, cuda_graph)
            uncond, ref_only, full = planned[None](x3, t3).chunk(3)
            cache.update(x=x, outs={(False, False): uncond, (True, False): ref_only})
            return full
        if cache.get("x") is not x:
            raise RuntimeError("batched CFG expects the (reference, audio) branch first at every step")
        return cache["outs"][(use_reference, use_audio)]

    return denoise
