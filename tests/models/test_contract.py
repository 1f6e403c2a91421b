"""Every part of ``cyberhost/models`` under the one shared contract of ``contract.py`` (STYLE.md #15), tiny size.

The table below lists each part with its inputs and output shapes; each ``check_*`` of the contract
runs on each part it applies to (activation checkpointing only where the part has it, the batch
check where the part has per-sample inputs). Part-specific behaviour (zero init, receptive fields,
masks, pretrained loading) is tested in ``test_parts.py`` and ``test_cyberhost.py``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from cyberhost.models import SIZES, CyberHost, CyberHostConfig
from cyberhost.models.arcface import IResNet
from cyberhost.models.attention import (
    AddedCrossAttention,
    AudioCrossAttnProcessor,
    InjectionState,
    MotionFrameAttnProcessor,
    PlainProcessor,
    ReferenceSelfAttnProcessor,
)
from cyberhost.models.audio import AudioEncoder, AudioProjection
from cyberhost.models.encoders import ConvFaceEncoder, HandClarityEmbedding, HandEncoder, PoseEncoder
from cyberhost.models.rca import Codebook, HeatmapHead, RegionCodebookAttention
from cyberhost.models.unet import run_unet, time_embedding

from .conftest import LATENT, inputs, run
from .contract import CHECKS, Part, applies, freeze_half

SPEC = SIZES["tiny"]
B, F, M = 2, 3, 2  # samples, frames, motion frames
WIDTH = SPEC.unet["block_out_channels"][0]  # 32: the first stage's width (RCA, attention layers)
CROSS = SPEC.unet["cross_attention_dim"]
TEMB = 4 * WIDTH  # diffusers' time-embedding width


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g)


# ----------------------------------------------------------------------------- processors in a module


class ReferenceSelfAttention(nn.Module):
    """A diffusers ``Attention`` run by :class:`ReferenceSelfAttnProcessor` (the denoiser's spatial self-attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = InjectionState()
        self.attn = Attention(WIDTH, heads=4, dim_head=WIDTH // 4,
                              processor=ReferenceSelfAttnProcessor(self.state, "l"))

    def forward(self, x: Tensor, reference: Tensor, drop_reference: Tensor) -> Tensor:
        self.state.reference = {"l": reference}
        self.state.set_drop_reference(drop_reference, x.shape[0] // reference.shape[0])
        return self.attn(x)


class AudioCrossAttention(nn.Module):
    """A cross-attention run by :class:`AudioCrossAttnProcessor`: text slot plus the frame's audio tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.state = InjectionState()
        self.audio = AddedCrossAttention(WIDTH, CROSS, SPEC.rca_heads)
        self.attn = Attention(WIDTH, cross_attention_dim=CROSS, heads=4, dim_head=WIDTH // 4,
                              processor=AudioCrossAttnProcessor(self.state, self.audio))

    def forward(self, x: Tensor, text: Tensor, audio: Tensor, drop_audio: Tensor) -> Tensor:
        self.state.audio, self.state.drop_audio = audio.flatten(0, 1), drop_audio  # (B*F, K, D)
        return self.attn(x, encoder_hidden_states=text)


class MotionFrameAttention(nn.Module):
    """A temporal self-attention run by :class:`MotionFrameAttnProcessor`, attending to the motion frames too."""

    def __init__(self) -> None:
        super().__init__()
        self.state = InjectionState()
        self.motion = AddedCrossAttention(WIDTH, WIDTH, SPEC.rca_heads)
        self.attn = Attention(WIDTH, heads=4, dim_head=WIDTH // 4,
                              processor=MotionFrameAttnProcessor(self.state, "src", self.motion))

    def forward(self, x: Tensor, motion: Tensor) -> Tensor:
        self.state.motion = {"src": motion}
        return self.attn(x)


# ----------------------------------------------------------------------------- UNets and whole networks


def _plain_unet() -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**SPEC.unet)
    unet.set_attn_processor(PlainProcessor())
    return unet


def _motion_unet() -> UNetMotionModel:
    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**SPEC.unet), MotionAdapter(**SPEC.motion_adapter))
    unet.set_attn_processor(PlainProcessor())
    return unet


def _unet_inputs(frames: int) -> object:
    def make(g: torch.Generator) -> dict[str, Tensor]:
        return {"x": _randn(g, B * frames, 4, LATENT, LATENT), "t": torch.randint(0, 1000, (B,), generator=g),
                "context": _randn(g, B * frames, 3, CROSS)}  # > 1 token: one key would leave attn2's q/k inert
    return make


def _run_unet(frames: int) -> object:
    def call(unet: nn.Module, x: dict[str, Tensor]) -> Tensor:
        emb = time_embedding(unet, x["t"]).repeat_interleave(frames, 0)
        return run_unet(unet, x["x"], emb, x["context"], frames)
    return call


def _unet_checkpointing(unet: nn.Module, enabled: bool) -> None:
    if enabled:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()


def _cyberhost(stage: int, **kwargs: object) -> object:
    return lambda: CyberHost(CyberHostConfig(size="tiny", stage=stage, **kwargs))


def _network_inputs(stage: int, **extra: object) -> object:
    def make(g: torch.Generator) -> dict[str, Tensor]:
        return {**inputs(stage, batch=B, frames=F, motion=M, seed=int(torch.randint(0, 2**31, (1,), generator=g))),
                **extra}
    return make


def _whole(model: CyberHost, x: dict[str, Tensor]) -> object:
    flags = {k: x[k] for k in ("drop_reference", "drop_audio") if k in x}
    return run(model, {k: v for k, v in x.items() if k not in flags}, **flags)[0]


def _reference(model: CyberHost, x: dict[str, Tensor]) -> object:
    return model.encode_reference(x["ref_latents"], x["ref_skeleton"], x.get("motion"), x.get("face"), x.get("hands"),
                                  face_valid=x.get("face_valid"), hand_valid=x.get("hand_valid"))


def _network_checkpointing(model: nn.Module, enabled: bool) -> None:
    model.enable_gradient_checkpointing(enabled)


SPATIAL = {  # the tiny reference net's spatial self-attention inputs: (B, h*w, C)
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1": (B, LATENT**2, 32),
    "mid_block.attentions.0.transformer_blocks.0.attn1": (B, (LATENT // 2) ** 2, 64),
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1": (B, LATENT**2, 32),
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1": (B, LATENT**2, 32),
}
LATENT_SHAPE = (B, F, 4, LATENT, LATENT)
HAND_TOKENS = 2 * 4**2  # two hands, a 4x4 grid each
STAGE2_ONLY = ("unet.", "pose_encoder.", "audio.", "audio_layers.", "motion_layers.", "face_rca.", "hand_rca.",
               "heatmap_heads.", "clarity.")
"""What :meth:`CyberHost.encode_reference` does not reach (the denoiser side)."""
STAGE2_OUTPUTS = {
    "sample": LATENT_SHAPE,
    "face_masks.0": (B, F, 1, LATENT, LATENT),  # face RCA after up1
    "hand_masks.0": (B, F, 1, LATENT, LATENT),  # hand RCAs after up0 (which ends upsampled) and up1
    "hand_masks.1": (B, F, 1, LATENT, LATENT),
    "heatmaps.0": (B, F, 42, LATENT, LATENT),
    "heatmaps.1": (B, F, 42, LATENT, LATENT),
}
TEXT_QK = r"attentions\.\d+\.transformer_blocks\.\d+\.attn2\.to_[qk]\."
TEXT_NORM = r"attentions\.\d+\.transformer_blocks\.\d+\.norm2\."
"""With ``text_tokens=1`` (the default) every spatial cross-attention ``attn2`` has one key: its softmax is 1
whatever the query, so ``attn2.to_q/to_k`` -- and ``norm2`` where it feeds only that query (everywhere
but the stage-2 denoiser, whose audio attention reads it too) -- get no gradient (rounding only, ~1e-13)."""
ONE_TEXT_TOKEN = (TEXT_QK, TEXT_NORM)
NETWORK_BF16_TOL = 0.03
"""bf16 tolerance of the UNets and whole networks (measured 1.1-1.5 %: rounding accumulates over the blocks)."""
SELECTED = [r"^unet\.up_blocks\.1\.", "motion_modules", r"^hand_rca\."]
NETWORK_INPUTS = ("ref_latents", "ref_skeleton", "noisy", "driving_map", "motion", "face", "hands", "audio", "clarity")


def _freeze_wav2vec2_and_half(encoder: AudioEncoder) -> None:
    encoder.wav2vec2.requires_grad_(False)  # frozen as CyberHost freezes it
    freeze_half(encoder.proj)


PARTS = [
    Part("pose_encoder", lambda: PoseEncoder(3, 4, SPEC.pose_channels),
         lambda g: {"x": _randn(g, B, 3, 8 * LATENT, 8 * LATENT)}, {"out": (B, 4, LATENT, LATENT)}, per_sample=("x",),
         bf16_tol=0.02),  # 8 convs deep; its init keeps the input's signal to the output (measured 1.6 %)
    Part("hand_encoder", lambda: HandEncoder(SPEC.hand_channels, SPEC.id_dim),
         lambda g: {"crops": _randn(g, B, 2, 3, 128, 128)}, {"out": (B, HAND_TOKENS, SPEC.id_dim)},
         per_sample=("crops",)),
    Part("conv_face_encoder", lambda: ConvFaceEncoder(SPEC.face_conv_channels),
         lambda g: {"face": _randn(g, B, 3, 112, 112)}, {"out": (B, 512)}, per_sample=("face",)),
    # always frozen in eval mode in CyberHost; its own declaration freezes features.weight (insightface's)
    Part("arcface_iresnet", lambda: IResNet(SPEC.arcface_arch), lambda g: {"x": _randn(g, B, 3, 112, 112)},
         {"out": (B, 512)}, train=False, per_sample=("x",), bf16_tol=0.02),  # 8 residual blocks deep
    Part("hand_clarity_embedding", lambda: HandClarityEmbedding(TEMB),
         lambda g: {"clarity": torch.rand(B, F, 2, generator=g) * 80,
                    "valid": torch.tensor([[[True, False], [True, True], [False, True]]] * B)},
         {"out": (B * F, TEMB)}, per_sample=("clarity",)),
    Part("audio_projection", lambda: AudioProjection(3, 32, 2, SPEC.audio_hidden, SPEC.audio_tokens, CROSS),
         lambda g: {"features": _randn(g, B, 10, 3, 32)}, {"out": (B, 10, SPEC.audio_tokens, CROSS)},
         per_sample=("features",)),
    Part("audio_encoder",
         lambda: AudioEncoder(Wav2Vec2Model(Wav2Vec2Config(**SPEC.wav2vec2)), None, 2, SPEC.audio_hidden, SPEC.audio_tokens, CROSS),
         lambda g: {"waveform": _randn(g, B, 16000 * F // 25), "num_frames": F},
         {"out": (B, F, SPEC.audio_tokens, CROSS)}, freeze=_freeze_wav2vec2_and_half, per_sample=("waveform",),
         train=False),  # alone, train() would switch wav2vec2's dropout on: CyberHost.train() keeps it in eval
    # float32 by design (orthonormalisation outside autocast): bitwise float32 under bf16 autocast
    Part("codebook", lambda: Codebook(SPEC.codebook_size, WIDTH), lambda g: {}, {"out": (SPEC.codebook_size, WIDTH)},
         bf16_exact=True),
    Part("region_codebook_attention",
         lambda: RegionCodebookAttention(WIDTH, SPEC.id_dim, SPEC.codebook_size, SPEC.codebook_size, SPEC.rca_heads),
         lambda g: {"x": _randn(g, B * F, WIDTH, LATENT, LATENT), "identity": _randn(g, B, 6, SPEC.id_dim),
                    "num_frames": F, "identity_valid": torch.tensor([[True] * 4 + [False] * 2, [True] * 6]),
                    "drop_reference": torch.tensor([False, False])},
         {"0": (B * F, WIDTH, LATENT, LATENT), "1": (B * F, 1, LATENT, LATENT)},
         checkpointing=lambda m, on: setattr(m, "gradient_checkpointing", on), per_sample=("x", "identity")),
    Part("heatmap_head", lambda: HeatmapHead(WIDTH), lambda g: {"x": _randn(g, B * F, WIDTH, LATENT, LATENT)},
         {"out": (B * F, 42, LATENT, LATENT)}, per_sample=("x",)),
    Part("added_cross_attention", lambda: AddedCrossAttention(WIDTH, CROSS, SPEC.rca_heads),
         lambda g: {"x": _randn(g, B, 16, WIDTH), "context": _randn(g, B, 5, CROSS),
                    "mask": torch.tensor([True, True, False, True, False]).expand(B, 1, 1, 5)},
         {"out": (B, 16, WIDTH)}, per_sample=("x", "context")),
    Part("reference_self_attn_processor", ReferenceSelfAttention,  # a batch mixing kept and dropped references
         lambda g: {"x": _randn(g, 3 * F, 16, WIDTH), "reference": _randn(g, 3, 16, WIDTH),
                    "drop_reference": torch.tensor([False, True, False])},
         {"out": (3 * F, 16, WIDTH)}, batch=3, per_sample=("x", "reference")),
    Part("audio_cross_attn_processor", AudioCrossAttention,
         lambda g: {"x": _randn(g, B * F, 16, WIDTH), "text": _randn(g, B * F, 2, CROSS),
                    "audio": _randn(g, B, F, SPEC.audio_tokens, CROSS), "drop_audio": torch.tensor([False, False])},
         {"out": (B * F, 16, WIDTH)}, per_sample=("x", "text", "audio")),
    Part("motion_frame_attn_processor", MotionFrameAttention,
         lambda g: {"x": _randn(g, B * 16, F, WIDTH), "motion": _randn(g, B, M, 16, WIDTH)},
         {"out": (B * 16, F, WIDTH)}, per_sample=("x", "motion")),
    Part("unet_2d", _plain_unet, _unet_inputs(1), {"out": (B, 4, LATENT, LATENT)}, call=_run_unet(1),
         checkpointing=_unet_checkpointing, per_sample=("x", "context"), bf16_tol=NETWORK_BF16_TOL),
    Part("unet_motion", _motion_unet, _unet_inputs(F), {"out": (B * F, 4, LATENT, LATENT)}, call=_run_unet(F),
         checkpointing=_unet_checkpointing, per_sample=("x", "context"), bf16_tol=NETWORK_BF16_TOL),
    # the networks: CyberHost's own requires_grad declaration is the split under test (freeze=None)
    Part("reference_net_stage1", _cyberhost(1), _network_inputs(1), {f"spatial.{k}": v for k, v in SPATIAL.items()},
         call=_reference, freeze=None, inert=ONE_TEXT_TOKEN, unreached=("unet.", "pose_encoder."),
         checkpointing=_network_checkpointing, per_sample=("ref_latents", "ref_skeleton"), bf16_tol=NETWORK_BF16_TOL),
    Part("reference_net_stage2", _cyberhost(2, stage2_trainable="all"),
         _network_inputs(2, face_valid=torch.tensor([True, False]), hand_valid=torch.tensor([[True, False]] * B)),
         {**{f"spatial.{k}": v for k, v in SPATIAL.items()},
          **{f"motion.{k}": (b, M, *rest) for k, (b, *rest) in SPATIAL.items()},
          "face_id": (B, SPEC.face_tokens, SPEC.id_dim), "hand_id": (B, HAND_TOKENS, SPEC.id_dim),
          "face_id_valid": (B, SPEC.face_tokens), "hand_id_valid": (B, HAND_TOKENS)},
         call=_reference, freeze=None, inert=ONE_TEXT_TOKEN, unreached=STAGE2_ONLY,
         checkpointing=_network_checkpointing, per_sample=("ref_latents", "ref_skeleton", "motion", "face", "hands"),
         bf16_tol=NETWORK_BF16_TOL),
    Part("cyberhost_stage1", _cyberhost(1), _network_inputs(1), {"sample": (B, 1, 4, LATENT, LATENT)}, call=_whole,
         freeze=None, inert=ONE_TEXT_TOKEN, checkpointing=_network_checkpointing,
         per_sample=("ref_latents", "ref_skeleton", "noisy", "driving_map"), bf16_tol=NETWORK_BF16_TOL),
    # its bf16 run stores the frozen weights (VAE, UNet base, reference net) in bf16, as frozen_bf16 training does
    Part("cyberhost_stage2_added", _cyberhost(2), _network_inputs(2), STAGE2_OUTPUTS, call=_whole, freeze=None,
         checkpointing=_network_checkpointing, per_sample=NETWORK_INPUTS, bf16_tol=NETWORK_BF16_TOL,
         bf16_prepare=lambda m: m.cast_frozen(torch.bfloat16)),
    # conf/stage2.yaml (end to end), with a batch mixing a dropped and a kept reference and audio
    Part("cyberhost_stage2_all", _cyberhost(2, stage2_trainable="all"),
         _network_inputs(2, drop_reference=torch.tensor([False, True]), drop_audio=torch.tensor([True, False])),
         STAGE2_OUTPUTS, call=_whole, freeze=None, inert=(TEXT_QK, r"^reference_net\..*" + TEXT_NORM),
         checkpointing=_network_checkpointing, per_sample=NETWORK_INPUTS, bf16_tol=NETWORK_BF16_TOL),
    # selective checkpointing (gradient_checkpointing: a list of block regexes): an up block, the temporal
    # modules and the hand RCAs
    Part("cyberhost_stage2_selective_checkpointing", _cyberhost(2, stage2_trainable="all"), _network_inputs(2),
         STAGE2_OUTPUTS, call=_whole, freeze=None, only=("checkpointing",),
         checkpointing=lambda m, on: m.enable_gradient_checkpointing(SELECTED if on else False)),
    # the frozen ArcFace of the paper's configuration: a training step must not move its BatchNorm statistics
    Part("cyberhost_stage2_arcface", _cyberhost(2, face_encoder="arcface"), _network_inputs(2), STAGE2_OUTPUTS,
         call=_whole, freeze=None, only=("optimizer_step",)),
]
BY_NAME = {p.name: p for p in PARTS}
CASES = [pytest.param(check, name, id=f"{check}-{name}") for check in CHECKS for name in BY_NAME
         if applies(check, BY_NAME[name])]


@pytest.mark.parametrize(("check", "part"), CASES)
def test_contract(check: str, part: str) -> None:
    CHECKS[check](BY_NAME[part])


def test_table_covers_every_model_class() -> None:
    """Every ``nn.Module`` and attention processor defined in ``cyberhost/models`` runs inside some row of the table."""
    import inspect

    import cyberhost.models.arcface as arcface
    import cyberhost.models.attention as attention
    import cyberhost.models.audio as audio
    import cyberhost.models.blocks as blocks
    import cyberhost.models.cyberhost as network
    import cyberhost.models.encoders as encoders
    import cyberhost.models.rca as rca

    defined = set()
    for module in (arcface, attention, audio, blocks, network, encoders, rca):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and (issubclass(cls, nn.Module) or cls.__name__.endswith("Processor")):
                defined.add(cls)
    covered = set()
    for part in PARTS:
        for sub in part.build().modules():
            covered |= {type(sub), type(getattr(sub, "processor", None))}
    assert defined - covered == set()
    assert len(defined) >= 18  # the scan itself found the classes
