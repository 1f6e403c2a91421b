"""Attention processors that wire the reference net, motion frames and audio into diffusers UNets.

CyberHost (Sec. 3.1) injects the Reference Net's spatial self-attention features into the
denoising UNet's spatial self-attention (reference tokens appended to K/V, as in AnimateAnyone),
the motion-frame features into the temporal attention, and audio features through added
cross-attention layers. All of it goes through diffusers' attention-processor hook; no diffusers
file is copied.

The processors are plain objects (not ``nn.Module``): the trainable layers they use live in the
``CyberHost`` module tree, so ``state_dict``/FSDP see each parameter exactly once. They read the
per-call conditions from one shared :class:`InjectionState`, which the model fills before it runs
a UNet and which stays until the next call, so activation-checkpoint recomputation in backward
sees the same tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

_PLANNED = (  # the InjectionState attributes CyberHost.plan sets
    "batch", "reference_mode", "reference_groups", "reference_blocks", "audio", "drop_audio", "reference", "motion")


class InjectionState:
    """Conditions the processors read during one UNet call.

    Per-layer tensors are handed to each layer's processor (its ``tokens`` / ``recorded``
    attribute) rather than looked up by layer name inside the attention: a processor's code then
    reads nothing that differs between layers but tensors, so one compiled graph of a block serves
    every block of its shape (``cyberhost.models.compile``).

    Attributes:
        bank: written by the reference net: layer name -> attn1 input ``(N, L, C)`` (read-only view
            of what the recording processors hold; assign ``{}`` to forget it).
        reference: layer name -> reference tokens ``(B, L, C)`` for spatial self-attention.
        reference_mode: ``"kept"``, ``"dropped"`` or ``"mixed"``: whether the forward's ``drop_reference``
            keeps the reference of every sample, of none or of some. Decided once per forward by the
            model, so that the attention layers need no device-to-host read of ``drop_reference`` each.
        reference_groups: for ``"mixed"``: (kept sample indices ``(Bk,)``, their frame indices
            ``(Bk*F,)``, the dropped samples' frame indices, the permutation that puts
            ``cat(kept, dropped)`` frames back in batch order), on the device. Each group then runs
            its own unmasked SDPA: a boolean mask would rule out the flash kernel.
        reference_blocks: for a ``"mixed"`` batch whose dropped samples are one block and its kept
            ones another (sampling's batched CFG): ``(dropped first, dropped samples)``; the
            groups are then slices of the batch, with no gather in and out. None otherwise.
        motion: layer name -> motion-frame tokens ``(B, M, L, C)`` for temporal attention.
        audio: audio tokens ``(B*F, K, D)`` per frame.
        drop_audio: ``(B,)`` bool, True drops the audio for that sample; None = dropped for none.
        batch: B, samples in the call (the UNet batch is ``B*F``).
        recording: True while the reference net runs (its processors record their input).
    """

    def __init__(self) -> None:
        self.reference_mode = "kept"
        self.reference_groups: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self.reference_blocks: tuple[bool, int] | None = None
        self.audio: Tensor | None = None
        self.drop_audio: Tensor | None = None
        self.batch = 1
        self.recording = False
        self._tokens: dict[str, dict[str, Tensor] | None] = {"reference": None, "motion": None}
        self._readers: dict[str, list[_TokenReader]] = {"reference": [], "motion": []}
        self._recorders: list[RecordingProcessor] = []

    def register(self, kind: str, processor: _TokenReader) -> None:
        """A processor that reads ``kind`` (``"reference"`` or ``"motion"``) tokens of its layer ``source``."""
        self._readers[kind].append(processor)
        processor.tokens = None

    def _hand_out(self, kind: str, value: dict[str, Tensor] | None) -> None:
        """Keep ``value`` (layer name -> tokens) and give each ``kind`` reader the tokens of its layer."""
        self._tokens[kind] = value
        for proc in self._readers[kind]:
            proc.tokens = None if value is None else value.get(proc.source)

    @property
    def reference(self) -> dict[str, Tensor] | None:
        return self._tokens["reference"]

    @reference.setter
    def reference(self, value: dict[str, Tensor] | None) -> None:
        self._hand_out("reference", value)

    @property
    def motion(self) -> dict[str, Tensor] | None:
        return self._tokens["motion"]

    @motion.setter
    def motion(self, value: dict[str, Tensor] | None) -> None:
        self._hand_out("motion", value)

    @property
    def bank(self) -> dict[str, Tensor]:
        return {p.name: p.recorded for p in self._recorders if p.recorded is not None}

    @bank.setter
    def bank(self, value: dict[str, Tensor]) -> None:
        if value:
            raise ValueError("the bank is written by the recording processors; assign {} to clear it")
        for proc in self._recorders:
            proc.recorded = None

    def clear(self) -> None:
        """Forget every tensor (call when no backward will follow, e.g. after sampling)."""
        self.bank = {}
        self.reference = self.motion = None
        self.audio = self.drop_audio = self.reference_groups = self.reference_blocks = None
        self.reference_mode = "kept"

    def planned(self) -> dict[str, object]:
        """What a forward's planning set (``CyberHost.plan``); :meth:`restore` puts it back."""
        return {name: getattr(self, name) for name in _PLANNED}

    def restore(self, planned: dict[str, object]) -> None:
        """Put back what :meth:`planned` returned (a later forward's planning replaced it)."""
        for name, value in planned.items():
            setattr(self, name, value)

    def set_drop_reference(self, drop: Tensor | None, frames: int, host: Tensor | None = None) -> None:
        """Decide :attr:`reference_mode` / :attr:`reference_groups` from ``drop`` (``(B,)`` bool, True drops it).

        One device-to-host read per forward, not one per attention layer; ``host``, a CPU copy of
        ``drop`` the caller already read, saves even that one.
        """
        self.reference_groups, self.reference_blocks, self.reference_mode = None, None, "kept"
        if drop is None:
            return
        keep = ~(drop.detach().to("cpu", torch.bool) if host is None else host.to(torch.bool))
        kept = int(keep.sum())
        self.reference_mode = "kept" if kept == keep.numel() else "dropped" if kept == 0 else "mixed"
        if self.reference_mode == "mixed":
            dropped = int((~keep).sum())
            flags = keep.tolist()
            if flags == [False] * dropped + [True] * kept or flags == [True] * kept + [False] * dropped:
                self.reference_blocks = (not flags[0], dropped)
                return
            per = torch.arange(frames)
            keep_s, drop_s = keep.nonzero().flatten(), (~keep).nonzero().flatten()
            keep_f, drop_f = (keep_s[:, None] * frames + per).flatten(), (drop_s[:, None] * frames + per).flatten()
            inverse = torch.argsort(torch.cat([keep_f, drop_f]))
            self.reference_groups = tuple(t.to(drop.device, non_blocking=True)
                                          for t in (keep_s, keep_f, drop_f, inverse))


def _heads(x: Tensor, heads: int) -> Tensor:
    """(N, L, H*D) -> (N, H, L, D)."""
    n, length, dim = x.shape
    return x.view(n, length, heads, dim // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(N, H, L, D) -> (N, L, H*D)."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)


def _check_plain(attn: Attention) -> None:
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection:
        raise ValueError("CyberHost processors expect SD-style attention (no group/spatial norm, no residual)")


def sdpa(attn: Attention, query_in: Tensor, kv_in: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention of ``attn``'s projections with ``F.scaled_dot_product_attention``.

    Args:
        attn: a diffusers ``Attention`` (its ``to_q/to_k/to_v/to_out`` are used).
        query_in: ``(N, Lq, C)``.
        kv_in: ``(N, Lk, Ckv)``, or ``(1, Lk, Ckv)`` for tokens shared by every query row (a
            codebook): then K/V are projected once and broadcast, not once per row.
        mask: optional bool ``(N, 1, 1, Lk)``, True = attend.

    Returns:
        ``(N, Lq, C)`` after the output projection.
    """
    q = _heads(attn.to_q(query_in), attn.heads)  # (N, H, Lq, D)
    k = _heads(attn.to_k(kv_in), attn.heads)  # (N or 1, H, Lk, D)
    v = _heads(attn.to_v(kv_in), attn.heads)
    if k.shape[0] != q.shape[0]:
        k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
    out = _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))  # (N, Lq, H*D)
    return attn.to_out[1](attn.to_out[0](out.to(q.dtype)))


class PlainProcessor:
    """SDPA attention with nothing added (used where CyberHost injects nothing)."""

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **_: object) -> Tensor:
        _check_plain(attn)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return sdpa(attn, hidden_states, context)


class RecordingProcessor(PlainProcessor):
    """Reference-net spatial self-attention: computes as usual and records its input tokens."""

    def __init__(self, state: InjectionState, name: str) -> None:
        self.state, self.name = state, name
        self.recorded: Tensor | None = None
        state._recorders.append(self)

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **_: object) -> Tensor:
        if self.state.recording:
            self.recorded = hidden_states  # (N, L, C)
        return super().__call__(attn, hidden_states)


class _TokenReader:
    """A processor fed its layer's tokens by :class:`InjectionState` (``tokens``, from layer ``source``)."""

    source: str
    tokens: Tensor | None


class ReferenceSelfAttnProcessor(_TokenReader):
    """Denoiser spatial self-attention with the reference tokens appended to K and V (Sec. 3.1).

    K/V of the reference are projected once per sample and shared by its ``F`` frames.
    """

    def __init__(self, state: InjectionState, name: str) -> None:
        self.state, self.source = state, name
        state.register("reference", self)

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **_: object) -> Tensor:
        _check_plain(attn)
        ref = self.tokens
        if ref is None or self.state.reference_mode == "dropped":
            return sdpa(attn, hidden_states, hidden_states)
        if self.state.reference_mode == "kept":
            return _attend_with_reference(attn, hidden_states, ref)
        if self.state.reference_blocks is not None:  # [dropped | kept] or [kept | dropped]: slices
            dropped_first, dropped = self.state.reference_blocks
            frames = hidden_states.shape[0] // ref.shape[0]
            if dropped_first:
                head, tail = hidden_states[: dropped * frames], hidden_states[dropped * frames :]
                return torch.cat([sdpa(attn, head, head), _attend_with_reference(attn, tail, ref[dropped:])])
            split = (ref.shape[0] - dropped) * frames
            head, tail = hidden_states[:split], hidden_states[split:]
            return torch.cat([_attend_with_reference(attn, head, ref[: ref.shape[0] - dropped]), sdpa(attn, tail, tail)])
        keep_s, keep_f, drop_f, inverse = self.state.reference_groups  # a batch mixing kept and dropped references
        kept = _attend_with_reference(attn, hidden_states[keep_f], ref[keep_s])  # (Bk*F, L, C)
        dropped = sdpa(attn, hidden_states[drop_f], hidden_states[drop_f])  # (Bd*F, L, C)
        return torch.cat([kept, dropped])[inverse]  # (BF, L, C) in batch order


def _attend_with_reference(attn: Attention, hidden_states: Tensor, ref: Tensor) -> Tensor:
    """Self-attention of ``(B*F, L, C)`` frames whose K/V also hold their sample's ``(B, Lr, C)`` reference."""
    frames = hidden_states.shape[0] // ref.shape[0]
    q = _heads(attn.to_q(hidden_states), attn.heads)  # (BF, H, L, D)
    k_self = _heads(attn.to_k(hidden_states), attn.heads)
    v_self = _heads(attn.to_v(hidden_states), attn.heads)
    k_ref = _heads(attn.to_k(ref), attn.heads).repeat_interleave(frames, 0)  # (BF, H, Lr, D)
    v_ref = _heads(attn.to_v(ref), attn.heads).repeat_interleave(frames, 0)
    k = torch.cat([k_self, k_ref], dim=2)  # (BF, H, L + Lr, D)
    v = torch.cat([v_self, v_ref], dim=2)
    out = _merge(F.scaled_dot_product_attention(q, k, v)).to(q.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class AddedCrossAttention(nn.Module):
    """A cross-attention whose output projection starts at zero, so adding it is a no-op at init.

    Args:
        query_dim: width of the attending features.
        context_dim: width of the attended tokens.
        heads: attention heads.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        heads = max(1, min(heads, query_dim))
        self.attn = Attention(query_dim, cross_attention_dim=context_dim, heads=heads,
                              dim_head=query_dim // heads, processor=PlainProcessor())
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """(N, L, C), (N, K, Ck) and an optional bool key mask (N, 1, 1, K), True = attend -> (N, L, C)."""
        return sdpa(self.attn, x, context, mask)


class AudioCrossAttnProcessor:
    """Spatial cross-attention (text slot) plus the CyberHost audio attention of each frame.

    ``out = Attn(x, text) + (1 - drop) * AudioAttn(x, audio_tokens_of_frame)`` with the audio layer's output
    projection zero-initialised; dropped samples get exactly the audio-free output.
    """

    def __init__(self, state: InjectionState, layer: AddedCrossAttention) -> None:
        self.state, self.layer = state, layer

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **_: object) -> Tensor:
        _check_plain(attn)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = sdpa(attn, hidden_states, context)  # (BF, L, C)
        audio = self.state.audio
        if audio is None:
            return out
        audio_out = self.layer(hidden_states, audio.to(hidden_states.dtype))  # (BF, L, C)
        drop = self.state.drop_audio
        if drop is not None:
            frames = hidden_states.shape[0] // drop.shape[0]
            audio_out = audio_out * (~drop).to(audio_out.dtype).repeat_interleave(frames).view(-1, 1, 1)
        return out + audio_out


class MotionFrameAttnProcessor(_TokenReader):
    """Temporal self-attention of an AnimateDiff module plus attention to the motion frames.

    The temporal sequence of each pixel ``(B*H*W, F, C)`` also attends to the reference net's
    features of the same pixel in the ``M`` motion frames, through an added zero-initialised layer
    (so a pretrained AnimateDiff module is unchanged at init).
    """

    def __init__(self, state: InjectionState, source: str, layer: AddedCrossAttention) -> None:
        self.state, self.source, self.layer = state, source, layer
        state.register("motion", self)

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **_: object) -> Tensor:
        _check_plain(attn)
        out = sdpa(attn, hidden_states, hidden_states)  # (B*HW, F, C)
        motion = self.tokens
        if motion is None:
            return out
        b, m, length, c = motion.shape  # (B, M, HW, C)
        tokens = motion.permute(0, 2, 1, 3).reshape(b * length, m, c)  # (B*HW, M, C), pixel order as AnimateDiff
        if tokens.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"motion frames have {length} tokens per frame, the temporal layer {hidden_states.shape[0] // b}")
        return out + self.layer(hidden_states, tokens.to(hidden_states.dtype))


def motion_source_name(temporal_name: str, spatial_names: set[str]) -> str | None:
    """The reference-net layer whose features feed a temporal layer, or None.

    ``down_blocks.1.motion_modules.0.transformer_blocks.0.attn1`` reads
    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1`` (same resolution and width).
    """
    parts = temporal_name.split(".")
    i = parts.index("motion_modules")
    candidate = ".".join([*parts[:i], "attentions", parts[i + 1], "transformer_blocks", "0", "attn1"])
    return candidate if candidate in spatial_names else None


def layer_key(name: str) -> str:
    """A ``ModuleDict`` key for a dotted layer name."""
    return name.replace(".", "__")


def sinusoid(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of the last axis of ``x``: ``(..., ) -> (..., dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[..., None] * freqs
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
