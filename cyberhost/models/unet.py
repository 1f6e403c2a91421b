"""Run a diffusers SD-1.5 UNet (2D, stage 1) or UNetMotionModel (3D, stage 2) block by block.

CyberHost needs three things diffusers' ``forward`` does not offer: a time embedding that differs
per frame (hand clarity, Sec. 3.3), modules inserted between blocks (Region Codebook Attention
after chosen up blocks, Sec. 3.2), and one code path for both UNets, so that stage 2 starts exactly
where stage 1 ended. The loop below calls the diffusers blocks themselves (no copied layers); a
test compares it with ``UNet2DConditionModel.forward``.
"""

from __future__ import annotations

from collections.abc import Callable

from diffusers import UNet2DConditionModel, UNetMotionModel
from torch import Tensor

BlockHook = Callable[[str, Tensor], Tensor]


def time_embedding(unet: UNet2DConditionModel | UNetMotionModel, timesteps: Tensor) -> Tensor:
    """(B,) integer/float timesteps -> (B, D) time embedding."""
    t_emb = unet.time_proj(timesteps).to(dtype=unet.time_embedding.linear_1.weight.dtype)
    return unet.time_embedding(t_emb)


def run_unet(
    unet: UNet2DConditionModel | UNetMotionModel,
    sample: Tensor,
    emb: Tensor,
    context: Tensor,
    num_frames: int,
    hook: BlockHook | None = None,
) -> Tensor:
    """The UNet's forward from ``conv_in`` to ``conv_out`` with a per-frame embedding.

    Args:
        unet: a 2D or motion UNet (SD layout, no class/addition embeddings).
        sample: ``(B*F, C, h, w)`` input latents, frames of a sample adjacent.
        emb: ``(B*F, D)`` time embedding of every frame.
        context: ``(B*F, T, Dc)`` cross-attention tokens.
        num_frames: F (the temporal modules mix the F frames of each sample).
        hook: called as ``hook(name, x)`` after the mid block (``"mid"``) and each up block
            (``"up0"``...); returns the (modified) features.

    Returns:
        ``(B*F, C_out, h, w)``.
    """
    motion = isinstance(unet, UNetMotionModel)
    frames = {"num_frames": num_frames} if motion else {}
    factor = 2**unet.num_upsamplers
    forward_upsample = any(s % factor != 0 for s in sample.shape[-2:])

    x = unet.conv_in(sample)  # (BF, C0, h, w)
    skips: tuple[Tensor, ...] = (x,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context, **frames)
        else:
            x, res = block(hidden_states=x, temb=emb, **frames)
        skips += res
    if unet.mid_block is not None:
        mid_frames = frames if hasattr(unet.mid_block, "motion_modules") else {}
        x = unet.mid_block(x, emb, encoder_hidden_states=context, **mid_frames)
    if hook is not None:
        x = hook("mid", x)
    last = len(unet.up_blocks) - 1
    for i, block in enumerate(unet.up_blocks):
        res = skips[-len(block.resnets):]
        skips = skips[: -len(block.resnets)]
        upsample_size = skips[-1].shape[2:] if forward_upsample and i < last else None
        if getattr(block, "has_cross_attention", False):
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context,
                      upsample_size=upsample_size, **frames)
        else:
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size, **frames)
        if hook is not None:
            x = hook(f"up{i}", x)
    if unet.conv_norm_out is not None:
        x = unet.conv_act(unet.conv_norm_out(x))
    return unet.conv_out(x)


def stage_widths(unet: UNet2DConditionModel | UNetMotionModel) -> dict[str, int]:
    """Channels of the features after ``mid`` and each ``up{i}`` block."""
    channels = list(unet.config.block_out_channels)
    widths = {"mid": channels[-1]}
    for i, c in enumerate(reversed(channels)):
        widths[f"up{i}"] = c
    return widths


def check_plain_sd_unet(unet: UNet2DConditionModel) -> None:
    """Reject UNets with extras this runner does not drive (class/addition embeddings, ...)."""
    cfg = unet.config
    extras = {k: cfg.get(k) for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type",
                                      "num_class_embeds", "time_cond_proj_dim")}
    used = {k: v for k, v in extras.items() if v is not None}
    if used:
        raise ValueError(f"CyberHost drives SD-1.5-style UNets only; this UNet also uses {used}")
