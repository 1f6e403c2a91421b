"""The base LightningModule of both CyberHost training stages.

The base owns what the stages share: building the network, explicit trainable/frozen parameter
groups (printed as a table at start), AdamW with warm-up, optional EMA, the NaN/Inf guard, grad
norm logging, FSDP2 sharding (``configure_model``) and the one ``model_step(batch) -> (loss, logs)``
that serves training and validation. What the network reads comes from the conditions contract
(:class:`cyberhost.data.conditions.Conditions`, turned into network inputs by
:func:`cyberhost.models.conditioning.network_inputs`, the function generation uses too); a stage
fills in :meth:`CyberHostModule.loss_targets`.

Batches come from :mod:`cyberhost.data.datamodule`: images are ``uint8`` and become ``[-1, 1]``
floats here (on the device); boxes and keypoints are normalised to ``[0, 1]`` with validity flags
and become pixels (NaN = absent, as :mod:`cyberhost.diffusion.targets` expects) here.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard

from cyberhost import weights
from cyberhost.data.conditions import Conditions
from cyberhost.data.transforms import to_maps, to_unit
from cyberhost.diffusion import LossConfig, NoiseSchedule, SamplerConfig, ScheduleConfig, cyberhost_losses
from cyberhost.models import CyberHost, CyberHostConfig, CyberHostOutput
from cyberhost.models.blocks import CompileConfig, compile_regions
from cyberhost.models.conditioning import network_inputs
from cyberhost.models.cyberhost import Part, part_of

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """Optimiser settings (AdamW).

    Attributes:
        lr: learning rate (paper: 1e-5).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warm-up steps from 0 to ``lr`` (0 = none).
        ema_decay: decay of an exponential moving average of the trainable weights (None = no EMA).
        max_bad_steps: stop with an error after this many consecutive non-finite losses (each is skipped).
    """

    lr: float = 1e-5
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    ema_decay: float | None = None
    max_bad_steps: int = 5

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("lr and eps must be > 0, weight_decay >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.max_bad_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and max_bad_steps >= 1")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")


@dataclass
class ParamGroups:
    """Which parameters train: regexes over parameter names (``re.search``), e.g. ``"^unet\\."``.

    What trains by default comes from the network's part declaration
    (:func:`cyberhost.models.cyberhost.network_parts`): every part but the frozen pretrained ones
    (VAE, wav2vec2, ArcFace) and the reference net's unused tail; in stage 2 with
    ``model.stage2_trainable: added`` only the parts stage 2 adds. The patterns here can only
    narrow that set (e.g. freeze one part for an experiment); a pattern that matches no parameter
    is an error (a typo). The table printed at start lists every part with its group and counts.

    Attributes:
        trainable: patterns of the parameters to train; None = every parameter the network lets train.
        frozen: patterns of parameters to freeze (wins over ``trainable``).
    """

    trainable: list[str] | None = None
    frozen: list[str] | None = None

    def __post_init__(self) -> None:
        for pattern in [*(self.trainable or []), *(self.frozen or [])]:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"param group pattern {pattern!r} is not a valid regex: {err}") from err


class ValueReservoir:
    """A uniform sample of at most ``size`` of the values seen (reservoir sampling), with percentiles.

    Training feeds it every visible hand clarity score of its batches, so the checkpoint can say
    which range the network saw and what "high" clarity means for this data (generation reads it).
    """

    def __init__(self, size: int = 16384, seed: int = 0) -> None:
        self.size, self.seen = size, 0
        self.values = np.zeros(0, np.float32)
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        """Offer some values (any shape)."""
        values = np.asarray(values, np.float32).reshape(-1)
        room = max(0, self.size - len(self.values))
        self.values = np.concatenate([self.values, values[:room]])
        for k, v in enumerate(values[room:]):
            j = int(self._rng.integers(0, self.seen + room + k + 1))
            if j < self.size:
                self.values[j] = v
        self.seen += len(values)

    def stats(self) -> dict[str, float]:
        """``count``, ``min``, ``max`` and the percentiles ``p1 ... p99`` (empty when nothing was seen)."""
        if not len(self.values):
            return {}
        out = {"count": float(self.seen), "min": float(self.values.min()), "max": float(self.values.max())}
        for q in (1, 5, 10, 50, 90, 95, 99):
            out[f"p{q}"] = float(np.percentile(self.values, q))
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        return {"values": torch.from_numpy(self.values.copy()), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's sample."""
        self.values = np.asarray(state["values"], np.float32)[: self.size].copy()
        self.seen = int(state["seen"])


def fsdp_units(model: CyberHost) -> list[nn.Module]:
    """Modules to wrap with ``fully_shard``, innermost first: UNet blocks, UNet stems, then the other parts."""
    frozen = {id(m) for part in model.frozen_modules() for m in part.modules()}
    units: list[nn.Module] = []
    for unet in (model.unet, model.reference_net):
        units += [b for b in [*unet.down_blocks, unet.mid_block, *unet.up_blocks] if b is not None]
        units += [m for n, m in unet.named_children() if n in ("conv_in", "time_embedding", "conv_norm_out", "conv_out")
                  and m is not None and any(True for _ in m.parameters())]
    for name, child in model.named_children():
        if name in ("unet", "reference_net") or id(child) in frozen:
            continue
        if name == "audio":
            units.append(child.proj)
        elif isinstance(child, nn.ModuleDict):
            units += list(child.values())
        elif any(True for _ in child.parameters()):
            units.append(child)
    return units


def _full(t: Tensor) -> Tensor:
    """A DTensor's full value (a plain tensor is returned as is)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _graph_anchor(reference: Any) -> Tensor:
    """Sum of the reference features: weighted by 0, it keeps the reference net in the autograd graph.

    When every sample of a batch drops the reference (CFG dropout), the denoiser never reads the
    reference net's features; without this term those parameters would get no gradient on that
    rank, and DDP without ``find_unused_parameters`` would fail (``conf/trainer/ddp.yaml``).
    """
    tensors = [*reference.spatial.values(), *(reference.motion or {}).values(), reference.face_id, reference.hand_id]
    return sum(t.float().mean() for t in tensors if t is not None and t.requires_grad)


def to_pixels(batch: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
    """The contract's ``[0, 1]`` keypoints and boxes in pixels of the ``size`` frame (validity fields unchanged)."""
    h, w = size
    scale = torch.tensor([w, h, w, h], device=batch["face_box"].device, dtype=torch.float32)
    return {"keypoints": batch["keypoints"].float() * scale[:2], "face_box": batch["face_box"].float() * scale,
            "hand_boxes": batch["hand_boxes"].float() * scale}


_BUILD_ON_META: ContextVar[bool] = ContextVar("cyberhost_build_on_meta", default=False)


@contextlib.contextmanager
def build_on_meta(enabled: bool = True) -> Iterator[None]:
    """Modules created inside build their network on the meta device and load no weights yet.

    :meth:`CyberHostModule.configure_model` then shards it (FSDP2), materialises it on the
    strategy's device and loads the pretrained folders and the starting checkpoint
    (:func:`cyberhost.weights.load_network`), so no rank builds the whole network on the host.
    The CLI uses it for FSDP2 runs (``conf/trainer/fsdp.yaml``); a module built under
    ``torch.device("meta")`` defers the same way.
    """
    token = _BUILD_ON_META.set(enabled)
    try:
        yield
    finally:
        _BUILD_ON_META.reset(token)


class CyberHostModule(L.LightningModule):
    """Shared training logic; use :class:`~cyberhost.training.stages.Stage1Module` or ``Stage2Module``.

    Args:
        model: network configuration (size, stage, local pretrained weight paths).
        optim: optimiser, EMA and NaN guard settings.
        params: explicit trainable/frozen parameter patterns.
        schedule: noise schedule.
        loss: loss weights.
        sampler: sampler of the validation samples (few steps in tiny runs).
        gradient_checkpointing: recompute activations in the backward pass (less memory): ``true``
            everywhere, ``false`` nowhere, or a list of block-name regexes to checkpoint only those
            blocks (:meth:`CyberHost.enable_gradient_checkpointing`, e.g. ``['^unet\\.up_blocks\\.3\\.']``).
        seed: seed of timesteps and noise (per step and sample: :meth:`sample_draws`, so a resumed run draws the same).
        channels_last: store conv weights (VAE, UNets, encoders) channels-last, the layout cuDNN's
            bf16 kernels prefer (see BENCHMARKS.md for what it buys on an H100).
        compile: regional ``torch.compile`` of the repeated blocks (:mod:`cyberhost.models.blocks`).
        frozen_bf16: store the frozen VAE/UNet weights in bf16 at fit start (less memory, no
            re-casting under autocast; :meth:`CyberHost.cast_frozen`). Not with FSDP2.
    """

    stage: int = 1

    def __init__(
        self,
        model: CyberHostConfig | None = None,
        optim: OptimConfig | None = None,
        params: ParamGroups | None = None,
        schedule: ScheduleConfig | None = None,
        loss: LossConfig | None = None,
        sampler: SamplerConfig | None = None,
        gradient_checkpointing: bool | list[str] = False,
        seed: int = 0,
        channels_last: bool = False,
        compile: CompileConfig | None = None,
        frozen_bf16: bool = False,
    ) -> None:
        super().__init__()
        model = model or CyberHostConfig(stage=self.stage)
        if model.stage != self.stage:
            raise ValueError(f"model.stage is {model.stage} but this is the stage-{self.stage} module: set model.stage")
        self.save_hyperparameters()
        self.model_config, self.optim = model, optim or OptimConfig()
        self.params, self.loss_config = params or ParamGroups(), loss or LossConfig()
        self.schedule_config, self.sampler_config = schedule or ScheduleConfig(), sampler or SamplerConfig()
        self.schedule = NoiseSchedule(self.schedule_config)
        self.seed = seed
        self._deferred = _BUILD_ON_META.get() or torch.get_default_device().type == "meta"
        with torch.device("meta") if self._deferred else contextlib.nullcontext():
            self.model = CyberHost(model)  # reads no file: weights come from load_weights
        self._apply_param_groups()
        if gradient_checkpointing:
            self.model.enable_gradient_checkpointing(gradient_checkpointing)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # 4-D weights only; before the optimizer sees them
        self.compile_config, self.frozen_bf16 = compile or CompileConfig(), frozen_bf16
        if self.compile_config.enabled:
            compile_regions(self.model, self.compile_config)  # lazy: each block compiles at its first call
        self.ema: dict[str, Tensor] | None = None
        self._bad_steps = 0
        self._pending_nonfinite: tuple[Tensor, int] | None = None  # the last step's flag, read at the next step
        self._last_bad_step = -1
        self.clarity_seen = ValueReservoir(seed=seed)
        if not self._deferred:
            self.load_weights()

    # ---------------------------------------------------------------- weights
    def initial_checkpoint(self) -> tuple[str | None, str, Callable[[Part], bool] | None]:
        """``(path or None, its config key, which parts it may lack)``: what the stage starts from (stage hook)."""
        return None, "checkpoint", None

    def load_weights(self, device: torch.device | str = "cpu") -> weights.LoadPlan:
        """The pretrained folders the config names, then :meth:`initial_checkpoint` over them.

        A network built on the meta device is materialised on ``device`` first; under FSDP2 this is
        collective (rank 0 reads the files, each rank keeps its shards: :mod:`cyberhost.weights.network`).
        """
        path, what, allow = self.initial_checkpoint()
        return weights.load_network(self.model, path, what=what, allow_missing=allow, device=device, seed=self.seed)

    # ---------------------------------------------------------------- parameters
    def _apply_param_groups(self) -> None:
        """Set ``requires_grad`` from ``params`` (see :class:`ParamGroups`); errors name the pattern."""
        named = dict(self.model.named_parameters())
        allowed = {n for n, p in named.items() if p.requires_grad}  # what the network lets train
        pretrained = {id(p) for m in self.model.frozen_modules() for p in m.parameters()}
        for key, patterns in (("trainable", self.params.trainable), ("frozen", self.params.frozen)):
            for pat in patterns or []:
                hits = [n for n in named if re.search(pat, n)]
                if not hits:
                    raise ValueError(f"model.params.{key} pattern {pat!r} matches no parameter of the stage-{self.stage} "
                                     f"network (names look like {next(iter(named))!r})")
                own = [n for n in hits if id(named[n]) not in pretrained]
                if key == "trainable" and own and not any(n in allowed for n in own):
                    raise ValueError(
                        f"model.params.trainable pattern {pat!r} matches only parameters the network keeps frozen "
                        f"(e.g. {own[0]!r}); in stage 2 set model.stage2_trainable: all to train stage-1 parts"
                    )
        for name, p in named.items():
            train = name in allowed
            if self.params.trainable is not None:
                train = train and any(re.search(pat, name) for pat in self.params.trainable)
            if self.params.frozen and any(re.search(pat, name) for pat in self.params.frozen):
                train = False
            p.requires_grad_(train)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("no trainable parameters: check model.params.trainable / frozen patterns")

    def param_table(self) -> str:
        """Trainable/frozen parameter counts per declared part of the network, with its group."""
        rows: dict[str, list[int]] = {}
        groups: dict[str, str] = {}
        for name, p in self.model.named_parameters():
            part = part_of(self.model.parts, name)
            row = rows.setdefault(part.name, [0, 0])
            groups[part.name] = part.group
            row[0 if p.requires_grad else 1] += p.numel()
        lines = [f"trainable patterns: {self.params.trainable}; frozen patterns: {self.params.frozen}",
                 f"{'part':<20} {'group':<11} {'trainable':>14} {'frozen':>14}"]
        for part, (t, f) in rows.items():
            lines.append(f"{part:<20} {groups[part]:<11} {t:>14,} {f:>14,}")
        tt, ff = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
        lines.append(f"{'total':<32} {tt:>14,} {ff:>14,}")
        return "\n".join(lines)

    def on_fit_start(self) -> None:
        """Print the parameter table once; move restored EMA weights to the parameters' device."""
        self._ema_follow_parameters()
        if self.trainer.is_global_zero:
            print(f"stage-{self.stage} parameters:\n{self.param_table()}", flush=True)

    def setup(self, stage: str) -> None:
        """Cast the frozen weights to bf16 when ``frozen_bf16`` (after stage-1 weights were loaded)."""
        if self.frozen_bf16 and not getattr(self, "_frozen_cast", False):
            precision = "bf16-mixed" if self._trainer is None else str(self._trainer.precision)  # no trainer: caller's autocast
            if "16" not in precision:
                raise ValueError(f"frozen_bf16 needs mixed precision (trainer.precision: bf16-mixed), got {precision!r}: "
                                 "bf16 weights cannot meet float32 activations outside autocast")
            n = self.model.cast_frozen(torch.bfloat16)
            self._frozen_cast = True
            log.info("frozen_bf16: %.1f M frozen weights stored in bf16", n / 1e6)

    def configure_model(self) -> None:
        """FSDP2 (``ModelParallelStrategy``): ``fully_shard`` every UNet block and every other trainable part.

        Each unit is a module the network calls through its ``forward`` (UNet blocks, encoders,
        RCA, attention add-ons), so FSDP2's hooks gather its parameters exactly when they are used,
        including inside ``encode_reference``/``encode_audio``. The frozen pretrained parts (VAE,
        wav2vec2, ArcFace) stay unsharded; the few parameters owned directly by the root (the text
        context tokens) stay replicated and their gradients are averaged in
        :meth:`on_before_optimizer_step`.

        A network built on the meta device (:func:`build_on_meta`, what the CLI does for FSDP2) is
        sharded while still empty, then materialised on the strategy's device and loaded
        (:meth:`load_weights`): each rank allocates only its shards (plus the replicated frozen
        parts), never the whole network.
        """
        mesh = self.device_mesh
        if mesh is not None and not getattr(self, "_sharded", False):
            if self.frozen_bf16:
                raise ValueError("frozen_bf16 is not supported with FSDP2 (a sharded unit needs one parameter dtype); "
                                 "set model.init_args.frozen_bf16: false")
            if self.optim.ema_decay is not None:
                raise ValueError("optim.ema_decay is not supported with FSDP2 (ModelParallelStrategy); set it to null")
            dp = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
            for unit in fsdp_units(self.model):
                fully_shard(unit, mesh=dp)
            self._sharded = True
        if self._deferred:
            self._deferred = False
            device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
            self.load_weights(device)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters, linear warm-up then constant.

        The fused kernel (CUDA: one launch per step; CPU: one pass per step, ~10 % of a tiny probe
        step) unless a gradient scaler is in use (fp16, which fused AdamW would unscale after our
        clipping); under FSDP2 the sharded (DTensor) and
        replicated parameters form separate groups, since one foreach kernel cannot mix them.
        """
        o = self.optim
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        sharded = getattr(self, "_sharded", False)
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        fused = {p.device.type for p in trainable} in ({"cuda"}, {"cpu"}) and not sharded and scaler is None
        groups: list[dict[str, Any]] = [{"params": trainable}]
        if sharded:
            dtensor = [p for p in trainable if type(p).__name__ == "DTensor"]
            plain = [p for p in trainable if type(p).__name__ != "DTensor"]
            groups = [{"params": g} for g in (dtensor, plain) if g]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                fused=fused or None)
        warm = max(1, o.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- one step
    def conditions(self, batch: dict[str, Tensor], latents: dict[str, Tensor], dropout: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``CyberHost.forward`` besides noisy latents and timesteps (the contract's one path)."""
        return network_inputs(self.model, Conditions.from_batch(batch), latents["reference"], latents.get("motion"),
                              dropout=dropout)

    def loss_targets(self, batch: dict[str, Tensor], out: CyberHostOutput, size: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of ``cyberhost_losses`` besides pred/target/timesteps (stage hook)."""
        raise NotImplementedError

    def encode(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """VAE latents of the target (and motion) frames and the reference, under no_grad."""
        b, f = batch["target"].shape[:2]
        with torch.no_grad():
            out = {
                "target": self.model.encode_images(to_unit(batch["target"].flatten(0, 1))).unflatten(0, (b, f)),
                "reference": self.model.encode_images(to_unit(batch["reference"])),
            }
            if "motion" in batch and batch["motion"].shape[1] > 0:
                out["motion"] = self._motion_latents(batch["motion"], batch.get("motion_from_reference"), out["reference"])
        return out

    def _motion_latents(self, motion: Tensor, from_reference: Tensor | None, reference: Tensor) -> Tensor:
        """``(B, M, 4, h, w)`` latents of the motion frames; a sample whose motion frames are its reference
        repeated (``motion_from_reference``) reuses the reference latent instead of encoding M copies of it."""
        b, m = motion.shape[:2]
        if from_reference is None or not bool(from_reference.any()):
            return self.model.encode_images(to_unit(motion.flatten(0, 1))).unflatten(0, (b, m))
        latents = reference[:, None].expand(-1, m, -1, -1, -1).clone()
        own = ~from_reference.to(torch.bool)
        if bool(own.any()):
            latents[own] = self.model.encode_images(to_unit(motion[own].flatten(0, 1))).unflatten(0, (int(own.sum()), m))
        return latents

    def sample_draws(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Timesteps ``(B,)``, noise (``x0``'s shape) and the heatmap gate's uniform coin ``(B,)`` of a batch.

        With ``generator`` (validation) the batch is drawn from it in one go. In training each
        sample draws from its own generator, seeded by ``(seed, global_step, global sample index)``
        where the global index is ``rank * B + i`` (training batches are always full, so every
        rank's ``B`` is the same). So a sample's noise does not depend on how the global batch is
        split over ranks: 2 ranks with ``B/2`` each draw exactly what 1 process with ``B`` draws
        for the concatenated batch (tests/training/test_equivalence.py), a resumed run draws what
        an uninterrupted one did, and samples of different ranks never share noise. (Gradient
        accumulation, which no config uses, would give the micro-batches of one step the same
        draws: the micro-batch number would have to join the seed.)
        """
        b = x0.shape[0]
        if generator is not None:
            t = self.schedule.sample_timesteps(b, x0.device, generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            return t, noise.to(x0), torch.rand(b, generator=generator)
        rank = self.global_rank if self._trainer is not None else 0
        ts, noises, coins = [], [], []
        for i in range(b):
            state = np.random.SeedSequence([self.seed, self.global_step, rank * b + i]).generate_state(2, np.uint32)
            gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            ts.append(self.schedule.sample_timesteps(1, generator=gen))
            noises.append(torch.randn(x0.shape[1:], generator=gen))
            coins.append(torch.rand(1, generator=gen))
        return torch.cat(ts).to(x0.device), torch.stack(noises).to(x0), torch.cat(coins)

    def model_step(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One diffusion training/validation step.

        Args:
            batch: a batch of the stage's DataModule.
            generator: CPU generator of timesteps and noise (default: per sample, see :meth:`sample_draws`).

        Returns:
            The loss and the logged scalars (``loss``, ``loss_diffusion``, ``loss_heatmap``, ``loss_mask``).
        """
        size = tuple(batch["target"].shape[-2:])
        latents = self.encode(batch)
        x0 = latents["target"]
        t, noise, coin = self.sample_draws(x0, generator)
        noisy = self.schedule.add_noise(x0, noise, t)
        cond = self.conditions(batch, latents)
        out = self.model(noisy, t, **cond)
        terms = cyberhost_losses(out.sample, self.schedule.target(x0, noise, t), t, self.loss_config,
                                 coin=coin, **self.loss_targets(batch, out, size))
        loss = terms["loss"]
        if torch.is_grad_enabled() and self.model.state.reference_mode == "dropped":  # decided once by the forward
            loss = loss + 0.0 * _graph_anchor(cond["reference"])
        return loss, terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        """Step with the NaN/Inf guard: a non-finite loss on any rank skips the step on all ranks.

        With fused AdamW (the default wherever it runs) the skip happens on the device: the loss's
        flag goes to the optimiser as ``found_inf`` (the kernel then leaves every weight, moment and
        step count as it was; a gradient scaler uses the same input), and the host reads it one step
        later, when it has long been computed. So the step has no host sync; the count of
        consecutive skips and the error after ``optim.max_bad_steps`` of them lag one step. Other
        optimisers, FSDP2 and gradient accumulation read the flag at once and skip backward.
        """
        loss, logs = self.model_step(batch)
        self._read_nonfinite_flag()
        self._stop_if_too_many_nonfinite()  # also after a count that a checkpoint settled
        optimizer = self._device_skip_optimizer()
        if optimizer is not None:
            bad = (~torch.isfinite(loss.detach())).float().reshape(())  # 0-d, as the step counts it is subtracted from
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            optimizer.found_inf = bad
            self._pending_nonfinite = (bad, self.global_step)
        else:
            finite = bool(torch.isfinite(loss).item())
            if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
                self._count_nonfinite(self.global_step)
                self._stop_if_too_many_nonfinite()
                return None
            self._bad_steps = 0
        b = batch["target"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=b, sync_dist=False)
        self.log("train/loss_step", logs["loss"], prog_bar=True, batch_size=b, logger=False)
        return loss

    def _device_skip_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimiser when a non-finite step can be skipped on the device (fused AdamW, one batch per step)."""
        if self._trainer is None or getattr(self, "_sharded", False) or self.trainer.accumulate_grad_batches != 1:
            return None
        optimizer = self.optimizers(use_pl_optimizer=False)
        fused = isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused")
        return optimizer if fused else None

    def _read_nonfinite_flag(self, during_step: bool = True) -> None:
        """Count the previous step's device-side flag (computed long ago, so reading it does not wait)."""
        pending, self._pending_nonfinite = self._pending_nonfinite, None
        if pending is None:
            return
        bad, step = pending
        if bool(bad.item()):
            self._count_nonfinite(step, during_step)
        else:
            self._bad_steps = 0

    def _count_nonfinite(self, step: int, during_step: bool = True) -> None:
        """One more consecutive skipped step: warn, and log it (``self.log`` only works inside a step)."""
        self._bad_steps += 1
        self._last_bad_step = step
        log.warning("non-finite loss at step %d (%d in a row): step skipped", step, self._bad_steps)
        if during_step:
            self.log("train/skipped_nonfinite", float(self._bad_steps), rank_zero_only=True)

    def _stop_if_too_many_nonfinite(self) -> None:
        """Stop with an error after ``optim.max_bad_steps`` consecutive non-finite losses."""
        if self._bad_steps >= self.optim.max_bad_steps:
            raise FloatingPointError(
                f"{self._bad_steps} consecutive non-finite losses (last at step {self._last_bad_step}); lower "
                "optim.lr, check the data, or raise optim.max_bad_steps"
            )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The same step with a generator fixed per batch, so validation losses compare across steps."""
        _, logs = self.model_step(batch, torch.Generator().manual_seed(self.seed + 1000 + batch_idx))
        b = batch["target"].shape[0]
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=b, sync_dist=True)
        return logs["loss"]

    # ---------------------------------------------------------------- monitoring, EMA
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the visible hand clarity scores of training batches (on the host: no device sync)."""
        if self.training and isinstance(batch, dict) and "hand_clarity_valid" in batch:
            self.clarity_seen.add(batch["hand_clarity"][batch["hand_clarity_valid"]].numpy())
        return batch

    def _fsdp1_root(self) -> nn.Module | None:
        """The root ``FullyShardedDataParallel`` module under FSDP v1 (``conf/trainer/fsdp1.yaml``), else None."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = getattr(self._trainer, "strategy", None) and self.trainer.strategy.model
        return model if isinstance(model, FullyShardedDataParallel) else None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of replicated parameters under FSDP2; log the global gradient norm."""
        sharded = getattr(self, "_sharded", False)
        if sharded and torch.distributed.is_initialized():
            for p in self.model.parameters():
                if p.grad is not None and type(p).__name__ != "DTensor":
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        self._grad_norm = None
        if not grads:
            return
        if sharded:
            total = torch.linalg.vector_norm(torch.stack([_full(g.norm(2).float()) for g in grads]))
        elif self._fsdp1_root() is not None:  # each rank holds a shard of every gradient
            square = torch.stack([g.float().square().sum() for g in grads]).sum()
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(square)
            total = square.sqrt()
        else:
            total = torch.nn.utils.get_total_norm(grads, foreach=True)  # a few fused kernels, no per-tensor loop
        self._grad_norm = total  # clipping (next) reuses it: the norm is computed once per step
        self.log("train/grad_norm", total, rank_zero_only=True)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Norm clipping with the norm :meth:`on_before_optimizer_step` already computed (one norm per step).

        Used for every strategy: Lightning refuses to clip for fused AdamW (assuming it unscales;
        without a scaler there is nothing to unscale) and for FSDP, and would compute the norm again.
        FSDP v1 clips through the root module's ``clip_grad_norm_``; value clipping is per element.
        """
        if not gradient_clip_val:
            return None
        params = [p for p in self.model.parameters() if p.grad is not None]
        sharded = getattr(self, "_sharded", False)
        root = self._fsdp1_root()
        if gradient_clip_algorithm == "value":
            if sharded or root is not None:
                raise ValueError("trainer.gradient_clip_algorithm: value is not supported with FSDP; use norm")
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val, foreach=True)
            return None
        if root is not None:
            root.clip_grad_norm_(gradient_clip_val)
            return None
        total = getattr(self, "_grad_norm", None)
        if total is None or not params:  # nothing to clip, or called outside the training loop
            return None
        coef = torch.clamp(gradient_clip_val / (total + 1e-6), max=1.0)
        if sharded:  # DTensor and replicated gradients do not mix in one foreach call
            for p in params:
                p.grad.mul_(coef)
        else:
            torch._foreach_mul_([p.grad for p in params], coef)
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA weights (one fused ``lerp`` over all of them)."""
        if self.optim.ema_decay is None:
            return
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if self.ema is None:
            self.ema = {n: p.detach().clone() for n, p in named.items()}
            return
        if self.ema.keys() != named.keys():
            raise ValueError("the EMA weights (from the checkpoint) do not match the trainable parameters: "
                             "resume with the same model.params and model.stage2_trainable")
        self._ema_follow_parameters()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.values()), [p.detach() for p in named.values()], 1 - self.optim.ema_decay)

    def _ema_follow_parameters(self) -> None:
        """Keep each EMA tensor on its parameter's device.

        Lightning restores a checkpoint (:meth:`on_load_checkpoint`) before it moves the module to
        the GPU, so restored EMA weights start on the CPU.
        """
        if not self.ema:
            return
        params = dict(self.model.named_parameters())
        for name, value in self.ema.items():
            p = params.get(name)
            if p is not None and value.device != p.device:
                self.ema[name] = value.to(p.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the EMA weights, the conditions record and the NaN/Inf guard's count of consecutive skipped steps."""
        if self.ema is not None:
            checkpoint["ema"] = {k: v.detach().cpu() for k, v in self.ema.items()}
        checkpoint["conditions"] = self.condition_record()
        checkpoint["hand_clarity_seen"] = self.clarity_seen.state_dict()
        self._read_nonfinite_flag(during_step=False)
        checkpoint["nonfinite_streak"] = self._bad_steps

    def condition_record(self) -> dict[str, Any]:
        """What this run conditioned on, for generation (JSON-able).

        ``transform`` and ``buckets``: its DataModule's clip settings (the trained mode among them);
        ``hand_clarity``: statistics of the visible hand clarity scores of the training batches
        (``min``, ``max``, percentiles; generation's "high" is ``p90`` and it refuses values outside
        ``[min, max]``). Empty parts are left out.
        """
        record: dict[str, Any] = {}
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            record.update(transform=asdict(dm.transform), buckets=asdict(dm.buckets))
        stats = self.clarity_seen.stats()
        if stats:
            record["hand_clarity"] = stats
        return record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the EMA weights (moved to the parameters' device at fit start) and the guard's count."""
        if "ema" in checkpoint:
            self.ema = {k: v.clone() for k, v in checkpoint["ema"].items()}
        if "hand_clarity_seen" in checkpoint:
            self.clarity_seen.load_state_dict(checkpoint["hand_clarity_seen"])
        self._bad_steps = int(checkpoint.get("nonfinite_streak", 0))

    def config_tree(self) -> dict[str, Any]:
        """Plain-dict settings of this run (stored in safetensors exports for generation)."""
        return {
            "stage": self.stage, "model": asdict(self.model_config), "schedule": asdict(self.schedule_config),
            "loss": asdict(self.loss_config), "optim": asdict(self.optim),
        }  # fmt: skip


__all__ = ["CyberHostModule", "OptimConfig", "ParamGroups", "build_on_meta", "to_maps", "to_pixels", "to_unit"]
