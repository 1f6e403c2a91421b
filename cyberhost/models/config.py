"""Configuration of the CyberHost network and its size registry (``tiny``, ``sd15``).

The paper (CyberHost, ICLR 2025, Sec. 3) fixes the backbone (SD-1.5 + AnimateDiff temporal
modules + wav2vec2 audio features + Region Codebook Attention) but not the sizes of the parts it
adds. Every such choice is a field here with the reason in its docstring; DESIGN.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RCA_BLOCK_NAMES = ("mid", "up0", "up1", "up2", "up3")
"""Where a Region Codebook Attention may sit: after the mid block or after up block ``i``."""


@dataclass(frozen=True)
class SizeSpec:
    """Architecture of one named size. Only the registry builds these.

    Attributes:
        unet: ``UNet2DConditionModel`` config (the reference net has the same shape).
        vae: ``AutoencoderKL`` config.
        motion_adapter: ``MotionAdapter`` config (AnimateDiff temporal modules).
        wav2vec2: ``transformers.Wav2Vec2Config`` kwargs.
        pose_channels: channels of the Pose Encoder's conv stages (each stage halves the size).
        hand_channels: channels of the Hand Encoder's conv stages (deeper than the pose encoder).
        face_conv_channels: channels of the trainable conv face encoder (the ArcFace fallback).
        arcface_arch: iresnet depth of the ArcFace backbone (``r18/r34/r50/r100``).
        id_dim: width of the identity tokens R(I_r).
        face_tokens: number of identity tokens made from the face embedding.
        audio_hidden: width of the audio projection MLP.
        audio_tokens: audio context tokens per video frame.
        codebook_size: default n (spatial) and m (temporal) codebook sizes.
        rca_heads: attention heads in RCA.
        face_rca_blocks: default stages with a face RCA.
        hand_rca_blocks: default stages with a hand RCA.
        face_encoder: default face identity encoder, ``"arcface"`` or ``"conv"``.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    motion_adapter: dict[str, Any]
    wav2vec2: dict[str, Any]
    pose_channels: tuple[int, ...]
    hand_channels: tuple[int, ...]
    face_conv_channels: tuple[int, ...]
    arcface_arch: str
    id_dim: int
    face_tokens: int
    audio_hidden: int
    audio_tokens: int
    codebook_size: int
    rca_heads: int
    face_rca_blocks: tuple[str, ...]
    hand_rca_blocks: tuple[str, ...]
    face_encoder: str


_SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
_SD15_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
    scaling_factor=0.18215,
)

SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        unet=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            # 1 / std of this random VAE's latents (median over 12 init seeds on the sample clips'
            # frames at 64x96: 0.246, seeds 0.17-0.37), as SD's 0.18215 is for its trained VAE. With
            # SD's factor these latents have std ~0.045 and the noise drowns every condition
            # (PROBES.md). Recomputed by ``python -m benchmarks.probes.calibrate``.
            scaling_factor=4.0,
        ),
        motion_adapter=dict(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_num_attention_heads=2,
            motion_norm_num_groups=8,
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        ),
        wav2vec2=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16, 16),
            conv_stride=(5, 8, 8),
            conv_kernel=(10, 8, 8),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            vocab_size=32,
        ),
        pose_channels=(8, 8, 16, 16),
        hand_channels=(8, 16, 16, 32),
        face_conv_channels=(8, 16, 32),
        arcface_arch="r18",
        id_dim=32,
        face_tokens=2,
        audio_hidden=64,
        audio_tokens=4,
        codebook_size=8,
        rca_heads=2,
        face_rca_blocks=("up1",),
        hand_rca_blocks=("up0", "up1"),
        face_encoder="conv",
    ),
    "sd15": SizeSpec(
        unet=_SD15_UNET,
        vae=_SD15_VAE,
        motion_adapter=dict(
            block_out_channels=(320, 640, 1280, 1280),
            motion_layers_per_block=2,
            motion_num_attention_heads=8,
            motion_norm_num_groups=32,
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        ),
        wav2vec2=dict(),  # transformers' defaults are wav2vec2-base
        pose_channels=(16, 32, 96, 256),
        hand_channels=(32, 64, 128, 256, 512),
        face_conv_channels=(32, 64, 128, 256),
        arcface_arch="r100",
        id_dim=768,
        face_tokens=4,
        audio_hidden=1024,
        audio_tokens=32,
        codebook_size=32,
        rca_heads=8,
        face_rca_blocks=("up1", "up2", "up3"),
        hand_rca_blocks=("up1", "up2", "up3"),
        face_encoder="arcface",
    ),
}
"""The size registry. ``tiny`` runs a CPU test in seconds; ``sd15`` is the paper's size."""


@dataclass
class CyberHostConfig:
    """Everything that decides the network's shape and where its pretrained weights come from.

    Attributes:
        size: a key of ``SIZES``: ``tiny`` (tests, demo) or ``sd15`` (real runs).
        stage: 1 = image pairs (reference net, pose encoders, 2D UNet); 2 = clips (adds AnimateDiff
            temporal modules, motion frames, audio attention, RCA, hand clarity, heatmap heads).
        sd15_path: local diffusers SD-1.5 directory with ``unet/`` and ``vae/``; None = random init.
            Paths are read by ``cyberhost.weights.load_network``, never by building the network; a
            folder must hold the architecture of ``size``.
        motion_adapter_path: local diffusers AnimateDiff ``MotionAdapter`` directory; None = new
            temporal modules with zero-initialised outputs (stage 2 only).
        wav2vec2_path: local transformers ``Wav2Vec2Model`` directory (e.g. wav2vec2-base-960h);
            None = random init (tests only: features are meaningless).
        arcface_path: insightface ``arcface_torch`` iresnet state dict (``backbone.pth`` or a
            ``.safetensors``) for the face identity encoder; None with ``face_encoder="arcface"``
            gives a random, frozen ArcFace (benchmarks only).
        face_encoder: ``"arcface"`` (frozen, paper), ``"conv"`` (trainable fallback), or ``""``
            for the size's default.
        audio_layers: how many of wav2vec2's last hidden states are stacked (None = all, as Hallo).
        audio_context: audio frames each side of a video frame fed to that frame's tokens; the
            paper does not say, 2 (a 5-frame window, 200 ms at 25 fps) follows Hallo.
        audio_tokens: audio context tokens per frame (0 = the size's default).
        codebook_spatial: n, rows of C_spa (0 = the size's default; must be <= the stage width).
        codebook_temporal: m, rows of C_temp (0 = the size's default).
        face_rca_blocks: stages with a face RCA (names in ``RCA_BLOCK_NAMES``); None = size default.
        hand_rca_blocks: stages with a hand RCA; None = size default; ``[]`` = talking-head mode.
        orthonormalize: ``"qr"`` (fast, sign-fixed, equal to Gram-Schmidt) or ``"gram_schmidt"``.
        text_tokens: learnable tokens replacing SD's text embedding in cross-attention (zero init).
        stage2_trainable: ``"added"`` trains only what stage 2 adds (temporal modules, motion-frame,
            audio, RCA, identity, clarity, heatmap heads: the ``stage2`` parts of
            ``cyberhost.models.cyberhost.network_parts``); ``"all"`` also the stage-1 parts.
    """

    size: str = "tiny"
    stage: int = 1
    sd15_path: str | None = None
    motion_adapter_path: str | None = None
    wav2vec2_path: str | None = None
    arcface_path: str | None = None
    face_encoder: str = ""
    audio_layers: int | None = None
    audio_context: int = 2
    audio_tokens: int = 0
    codebook_spatial: int = 0
    codebook_temporal: int = 0
    face_rca_blocks: list[str] | None = None
    hand_rca_blocks: list[str] | None = None
    orthonormalize: str = "qr"
    text_tokens: int = 1
    stage2_trainable: str = "added"

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size={self.size!r} is unknown; choose one of {sorted(SIZES)}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.face_encoder not in ("", "arcface", "conv"):
            raise ValueError(f"face_encoder must be 'arcface', 'conv' or '' (size default), got {self.face_encoder!r}")
        if self.orthonormalize not in ("qr", "gram_schmidt"):
            raise ValueError(f"orthonormalize must be 'qr' or 'gram_schmidt', got {self.orthonormalize!r}")
        if self.stage2_trainable not in ("added", "all"):
            raise ValueError(f"stage2_trainable must be 'added' or 'all', got {self.stage2_trainable!r}")
        if self.audio_context < 0 or self.text_tokens < 1:
            raise ValueError("audio_context must be >= 0 and text_tokens >= 1")
        for name in (*(self.face_rca_blocks or ()), *(self.hand_rca_blocks or ())):
            if name not in RCA_BLOCK_NAMES:
                raise ValueError(f"RCA block {name!r} is unknown; use names from {RCA_BLOCK_NAMES}")

    @property
    def spec(self) -> SizeSpec:
        """The size's architecture."""
        return SIZES[self.size]

    @property
    def resolved_face_encoder(self) -> str:
        """The face encoder in use, after applying the size default."""
        return self.face_encoder or self.spec.face_encoder

    @property
    def resolved_face_rca(self) -> tuple[str, ...]:
        """Stages with a face RCA."""
        return tuple(self.spec.face_rca_blocks if self.face_rca_blocks is None else self.face_rca_blocks)

    @property
    def resolved_hand_rca(self) -> tuple[str, ...]:
        """Stages with a hand RCA."""
        return tuple(self.spec.hand_rca_blocks if self.hand_rca_blocks is None else self.hand_rca_blocks)

    @property
    def resolved_codebooks(self) -> tuple[int, int]:
        """(n, m): spatial and temporal codebook sizes."""
        n = self.codebook_spatial or self.spec.codebook_size
        m = self.codebook_temporal or self.spec.codebook_size
        return n, m

    @property
    def resolved_audio_tokens(self) -> int:
        """Audio context tokens per frame."""
        return self.audio_tokens or self.spec.audio_tokens
