"""The CyberHost network (ICLR 2025, Sec. 3): reference net, denoising UNet, audio, RCA, human priors.

* Stage 1 (image pairs): Reference Net (SD-1.5 2D UNet) reads the reference latent plus the
  encoded reference skeleton map (pose-aligned reference feature); its spatial self-attention
  inputs are appended to the K/V of the denoising 2D UNet's spatial self-attention; the noised
  latent gets the encoded body movement map added.
* Stage 2 (clips): the denoising UNet becomes a diffusers ``UNetMotionModel`` built from the
  stage-1 UNet (+ an AnimateDiff ``MotionAdapter``); the reference net also encodes the motion
  frames, whose features enter the temporal attention; frozen wav2vec2 features enter through
  added audio cross-attention; face and hand Region Codebook Attention (Eq. 2-5) sit after chosen
  up blocks, each hand RCA followed by a 42-keypoint heatmap head; the hand clarity score is added
  to each frame's time embedding.

Every module stage 2 adds starts as a no-op (zero output projections), so at initialisation the
stage-2 network reproduces the stage-1 network frame by frame (tested) -- when the temporal
modules are new. A pretrained AnimateDiff adapter (``motion_adapter_path``) is loaded as trained
and is not a no-op; everything else stage 2 adds still is.

Construction reads no file: ``CyberHost(config)`` builds every part from the size registry with
random init (and works under ``torch.device("meta")``); :func:`network_parts` declares which
parts are pretrained (and from which config path), which stage 1 trains and which stage 2 adds.
``cyberhost.weights`` loads the pretrained folders and our checkpoints into a built network.

Motion frames reach the temporal attention of the levels whose blocks have a spatial
self-attention (the CrossAttn levels of SD-1.5); the plain ``DownBlock2D``/``UpBlock2D`` level
has none to read from the reference net, so its temporal modules see the clip only.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.utils import logging as diffusers_logging
from torch import Tensor, nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from .arcface import IResNet, align_face
from .attention import (
    AddedCrossAttention,
    AudioCrossAttnProcessor,
    InjectionState,
    MotionFrameAttnProcessor,
    PlainProcessor,
    RecordingProcessor,
    ReferenceSelfAttnProcessor,
    layer_key,
    motion_source_name,
)
from .audio import AudioEncoder
from .blocks import checkpoint_regions
from .config import CyberHostConfig
from .encoders import ConvFaceEncoder, HandClarityEmbedding, HandEncoder, PoseEncoder
from .rca import HeatmapHead, RegionCodebookAttention
from .unet import check_plain_sd_unet, run_unet, stage_widths, time_embedding


@dataclass
class ReferenceFeatures:
    """What the reference image (and motion frames) contribute; computed once per clip/sampling run.

    Attributes:
        spatial: layer name -> reference tokens ``(B, L, C)`` for spatial self-attention.
        motion: layer name -> motion-frame tokens ``(B, M, L, C)`` for temporal attention, or None.
        face_id: face identity tokens ``(B, T_f, id_dim)`` or None.
        hand_id: hand identity tokens ``(B, T_h, id_dim)`` (left hand's tokens, then the right's) or None.
        face_id_valid: ``(B, T_f)`` bool, True where the token may be attended (a face was found);
            None = every token valid.
        hand_id_valid: ``(B, T_h)`` bool, True where the token's hand was found; None = every token valid.
    """

    spatial: dict[str, Tensor]
    motion: dict[str, Tensor] | None = None
    face_id: Tensor | None = None
    hand_id: Tensor | None = None
    face_id_valid: Tensor | None = None
    hand_id_valid: Tensor | None = None


@dataclass
class CyberHostOutput:
    """Output of :meth:`CyberHost.forward`.

    Attributes:
        sample: prediction (eps or v) ``(B, F, C, h, w)``.
        face_masks: mask logits of each face RCA, ``(B, F, 1, h_i, w_i)``.
        hand_masks: mask logits of each hand RCA.
        heatmaps: hand keypoint heatmaps after each hand RCA, ``(B, F, 42, h_i, w_i)``.
    """

    sample: Tensor
    face_masks: list[Tensor]
    hand_masks: list[Tensor]
    heatmaps: list[Tensor]


@dataclass
class ForwardPlan:
    """What :meth:`CyberHost.plan` decided and computed for one batch: the forward's parts that do not
    depend on x_t and t (sampling reuses one plan for every step of a segment).

    Attributes:
        batch: B.
        frames: F.
        reference, drop_reference: as given to :meth:`CyberHost.forward`.
        pose: the Pose Encoder's residual of the driving map ``(B*F, 4, h, w)``, None without one.
        clarity: the hand clarity embedding ``(B*F, D)`` added to the time embedding (stage 2), or None.
        face_valid: the face identity token mask, None where every face is valid (the RCA then
            keeps its unmasked SDPA path).
        hand_valid: the same for the hands.
    """

    batch: int
    frames: int
    reference: ReferenceFeatures | None
    pose: Tensor | None
    clarity: Tensor | None
    drop_reference: Tensor | None
    face_valid: Tensor | None
    hand_valid: Tensor | None


@dataclass(frozen=True)
class Part:
    """One part of the network, as :func:`network_parts` declares it.

    Attributes:
        name: the part's name in tables and messages; also its module path unless ``pattern`` is given.
        stage: 1 = in the networks of both stages (what stage 1 trains); 2 = added by stage 2.
        trained: False for a pretrained part that stays frozen (eval mode, out of the optimiser).
        weights: the ``CyberHostConfig`` field naming its pretrained folder or file; None = starts at random.
        folder: subfolder of that path holding it (SD-1.5's ``unet``/``vae``).
        root: the module a pretrained state dict of this part loads into (default: ``name``).
        pattern: regex over state-dict keys (``re.match``); default: ``name`` and a dot.
    """

    name: str
    stage: int
    trained: bool = True
    weights: str | None = None
    folder: str = ""
    root: str | None = None
    pattern: str | None = None

    @property
    def group(self) -> str:
        """``pretrained`` (frozen), ``stage1`` or ``stage2`` (what stage 2 adds)."""
        return "pretrained" if not self.trained else f"stage{self.stage}"

    @property
    def load_root(self) -> str:
        """Module path a pretrained state dict of this part is relative to."""
        return self.name if self.root is None else self.root

    def matches(self, key: str) -> bool:
        """Whether the state-dict key ``key`` belongs to this part (ignoring parts declared before it)."""
        return re.match(self.pattern or rf"{re.escape(self.name)}\.", key) is not None


def network_parts(config: CyberHostConfig) -> tuple[Part, ...]:
    """The parts of the network of ``config``: THE declaration (freezing, trainable sets, loading read it).

    Order matters: a key belongs to the first part that matches it (the temporal modules before the
    rest of the UNet). Every parameter and buffer of the network belongs to exactly one part (tested).
    """
    parts = [
        Part("vae", 1, trained=False, weights="sd15_path", folder="vae"),
        Part("reference_net", 1, weights="sd15_path", folder="unet"),
        Part("unet.motion_modules", 2, weights="motion_adapter_path", root="unet",
             pattern=r"unet\.(.+\.)?motion_modules\."),  # AnimateDiff temporal modules inside the UNet blocks
        Part("unet", 1, weights="sd15_path", folder="unet"),  # the denoising UNet's spatial (2D) layers
        Part("pose_encoder", 1),
        Part("ref_pose_encoder", 1),
        Part("text_context", 1, pattern=r"text_context$"),
    ]
    if config.stage == 2:
        arcface = config.resolved_face_encoder == "arcface"
        parts += [
            Part("audio.wav2vec2", 2, trained=False, weights="wav2vec2_path"),
            Part("audio.proj", 2),
            Part("audio_layers", 2),
            Part("motion_layers", 2),
            Part("face_rca", 2),
            Part("hand_rca", 2),
            Part("heatmap_heads", 2),
            Part("face_encoder", 2, trained=not arcface, weights="arcface_path" if arcface else None),
            Part("face_proj", 2),
            Part("face_norm", 2),
            Part("hand_encoder", 2),
            Part("clarity", 2),
        ]
    return tuple(p for p in parts if p.stage <= config.stage)


def part_of(parts: tuple[Part, ...], key: str) -> Part:
    """The part a state-dict key belongs to.

    Raises:
        KeyError: no declared part matches (the declaration misses a module).
    """
    for part in parts:
        if part.matches(key):
            return part
    raise KeyError(f"{key!r} belongs to no declared part of the network (cyberhost.models.cyberhost.network_parts)")


def _freeze(module: nn.Module) -> None:
    module.eval()
    module.requires_grad_(False)


class CyberHost(nn.Module):
    """The full network of one training stage.

    Args:
        config: the network configuration (size, stage, local weight paths, design choices).
    """

    def __init__(self, config: CyberHostConfig) -> None:
        super().__init__()
        self.config = config
        spec = config.spec
        self.parts = network_parts(config)
        unet2d = UNet2DConditionModel(**spec.unet)
        check_plain_sd_unet(unet2d)
        self.vae = AutoencoderKL(**spec.vae)
        latent_channels = unet2d.config.in_channels
        cross_dim = unet2d.config.cross_attention_dim
        if config.stage == 1:
            self.reference_net = copy.deepcopy(unet2d)
            self.unet = unet2d
        else:
            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # from_unet2d warns about an empty fp32 list on every build
            try:
                self.unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**spec.motion_adapter))
            finally:
                diffusers_logging.set_verbosity(level)
            self._zero_temporal_outputs()
            self.reference_net = unet2d
        self.text_context = nn.Parameter(torch.zeros(1, config.text_tokens, cross_dim))
        self.pose_encoder = PoseEncoder(3, latent_channels, spec.pose_channels)
        self.ref_pose_encoder = PoseEncoder(3, latent_channels, spec.pose_channels)
        self.state = InjectionState()
        self.audio_layers = nn.ModuleDict()
        self.motion_layers = nn.ModuleDict()
        self._set_processors()
        self.face_rca = nn.ModuleDict()
        self.hand_rca = nn.ModuleDict()
        self.heatmap_heads = nn.ModuleDict()
        if config.stage == 2:
            self._build_stage2(cross_dim)
        self._freeze_parts()

    # ---------------------------------------------------------------- construction
    def _set_processors(self) -> None:
        spatial: set[str] = set()
        ref_procs = {}
        for name in self.reference_net.attn_processors:
            layer = name.removesuffix(".processor")
            if layer.endswith("attn1"):
                spatial.add(layer)
                ref_procs[name] = RecordingProcessor(self.state, layer)
            else:
                ref_procs[name] = PlainProcessor()
        self.reference_net.set_attn_processor(ref_procs)
        heads = self.config.spec.rca_heads
        widths = {name: module.to_q.in_features for name, module in self.unet.named_modules() if hasattr(module, "to_q")}
        procs = {}
        for name in self.unet.attn_processors:
            layer = name.removesuffix(".processor")
            if "motion_modules" in layer:
                source = motion_source_name(layer, spatial) if layer.endswith("attn1") else None
                if source is None or self.config.stage == 1:
                    procs[name] = PlainProcessor()
                    continue
                mod = AddedCrossAttention(widths[layer], widths[layer], heads)
                self.motion_layers[layer_key(layer)] = mod
                procs[name] = MotionFrameAttnProcessor(self.state, source, mod)
            elif layer.endswith("attn1"):
                procs[name] = ReferenceSelfAttnProcessor(self.state, layer)
            elif self.config.stage == 2:
                mod = AddedCrossAttention(widths[layer], self.unet.config.cross_attention_dim, heads)
                self.audio_layers[layer_key(layer)] = mod
                procs[name] = AudioCrossAttnProcessor(self.state, mod)
            else:
                procs[name] = PlainProcessor()
        self.unet.set_attn_processor(procs)
        self.spatial_layers = sorted(spatial)

    def _build_stage2(self, cross_dim: int) -> None:
        cfg, spec = self.config, self.config.spec
        self.audio = AudioEncoder(Wav2Vec2Model(Wav2Vec2Config(**spec.wav2vec2)), cfg.audio_layers, cfg.audio_context,
                                  spec.audio_hidden, cfg.resolved_audio_tokens, cross_dim)
        if cfg.resolved_face_encoder == "arcface":
            self.face_encoder: nn.Module = IResNet(spec.arcface_arch)
        else:
            self.face_encoder = ConvFaceEncoder(spec.face_conv_channels)
        self.face_proj = nn.Sequential(nn.Linear(512, spec.face_tokens * spec.id_dim))
        self.face_norm = nn.LayerNorm(spec.id_dim)
        self.hand_encoder = HandEncoder(spec.hand_channels, spec.id_dim)
        self.clarity = HandClarityEmbedding(self.unet.time_embedding.linear_2.out_features)
        widths = stage_widths(self.unet)
        n, m = cfg.resolved_codebooks
        for region, blocks in (("face", cfg.resolved_face_rca), ("hand", cfg.resolved_hand_rca)):
            target = self.face_rca if region == "face" else self.hand_rca
            for block in blocks:
                target[block] = RegionCodebookAttention(widths[block], spec.id_dim, n, m, spec.rca_heads,
                                                        cfg.orthonormalize)
                if region == "hand":
                    self.heatmap_heads[block] = HeatmapHead(widths[block])

    def _zero_temporal_outputs(self) -> None:
        """New temporal modules start as identities (AnimateDiff's zero init); a loaded adapter replaces them."""
        for name, module in self.unet.named_modules():
            if name.endswith("proj_out") and "motion_modules" in name:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def init_own_weights(self) -> None:
        """What construction sets beyond its modules' own init (for ``cyberhost.models.init`` after ``to_empty``)."""
        nn.init.zeros_(self.text_context)
        if self.config.stage == 2:
            self._zero_temporal_outputs()

    def _freeze_parts(self) -> None:
        """Freeze by the declaration: pretrained parts always; with ``stage2_trainable: added`` the stage-1 parts too."""
        for part in self.frozen_parts():
            _freeze(self.get_submodule(part.name))
        if self.config.stage == 2 and self.config.stage2_trainable == "added":
            for name, p in self.named_parameters():
                if part_of(self.parts, name).stage == 1:
                    p.requires_grad_(False)
        # the reference net's output is never used: the tail after its last self-attention stays frozen
        ref = self.reference_net
        tail: list[nn.Module] = [ref.conv_out] + ([ref.conv_norm_out] if ref.conv_norm_out is not None else [])
        last = ref.up_blocks[-1]
        if hasattr(last, "attentions"):
            block = last.attentions[-1]
            # attn1's *input* is what the denoiser reads; its own projections feed only the unused tail
            names = ("attn1", "norm2", "attn2", "norm3", "ff")
            tail += [block.proj_out, *[getattr(block.transformer_blocks[-1], k) for k in names]]
        for module in tail:
            module.requires_grad_(False)

    def frozen_parts(self) -> list[Part]:
        """The declared pretrained parts that stay frozen (each one module)."""
        return [p for p in self.parts if not p.trained]

    def frozen_modules(self) -> list[nn.Module]:
        """Pretrained parts that always stay in eval mode and out of the optimiser."""
        return [self.get_submodule(p.name) for p in self.frozen_parts()]

    def train(self, mode: bool = True) -> CyberHost:
        """Like ``nn.Module.train`` but keeps :meth:`frozen_modules` in eval mode."""
        super().train(mode)
        for part in self.frozen_modules():
            part.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser should update."""
        return (p for p in self.parameters() if p.requires_grad)

    def enable_gradient_checkpointing(self, enabled: bool | Sequence[str] = True) -> list[str]:
        """Activation checkpointing: ``True`` everywhere, ``False`` nowhere, or only the blocks matching patterns.

        ``True`` is diffusers' checkpointing in both UNets (each block's resnets, each spatial
        transformer's blocks) plus every RCA. A list of regexes checkpoints just the matching blocks
        (:func:`cyberhost.models.blocks.checkpoint_regions`; names like ``unet.up_blocks.3.resnets.0``,
        ``unet.down_blocks.0.motion_modules.1``, ``hand_rca.up1``), so memory is traded for time
        only where the activations are large. Returns the names of the checkpointed blocks (for a
        list; ``[]`` otherwise). A selection cannot be undone on the same network.
        """
        if not isinstance(enabled, bool):
            return checkpoint_regions(self, list(enabled))
        for unet in (self.unet, self.reference_net):
            if enabled:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()
        for rca in [*self.face_rca.values(), *self.hand_rca.values()]:
            rca.gradient_checkpointing = enabled
        return []

    def load_stage1(self, state_dict: dict[str, Tensor]) -> None:
        """Load a stage-1 state dict into a stage-2 network (keys of shared parts are identical).

        Raises:
            ValueError: if the dict has keys the stage-2 network lacks or misses stage-1 keys.
        """
        result = self.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if part_of(self.parts, k).stage == 1]
        if result.unexpected_keys or missing:
            raise ValueError(f"not a stage-1 state dict: unexpected {result.unexpected_keys[:5]}, missing {missing[:5]}")

    # ---------------------------------------------------------------- VAE
    @torch.no_grad()
    def encode_images(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> scaled float32 latents (N, 4, H/8, W/8).

        A VAE stored in bf16 runs in bf16 throughout (autocast would run its group norms in
        float32, converting every full-resolution activation twice).
        """
        with _vae_autocast(self.vae, images.device):
            dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            z = dist.sample(generator) if sample else dist.mean
        return z.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents (N, 4, h, w) -> images (N, 3, 8h, 8w) in [-1, 1]."""
        with _vae_autocast(self.vae, latents.device):
            return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def cast_frozen(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Store the frozen weights of the VAE and the UNets in ``dtype``; returns how many were cast.

        Under autocast a frozen float32 weight is cast again at every use (autocast caches casts of
        trainable leaves only) and keeps 4 bytes per value; in bf16 it is read as it is. The
        trainable weights stay float32 (the optimiser's master weights). wav2vec2 and ArcFace are
        left as they are (their normalisation layers expect float32 weights).
        """
        keep = {id(p) for m in self.frozen_modules() if m is not self.vae for p in m.parameters()}
        cast = 0
        for p in self.parameters():
            if not p.requires_grad and id(p) not in keep and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                cast += p.numel()
        return cast

    # ---------------------------------------------------------------- conditions
    def encode_audio(self, waveform: Tensor, num_frames: int) -> Tensor:
        """(B, S) 16 kHz audio spanning ``num_frames`` frames -> audio tokens (B, F, K, D) (stage 2)."""
        if self.config.stage != 2:
            raise RuntimeError("audio conditioning exists in stage 2 only")
        return self.audio(waveform, num_frames)

    def encode_reference(
        self,
        ref_latents: Tensor,
        ref_skeleton: Tensor | None = None,
        motion_latents: Tensor | None = None,
        face: Tensor | None = None,
        hand_crops: Tensor | None = None,
        face_valid: Tensor | None = None,
        hand_valid: Tensor | None = None,
    ) -> ReferenceFeatures:
        """Run the reference net once (Sec. 3.1) and the identity encoders (Sec. 3.2).

        Args:
            ref_latents: ``(B, 4, h, w)`` reference latent.
            ref_skeleton: ``(B, 3, H, W)`` skeleton map of the reference (pose-aligned reference feature).
            motion_latents: ``(B, M, 4, h, w)`` latents of the motion frames (stage 2).
            face: ``(B, 3, S, S)`` face crop of the reference in [-1, 1], already aligned to the
                ArcFace template by ``cyberhost.data.faces.align_face_crop`` (S = 256) (stage 2).
            hand_crops: ``(B, 2, 3, 128, 128)`` left/right hand crops of the reference (stage 2).
            face_valid: ``(B,)`` bool, a face was found (False: its tokens are masked out of the
                identity attention, the black crop is never attended); None = all found.
            hand_valid: ``(B, 2)`` bool per hand, likewise; None = all found.
        """
        b = ref_latents.shape[0]
        x = ref_latents
        if ref_skeleton is not None:
            x = x + self.ref_pose_encoder(ref_skeleton.to(x.dtype))  # (B, 4, h, w)
        m = 0 if motion_latents is None else motion_latents.shape[1]
        if m:
            x = torch.cat([x, motion_latents.flatten(0, 1)], dim=0)  # (B + B*M, 4, h, w)
        n = x.shape[0]
        emb = time_embedding(self.reference_net, torch.zeros(n, device=x.device, dtype=torch.long))
        self.state.bank, self.state.recording = {}, True
        try:
            run_unet(self.reference_net, x, emb, self.text_context.expand(n, -1, -1), num_frames=1)
        finally:
            self.state.recording = False
        bank, self.state.bank = self.state.bank, {}
        spatial = {k: v[:b] for k, v in bank.items()}
        motion = {k: v[b:].unflatten(0, (b, m)) for k, v in bank.items()} if m else None
        feats = ReferenceFeatures(spatial=spatial, motion=motion)
        if self.config.stage == 2:
            if face is not None:
                embed = self.face_encoder(align_face(face.to(ref_latents.dtype)))  # (B, 512)
                feats.face_id = self.face_norm(self.face_proj(embed).unflatten(1, (self.config.spec.face_tokens, -1)))
                if face_valid is not None:
                    feats.face_id_valid = _token_mask(face_valid, (b,), feats.face_id.shape[1])  # (B, T_f)
            if hand_crops is not None:
                feats.hand_id = self.hand_encoder(hand_crops.to(ref_latents.dtype))  # (B, T_h, id_dim)
                if hand_valid is not None:
                    per_hand = self.hand_encoder.tokens_per_hand
                    feats.hand_id_valid = _token_mask(hand_valid, (b, 2), per_hand)  # (B, T_h)
        return feats

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        noisy_latents: Tensor,
        timesteps: Tensor,
        reference: ReferenceFeatures | None = None,
        driving_map: Tensor | None = None,
        audio_tokens: Tensor | None = None,
        hand_clarity: Tensor | None = None,
        hand_clarity_valid: Tensor | None = None,
        drop_reference: Tensor | None = None,
        drop_audio: Tensor | None = None,
    ) -> CyberHostOutput:
        """Predict the noise (or v) of a batch of clips.

        Args:
            noisy_latents: ``(B, F, 4, h, w)`` (F = 1 for stage 1 image pairs).
            timesteps: ``(B,)`` diffusion timesteps.
            reference: from :meth:`encode_reference`; None = no reference at all.
            driving_map: ``(B, F, 3, H, W)`` in ``[0, 1]``, what the Pose Encoder adds to the noised latent
                (pixel resolution, 8x the latent): the body movement map, or the skeleton maps of the
                video-driven and multimodal modes (``Conditions.driving_map``).
            audio_tokens: ``(B, F, K, D)`` from :meth:`encode_audio` (stage 2).
            hand_clarity: ``(B, F, 2)`` left/right hand clarity scores (finite; the value of an
                absent hand is ignored) (stage 2).
            hand_clarity_valid: ``(B, F, 2)`` bool, the hand is visible in that frame; None = all visible.
            drop_reference: ``(B,)`` bool, True drops the reference and identity of that sample
                (CFG; the motion frames stay); None = dropped for none.
            drop_audio: ``(B,)`` bool, True drops the audio of that sample; None = dropped for none.
        """
        plan = self.plan(noisy_latents.shape[:2], reference, driving_map, audio_tokens, hand_clarity,
                         hand_clarity_valid, drop_reference, drop_audio)
        return self.predict(noisy_latents, timesteps, plan)

    def plan(
        self,
        batch_frames: Sequence[int],
        reference: ReferenceFeatures | None = None,
        driving_map: Tensor | None = None,
        audio_tokens: Tensor | None = None,
        hand_clarity: Tensor | None = None,
        hand_clarity_valid: Tensor | None = None,
        drop_reference: Tensor | None = None,
        drop_audio: Tensor | None = None,
    ) -> ForwardPlan:
        """The host side of a forward: check the conditions, read the flags once, set the injection state.

        Everything :meth:`forward` decides and computes from the conditions alone (arguments as
        there; ``batch_frames`` = ``(B, F)`` of the noisy latents), the Pose Encoder and the
        clarity embedding included. :meth:`predict` then does the device work of the forward from
        x_t and t with no device-to-host read: sampling plans once per segment and predicts at
        every step, and a CUDA graph can capture a prediction
        (:class:`cyberhost.models.graphs.PlannedForward`).
        """
        b, f = batch_frames
        _check_flags(b, drop_reference=drop_reference, drop_audio=drop_audio)
        clarity_finite = None
        if hand_clarity is not None and self.config.stage == 2:
            if hand_clarity_valid is not None and hand_clarity_valid.shape != hand_clarity.shape:
                raise ValueError(f"hand_clarity_valid {tuple(hand_clarity_valid.shape)} must match hand_clarity "
                                 f"{tuple(hand_clarity.shape)}")
            present = hand_clarity if hand_clarity_valid is None else torch.where(hand_clarity_valid, hand_clarity, 0.0)
            clarity_finite = torch.isfinite(present).all()  # read with the flags below: no extra sync
        face_valid = None if reference is None or reference.face_id is None else reference.face_id_valid
        hand_valid = None if reference is None or reference.hand_id is None else reference.hand_id_valid
        host, face_valid, hand_valid, all_audio_dropped, finite = _read_flags(drop_reference, face_valid, hand_valid,
                                                                             drop_audio, clarity_finite)
        if not finite:
            raise ValueError("hand_clarity is NaN/inf where hand_clarity_valid says the hand is present; mark absent "
                             "hands in hand_clarity_valid (False) with a finite value (0), not with NaN")
        state = self.state
        state.batch, state.drop_audio = b, drop_audio
        state.set_drop_reference(drop_reference, f, host=host)
        state.reference = None if reference is None else reference.spatial
        state.motion = None if reference is None else reference.motion
        state.audio = None if audio_tokens is None else audio_tokens.flatten(0, 1)  # (BF, K, D)
        if all_audio_dropped and not torch.is_grad_enabled():
            state.audio = None  # sampling's audio-free branches: the same output, without the audio attention
        pose = None if driving_map is None else self.pose_encoder(driving_map.flatten(0, 1))
        clarity = None
        if hand_clarity is not None and self.config.stage == 2:
            clarity = self.clarity(hand_clarity, hand_clarity_valid)
        return ForwardPlan(b, f, reference, pose, clarity, drop_reference, face_valid, hand_valid)

    def predict(self, noisy_latents: Tensor, timesteps: Tensor, plan: ForwardPlan) -> CyberHostOutput:
        """The device side of a forward (:meth:`plan` ran first and nothing changed the injection state since).

        No device-to-host read and no host decision on tensor values: one call is what a CUDA
        graph captures and replays with new ``noisy_latents`` and ``timesteps``.
        """
        b, f = plan.batch, plan.frames
        if tuple(noisy_latents.shape[:2]) != (b, f):
            raise ValueError(f"noisy_latents {tuple(noisy_latents.shape)} do not match the plan's (B, F) = ({b}, {f})")
        x = noisy_latents.flatten(0, 1)  # (BF, 4, h, w)
        if plan.pose is not None:
            x = x + plan.pose.to(x.dtype)
        emb = time_embedding(self.unet, timesteps.expand(b)).repeat_interleave(f, 0)  # (BF, D)
        if plan.clarity is not None:
            emb = emb + plan.clarity.to(emb.dtype)
        reference, drop_reference = plan.reference, plan.drop_reference
        face_id = None if reference is None else reference.face_id
        hand_id = None if reference is None else reference.hand_id
        face_masks: list[Tensor] = []
        hand_masks: list[Tensor] = []
        heatmaps: list[Tensor] = []

        def hook(name: str, h: Tensor) -> Tensor:
            if name in self.face_rca:
                h, logits = self.face_rca[name](h, face_id, f, plan.face_valid, drop_reference)
                face_masks.append(logits.unflatten(0, (b, f)))
            if name in self.hand_rca:
                h, logits = self.hand_rca[name](h, hand_id, f, plan.hand_valid, drop_reference)
                hand_masks.append(logits.unflatten(0, (b, f)))
                heatmaps.append(self.heatmap_heads[name](h).unflatten(0, (b, f)))
            return h

        context = self.text_context.to(x.dtype).expand(b * f, -1, -1)
        out = run_unet(self.unet, x, emb, context, f, hook if self.config.stage == 2 else None)
        return CyberHostOutput(out.unflatten(0, (b, f)), face_masks, hand_masks, heatmaps)

    def denoiser(
        self,
        reference: ReferenceFeatures,
        driving_map: Tensor | None = None,
        audio_tokens: Tensor | None = None,
        hand_clarity: Tensor | None = None,
        hand_clarity_valid: Tensor | None = None,
    ) -> Callable[[Tensor, Tensor, bool, bool], Tensor]:
        """A closure for ``cyberhost.diffusion.GuidedSampler``: ``(x_t, t, use_ref, use_audio) -> prediction``.

        The reference features are computed once by the caller and reused at every step. A branch
        without reference or audio sets ``drop_reference`` / ``drop_audio`` for every sample, the
        same flags condition dropout sets in training (the motion frames stay).
        """

        def denoise(x: Tensor, t: Tensor, use_reference: bool, use_audio: bool) -> Tensor:
            everyone = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            return self(x, t, reference, driving_map, audio_tokens, hand_clarity, hand_clarity_valid,
                        drop_reference=None if use_reference else everyone,
                        drop_audio=None if use_audio else everyone).sample

        return denoise


def _vae_autocast(vae: nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
    """No autocast around a reduced-precision VAE (it then runs in its own dtype); else unchanged."""
    if vae.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _token_mask(valid: Tensor, shape: tuple[int, ...], tokens_per_item: int) -> Tensor:
    """Per-crop validity ``(B,)`` or ``(B, 2)`` -> per-token mask ``(B, items * tokens_per_item)``."""
    if valid.dtype != torch.bool or tuple(valid.shape) != shape:
        raise ValueError(f"identity validity must be a bool tensor of shape {shape}, got {valid.dtype} "
                         f"{tuple(valid.shape)}")
    return valid.reshape(shape[0], -1).repeat_interleave(tokens_per_item, dim=1)


def _check_flags(batch: int, **flags: Tensor | None) -> None:
    for name, flag in flags.items():
        if flag is not None and (flag.dtype != torch.bool or tuple(flag.shape) != (batch,)):
            raise ValueError(f"{name} must be a bool tensor of shape ({batch},) (True = dropped), got "
                             f"{flag.dtype} {tuple(flag.shape)}")


def _read_flags(drop_reference: Tensor | None, face_valid: Tensor | None, hand_valid: Tensor | None,
                drop_audio: Tensor | None, finite: Tensor | None,
                ) -> tuple[Tensor | None, Tensor | None, Tensor | None, bool, bool]:
    """The forward's one device-to-host read.

    Returns:
        ``(drop_reference on the CPU or None, face mask, hand mask, every audio dropped, finite)``;
        a token mask that is all True comes back as None, so its RCA keeps the unmasked SDPA path;
        ``finite`` is the value of the 0-dim ``finite`` (True when None).
    """
    given = [t for t in (face_valid, hand_valid) if t is not None]
    probes = [m.all() for m in given] + ([] if drop_audio is None else [drop_audio.all()])
    probes += [] if finite is None else [finite]
    parts = ([] if drop_reference is None else [drop_reference.reshape(-1)]) + [p.reshape(1) for p in probes]
    if not parts:
        return None, None, None, False, True
    host = torch.cat([p.to(parts[0].device, torch.bool) for p in parts]).cpu()
    i = 0 if drop_reference is None else drop_reference.numel()
    drop_host = None if drop_reference is None else host[:i]
    masks: list[Tensor | None] = []
    for mask in (face_valid, hand_valid):
        if mask is not None:
            mask, i = (None if bool(host[i]) else mask), i + 1
        masks.append(mask)
    audio_dropped = drop_audio is not None and bool(host[i])
    i += drop_audio is not None
    return drop_host, masks[0], masks[1], audio_dropped, finite is None or bool(host[i])
