"""Condition probes: does the network learn each condition? (``make probe``; PROBES.md has the results)

For each probe network (stage 1; stage 2 in the audio mode; stage 2 in the video mode), a small
random-init network is trained briefly on probe clips (:mod:`benchmarks.probes.clips`, whose
targets depend on each condition in a known way) through the real DataModules and the stage's
LightningModule ``model_step``. Then, on held-out clips, the diffusion loss with the true
conditions is compared with the loss of the *same* batch, noise and timesteps with one condition
shuffled across the batch, set to its dropped value, or shifted by one frame in time: the
**gap**. A network that reads a condition has a gap clearly above zero; its spread over seeds is
reported. Local conditions (audio -> mouth, clarity and identity -> hands, reference skeleton ->
arms and hands) are measured on the latent pixels of their region (``Probe.region``). An overfit-and-sample test then trains on one clip and generates it through
``cyberhost generate``'s own loop (:func:`cyberhost.inference.pipeline.generate_video`: the
generation conditions, DDIM with two-scale guidance, motion-frame continuation); the sampled
latents must be much closer to the clip's latents than the reference latent repeated (margin in dB).

What this proves: each condition is wired into the network and learnable. What it does not:
image quality, or anything about real pretrained weights.

Training and evaluation draw timesteps from ``T_RANGE`` only (noisy enough that the clean image
is not readable from the noised latent, so the conditions decide the prediction); the overfit
test trains on all timesteps, since its sampler visits all of them. The tiny VAE's
``scaling_factor`` is the registry's (calibrated to unit-variance latents, see
:mod:`benchmarks.probes.calibrate`); each run records the latent std it saw.

``python -m benchmarks.probes.run --device cpu|cuda --size tiny|wide --seeds 3 --out DIR [--tensorboard DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.probes import clips
from benchmarks.probes.audio_encoder import use_band_energies
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.datamodule import Stage1DataModule, Stage2DataModule
from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.transforms import TransformConfig, to_unit
from cyberhost.diffusion import LossConfig, ScheduleConfig
from cyberhost.diffusion.targets import box_masks
from cyberhost.inference.conditions import reference_from_keypoints
from cyberhost.inference.loading import InferenceSettings
from cyberhost.inference.pipeline import GenerateConfig, generate_video
from cyberhost.models import CyberHostConfig
from cyberhost.models.config import SIZES
from cyberhost.training.module import CyberHostModule, OptimConfig, to_pixels
from cyberhost.training.stages import RANDOM_STAGE1, Stage1Module, Stage2Module

# ============================================================================ THE condition table
# All knowledge of which batch keys carry each condition lives here: when the batch contract
# changes, this is the one place to edit.


@dataclass(frozen=True)
class Network:
    """One trained probe network.

    Attributes:
        name: key of :data:`NETWORKS` (``--networks``).
        stage: 1 or 2.
        mode: ``transform.mode`` it trains in (what the Pose Encoder reads).
        clips: probe clip family (:data:`benchmarks.probes.clips.CLIP_KINDS`).
    """

    name: str
    stage: int
    mode: str
    clips: str


NETWORKS: dict[str, Network] = {n.name: n for n in (
    Network("stage1", 1, "audio", "stage1"),
    Network("stage2", 2, "audio", "stage2"),
    Network("stage2-video", 2, "video", "stage2-moving"),
)}  # fmt: skip
"""The probe networks, in run order."""


@dataclass(frozen=True)
class Probe:
    """One row of the probe table.

    Attributes:
        name: condition (table row).
        network: key of :data:`NETWORKS` it is measured on.
        shuffle: batch keys rolled by one sample across the batch (together).
        drop: batch keys set to this value instead (the condition's 'dropped' form).
        delay: per-frame batch keys shifted one frame later within each sample (cyclically; the
            audio by one frame's samples): does each frame read *its own* value?
        context: batch keys set in both the true and the altered batch (e.g. reference dropped).
        region: where the condition acts, if it is local (:data:`REGIONS`): the gap is then
            measured on the latent pixels of that region of the target frames (the whole-frame gap
            is reported too). A mouth or a hand covers a few of the 96 latent pixels, so its
            whole-frame gap is diluted ~10x by pixels the condition cannot change.
    """

    name: str
    network: str
    shuffle: tuple[str, ...] = ()
    drop: dict[str, Any] = field(default_factory=dict)
    delay: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)
    region: str = ""

    @property
    def stage(self) -> int:
        """Training stage of its network."""
        return NETWORKS[self.network].stage


PROBES: tuple[Probe, ...] = (
    Probe("reference", "stage1", shuffle=("reference",)),
    Probe("reference (dropped)", "stage1", drop={"drop_reference": True}),
    Probe("pose-aligned reference", "stage1", shuffle=("reference_skeleton",), region="hands"),
    Probe("movement map | reference dropped", "stage1", shuffle=("driving_map",), context={"drop_reference": True}),
    Probe("movement map", "stage1", shuffle=("driving_map",)),
    Probe("audio", "stage2", shuffle=("audio",), region="face"),
    Probe("audio (dropped)", "stage2", drop={"drop_audio": True}, region="face"),
    Probe("audio (1 frame late)", "stage2", delay=("audio",), region="face"),
    Probe("motion frames", "stage2", shuffle=("motion", "motion_from_reference")),
    Probe("hand clarity", "stage2", shuffle=("hand_clarity", "hand_clarity_valid"), region="hands"),
    Probe("hand clarity (1 frame late)", "stage2", delay=("hand_clarity", "hand_clarity_valid"), region="hands"),
    Probe("identity crops", "stage2", shuffle=("face_crop", "face_crop_valid", "hand_crops", "hand_crops_valid"),
          region="hands"),
    Probe("skeleton maps (video mode)", "stage2-video", shuffle=("driving_map",)),
    Probe("skeleton maps (1 frame late)", "stage2-video", delay=("driving_map",)),
)
"""Condition -> how to take it away. ``loss_diffusion`` is compared (the heatmap/mask terms read targets)."""

REGIONS = {"face": ("face_box", "face_box_valid"), "hands": ("hand_boxes", "hand_boxes_valid")}
"""Probe region -> the batch's boxes of the target frames and their validity (the union of the boxes)."""

# ============================================================================ settings

T_RANGE = (400, 1000)
"""Timesteps of probe training and evaluation (see the module docstring)."""


@dataclass
class Settings:
    """Sizes of one probe run (``--size`` picks a preset; the GPU preset is wider and longer).

    Attributes:
        size: network size (``tiny`` or ``wide``, a 4x wider tiny registered here).
        steps: training steps per network (in :data:`NETWORKS` order) and seed.
        batch: training batch size per network.
        lr: AdamW learning rate.
        train_clips: training clips per network.
        eval_clips: held-out clips per network (``eval_clips / eval_batch`` batches).
        eval_batch: held-out batch size.
        draws: noise/timestep draws per held-out batch.
        overfit_steps: steps of the overfit-and-sample test (0: skip it).
        sample_steps: DDIM steps of its generation.
        workers: DataLoader worker processes (0 on 2 CPU cores: the network needs both).
        jobs: (network, seed) jobs run at once in their own processes (see :func:`run`).
        prediction_type: what the probe networks predict (the overfit test uses
            :data:`OVERFIT_SCHEDULE`).
        alpha: the face/hand reweighting of the diffusion loss (Eq. 6's alpha) the networks train with.
        max_train_seconds: wall-clock cap on each probe job's training (0: none): a job stops at its
            steps or at the cap, whichever comes first, and records the steps it did. It time-boxes
            the GPU run; a capped network has trained less, which its gaps then show. The overfit
            test is not capped (a partial fit says nothing about sampling: 511 of 1500 steps gave
            -0.6 dB on the H200); it starts first instead, so the other jobs fill the time it takes.
        audio: the frozen audio features of the stage-2 networks: ``bands``, the probes' stand-in for a
            pretrained wav2vec2 (:mod:`benchmarks.probes.audio_encoder`), or ``wav2vec2``, the
            product's encoder with random weights (too little of each frame's sound survives it for
            the audio probe to pass; PROBES.md, "Audio").
    """

    size: str = "tiny"
    steps: tuple[int, ...] = (300, 250, 150)
    batch: tuple[int, ...] = (4, 4, 4)
    lr: float = 1e-3
    train_clips: int = 384
    eval_clips: int = 16
    eval_batch: int = 8
    draws: int = 2
    overfit_steps: int = 800
    sample_steps: int = 10
    workers: int = 0
    jobs: int = 2
    prediction_type: str = "v_prediction"
    max_train_seconds: float = 0.0
    alpha: float = LossConfig().alpha
    audio: str = "bands"

    def __post_init__(self) -> None:
        """A bad setting fails here, before any clip is written or network trained."""
        if self.audio not in AUDIO_FEATURES:
            raise ValueError(f"audio features must be one of {AUDIO_FEATURES}, got {self.audio!r}")
        if len(self.steps) != len(NETWORKS) or len(self.batch) != len(NETWORKS):
            raise ValueError(f"steps and batch need one value per network {tuple(NETWORKS)}, got {self.steps}, "
                             f"{self.batch}")
        if min(self.steps) < 1 or min(self.batch) < 1 or self.jobs < 1 or self.max_train_seconds < 0:
            raise ValueError("steps, batch and jobs must be >= 1 and max_train_seconds >= 0")


AUDIO_FEATURES = ("bands", "wav2vec2")

PRESETS = {
    "tiny": Settings(),
    # one H200 in <= 8 minutes: all 10 jobs (3 networks x 3 seeds + overfit) at once, each probe job capped at
    # 280 s of training (was 5 at once in two rounds of 150 s: a step this small is bound by the host's kernel
    # launches, not by the GPU, so more processes train more steps in the same time; the run's s/step in
    # probes.json shows what each got). 10 jobs x (1 + 1 loader worker) on the host's 16 cores. The overfit
    # test trains 1000 steps (800 gave +2.98 dB here with TF32, +3.64 dB on the CPU; 1200 gave +4.02 dB there).
    "wide": Settings(size="wide", steps=(3000, 2000, 2000), batch=(16, 16, 16), train_clips=1024, eval_clips=32,
                     draws=4, overfit_steps=1000, sample_steps=25, workers=1, jobs=10, max_train_seconds=280.0),
}


SMOKE = dict(steps=(3, 3, 3), batch=(2, 2, 2), train_clips=8, eval_clips=4, eval_batch=2, draws=1, overfit_steps=3,
             sample_steps=2, workers=0)
"""``--smoke``: what a preset keeps of itself to check that a command runs end to end (its size, device,
jobs and logs), in a minute on a CPU. Its gaps mean nothing."""


def register_wide() -> None:
    """Add a ``wide`` size to the registry: the tiny network with 4x the UNet, adapter and encoder widths."""
    if "wide" in SIZES:
        return
    tiny = SIZES["tiny"]
    unet = dict(tiny.unet, block_out_channels=(128, 256), cross_attention_dim=128, attention_head_dim=32,
                norm_num_groups=32)
    adapter = dict(tiny.motion_adapter, block_out_channels=(128, 256), motion_num_attention_heads=4,
                   motion_norm_num_groups=32)
    SIZES["wide"] = dataclasses.replace(tiny, unet=unet, motion_adapter=adapter, pose_channels=(16, 32, 64, 64),
                                        hand_channels=(16, 32, 64, 128), id_dim=128, audio_hidden=256, rca_heads=4)


def transform(net: Network) -> TransformConfig:
    """Probe transform: whole-frame crop, the probe clip lengths, some dropout for the dropped rows."""
    return TransformConfig(min_gap=1, num_frames=clips.TARGETS if net.stage == 2 else 1, num_motion=clips.MOTION,
                           crop_scale=(1.0, 1.0), face_crop=64, hand_crop=128, mode=net.mode,
                           p_drop_reference=0.3 if net.stage == 1 else 0.05, p_drop_audio=0.1)


def buckets() -> BucketConfig:
    """The one probe resolution."""
    return BucketConfig(area=clips.SIZE[0] * clips.SIZE[1], multiple=16, sizes=[list(clips.SIZE)])


def datamodule(net: Network, train: Path, held_out: Path, s: Settings, batch: int, seed: int,
               tcfg: TransformConfig | None = None) -> Stage1DataModule | Stage2DataModule:
    """The stage's real DataModule over the probe shards."""
    cls = Stage1DataModule if net.stage == 1 else Stage2DataModule
    return cls(train_shards=str(train), val_shards=str(held_out), batch_size=batch, val_batch_size=s.eval_batch,
               val_batches=max(1, s.eval_clips // s.eval_batch), num_workers=s.workers, shuffle_buffer=64, seed=seed,
               samples_per_epoch=1 << 20, pin_memory=False, buckets=buckets(), transform=tcfg or transform(net))


def build_module(stage: int, s: Settings, seed: int, device: str,
                 schedule: ScheduleConfig | None = None) -> CyberHostModule:
    """A random-init module of the stage (stage 2 from random stage-1 weights, every part trained).

    Stage 2's frozen audio features are ``s.audio``'s (:class:`Settings`).

    ``schedule`` None = the default schedule with ``s.prediction_type``.
    """
    torch.manual_seed(seed)
    cfg = CyberHostConfig(size=s.size, stage=stage, stage2_trainable="all")
    optim = OptimConfig(lr=s.lr, weight_decay=0.0)
    schedule = schedule or ScheduleConfig(prediction_type=s.prediction_type)
    loss = LossConfig(alpha=s.alpha)
    module = Stage1Module(model=cfg, optim=optim, schedule=schedule, loss=loss, seed=seed) if stage == 1 else (
        Stage2Module(RANDOM_STAGE1, model=cfg, optim=optim, schedule=schedule, loss=loss, seed=seed))
    if stage == 2 and s.audio == "bands":
        module.model.audio = use_band_energies(module.model.audio)
    return module.to(device)


def restrict_timesteps(module: CyberHostModule, lo: int, hi: int) -> None:
    """Make ``model_step`` draw timesteps uniformly from ``[lo, hi)`` (same generator use as the schedule)."""

    def sample(batch: int, device: Any = "cpu", generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(lo, hi, (batch,), generator=generator).to(device)

    module.schedule.sample_timesteps = sample


def to_device(batch: dict[str, Tensor], device: str) -> dict[str, Tensor]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def latent_std(module: CyberHostModule, batch: dict[str, Tensor]) -> float:
    """Std of the target latents of a batch (the registry's VAE scale should make it about 1)."""
    return float(module.encode(batch)["target"].std())


# ============================================================================ training and the gap


def train(module: CyberHostModule, loader: Any, steps: int, device: str, seed: int, writer: Any, tag: str,
          max_seconds: float = 0.0) -> tuple[float, int]:
    """Plain AdamW loop over ``model_step``.

    Returns:
        The mean loss of the last 20 steps and the steps done (fewer than ``steps`` when
        ``max_seconds`` > 0 ran out first).
    """
    opt = module.configure_optimizers()["optimizer"]
    params = [p for p in module.parameters() if p.requires_grad]
    module.train()
    losses: list[float] = []
    stop = time.perf_counter() + max_seconds if max_seconds > 0 else math.inf
    for step, batch in zip(range(steps), loader, strict=False):
        if step and time.perf_counter() > stop:
            break
        loss, logs = module.model_step(to_device(batch, device), torch.Generator().manual_seed(seed * 100_003 + step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(logs["loss_diffusion"]))
        if writer is not None:
            writer.add_scalar(f"{tag}/train/loss_diffusion", losses[-1], step)
    return float(np.mean(losses[-20:])), len(losses)


def altered(batch: dict[str, Tensor], probe: Probe) -> dict[str, Tensor]:
    """The batch with the probe's condition shuffled across the batch, dropped, or one frame late."""
    out = dict(batch)
    for key in probe.shuffle:
        out[key] = torch.roll(batch[key], 1, dims=0)
    for key, value in probe.drop.items():
        out[key] = torch.full_like(batch[key], value)
    frames = batch["target"].shape[1]
    for key in probe.delay:
        shift = batch[key].shape[1] // frames if key == "audio" else 1  # (B, S) audio: one frame's samples
        out[key] = torch.roll(batch[key], shift, dims=1)
    return out


def with_context(batch: dict[str, Tensor], probe: Probe) -> dict[str, Tensor]:
    out = dict(batch)
    for key, value in probe.context.items():
        out[key] = torch.full_like(batch[key], value)
    return out


def region_mask(batch: dict[str, Tensor], region: str, latent_size: tuple[int, int]) -> Tensor:
    """``(B, F, 1, h, w)`` {0, 1} mask of a :data:`REGIONS` region of the target frames at latent resolution.

    The batch's boxes are in crop-normalised coordinates; :func:`to_pixels` turns them into the
    target's pixels, as the stages' region losses do.
    """
    size = tuple(batch["target"].shape[-2:])
    key, valid_key = REGIONS[region]
    boxes, valid = to_pixels(batch, size)[key], batch[valid_key]
    if boxes.dim() == 3:  # one box per frame (face): (B, F, 4) -> (B, F, 1, 4)
        boxes, valid = boxes[:, :, None], valid[:, :, None]
    return box_masks(boxes, valid, size, latent_size)


@torch.no_grad()
def step_errors(module: CyberHostModule, batch: dict[str, Tensor], seed: int) -> tuple[float, Tensor]:
    """``model_step``'s ``loss_diffusion`` and its squared errors ``(B, F, C, h, w)`` (prediction vs regression target).

    The errors are read off the step itself: the network's output and the target that
    ``model_step`` computes (``schedule.target``), recorded while it runs.
    """
    seen: dict[str, Tensor] = {}
    target_fn = module.schedule.target

    def target(*args: Any, **kwargs: Any) -> Tensor:
        seen["target"] = target_fn(*args, **kwargs)
        return seen["target"]

    def hook(_mod: Any, _args: Any, output: Any) -> None:
        seen["pred"] = output.sample

    module.schedule.target = target
    handle = module.model.register_forward_hook(hook)
    try:
        logs = module.model_step(batch, torch.Generator().manual_seed(seed))[1]
    finally:
        handle.remove()
        del module.schedule.target  # the instance attribute; the class method shows again
    return float(logs["loss_diffusion"]), (seen["pred"].float() - seen["target"].float()) ** 2


@torch.no_grad()
def gaps(module: CyberHostModule, batches: list[dict[str, Tensor]], probes: list[Probe], draws: int) -> dict[str, Any]:
    """Held-out losses with the true conditions and each probe's gap (same noise and timesteps).

    Per probe: ``loss_diffusion`` true and altered and their gap (``gap``, ``rel_gap``); for a
    probe with a region also the mean squared error inside it (``region_*``). ``rel_gap_used`` is
    the region's relative gap where there is one, else the whole frame's: what the verdict reads.
    """
    module.eval()
    rows: dict[str, list[tuple[float, float, float, float]]] = {p.name: [] for p in probes}

    def losses(batch: dict[str, Tensor], seed: int, p: Probe) -> tuple[float, float]:
        whole, err = step_errors(module, batch, seed)
        if not p.region:
            return whole, whole
        mask = region_mask(batch, p.region, tuple(err.shape[-2:])).expand_as(err)
        return whole, float((err * mask).sum() / mask.sum().clamp_min(1))

    for i, batch in enumerate(batches):
        for d in range(draws):
            seed, cache = 10_000 + 97 * i + d, {}
            for p in probes:
                base = with_context(batch, p)
                key = (tuple(sorted(p.context.items())), p.region)
                if key not in cache:  # one true loss per context and region
                    cache[key] = losses(base, seed, p)
                rows[p.name].append((*cache[key], *losses(altered(base, p), seed, p)))
    out = {}
    for p in probes:
        t, tr, a, ar = np.array(rows[p.name]).T
        r = {"loss_true": float(t.mean()), "loss_altered": float(a.mean()), "gap": float((a - t).mean()),
             "rel_gap": float((a - t).mean() / t.mean())}
        if p.region:
            r.update(region=p.region, region_loss_true=float(tr.mean()), region_loss_altered=float(ar.mean()),
                     region_gap=float((ar - tr).mean()), region_rel_gap=float((ar - tr).mean() / tr.mean()))
        r["rel_gap_used"] = r["region_rel_gap"] if p.region else r["rel_gap"]
        r["gap_used"] = r["region_gap"] if p.region else r["gap"]
        diffs, true = (ar - tr, tr) if p.region else (a - t, t)  # paired: same batch, noise and timesteps
        r["rel_gap_se"] = float(diffs.std(ddof=1) / math.sqrt(len(diffs)) / true.mean()) if len(diffs) > 1 else 0.0
        out[p.name] = r
    return out


def probe_seed(net_name: str, seed: int, s: Settings, device: str, train_dir: Path, held_dir: Path,
               tb_dir: Path | None, threads: int = 0) -> dict[str, Any]:
    """Train one network of a kind with one seed and measure each of its probes (a job of :func:`run`).

    Args:
        net_name: key of :data:`NETWORKS`.
        seed: network, data-order and noise seed.
        s: settings.
        device: ``cpu`` or ``cuda``.
        train_dir: training shards.
        held_dir: held-out shards.
        tb_dir: TensorBoard folder of this job (None: no logs).
        threads: torch threads of this job (0: leave as is).
    """
    if threads:
        torch.set_num_threads(threads)
    if s.size == "wide":
        register_wide()
    net = NETWORKS[net_name]
    i = list(NETWORKS).index(net.name)
    steps, batch = s.steps[i], s.batch[i]
    probes = [p for p in PROBES if p.network == net.name]
    writer = _writer(tb_dir)
    t0 = time.perf_counter()
    dm = datamodule(net, train_dir, held_dir, s, batch, seed)
    module = build_module(net.stage, s, seed, device)
    restrict_timesteps(module, *T_RANGE)
    loader = iter(dm.train_dataloader())
    std = latent_std(module, to_device(next(loader), device))
    t1 = time.perf_counter()
    final, done = train(module, loader, steps, device, seed, writer, f"{net.name}/seed{seed}", s.max_train_seconds)
    train_s = time.perf_counter() - t1
    batches = [to_device(b, device) for b in dm.val_dataloader()]
    result = gaps(module, batches, probes, s.draws)
    if writer is not None:
        for name, r in result.items():
            writer.add_scalar(f"{net.name}/rel_gap/{name}", r["rel_gap_used"], seed)
        writer.close()
    print(f"{net.name} seed {seed}: latent std {std:.2f}, train loss {final:.4f}, {done} steps, {train_s / max(1, done):.3f} s/step, "
          f"{time.perf_counter() - t0:.0f} s; " + ", ".join(f"{n}: {r['rel_gap_used']:+.2%}" for n, r in result.items()),
          flush=True)
    return {"network": net.name, "seed": seed, "train_loss": final, "latent_std": std, "steps_done": done,
            "train_seconds": train_s,
            "seconds": time.perf_counter() - t0, "probes": result}


def _writer(tb_dir: Path | None) -> Any:
    if tb_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(tb_dir))


MIN_REL_GAP = 0.01
"""Smallest mean relative gap (1 % of the true loss) that counts as clearly above zero."""


def verdict(rel: list[float]) -> str:
    """``pass``: every seed's gap > 0, the mean > 2 standard errors and >= ``MIN_REL_GAP``; ``weak``: mean > 0; else ``FAIL``."""
    mean = float(np.mean(rel))
    sem = float(np.std(rel, ddof=1) / math.sqrt(len(rel))) if len(rel) > 1 else 0.0
    if min(rel) > 0 and mean > max(2 * sem, MIN_REL_GAP):
        return "pass"
    return "weak" if mean > 0 else "FAIL"


def table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per probe: gap (absolute and relative to the true loss), spread over seeds, verdict.

    ``gap``/``rel_gap`` are measured where the condition acts (``where``: its region, or the frame);
    ``rel_gap_frame`` is the whole-frame relative gap of every probe. ``per_seed_se`` is each seed's
    measurement error (standard error of the paired gaps over its held-out batches and draws,
    relative to the true loss) and ``seeds_above_noise`` counts the seeds whose gap exceeds twice
    it: it tells a seed that did not learn the condition from a gap lost in measurement noise. The
    verdict does not use it.
    """
    rows = []
    for p in PROBES:
        res = next((x for x in results if x["network"] == p.network), None)
        if res is None:
            rows.append({"condition": p.name, "network": p.network, "how": _how(p), "where": p.region or "frame",
                         "verdict": "n/a",
                         "note": "network not run"})
            continue
        rel = [r["probes"][p.name]["rel_gap_used"] for r in res["per_seed"]]
        gap = [r["probes"][p.name]["gap_used"] for r in res["per_seed"]]
        frame = [r["probes"][p.name]["rel_gap"] for r in res["per_seed"]]
        se = [r["probes"][p.name].get("rel_gap_se", 0.0) for r in res["per_seed"]]
        rows.append({"condition": p.name, "network": p.network, "how": _how(p), "where": p.region or "frame",
                     "gap": float(np.mean(gap)), "rel_gap": float(np.mean(rel)),
                     "spread": float(np.std(rel, ddof=1)) if len(rel) > 1 else 0.0, "per_seed": rel,
                     "rel_gap_frame": float(np.mean(frame)), "per_seed_se": se,
                     "seeds_above_noise": sum(g > 2 * e for g, e in zip(rel, se, strict=True)), "verdict": verdict(rel)})
    return rows


def _how(p: Probe) -> str:
    how = "shuffled" if p.shuffle else "dropped" if p.drop else "1 frame late"
    return how + (" (" + ", ".join(f"{k}={v}" for k, v in p.context.items()) + ")" if p.context else "")


# ============================================================================ overfit and sample

OVERFIT_MIN_DB = 3.0
"""Smallest margin (dB) over the repeated-reference baseline the overfit test accepts."""
OVERFIT_SCHEDULE = ScheduleConfig(prediction_type="v_prediction", zero_terminal_snr=True)
"""The overfit test's schedule (a project option, ``schedule.prediction_type`` / ``zero_terminal_snr``).

With the default epsilon prediction the test cannot tell a wiring bug from an imperfect fit: the
clean-latent estimate of the first sampling step is ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``,
which multiplies the network's epsilon error by ``1 / abar`` ~ 200 at t = 999. Measured on the
tiny network after 400 steps (CPU): with the *training* conditions the estimate's MSE was 7.1 at
t = 999 and 2.4 at t = 900 against a baseline of 0.45, though only 0.12 at t = 500, and every
sampler (10-50 DDIM steps, with or without guidance) ended at MSE 0.9-1.3, worse than the
baseline; the generation conditions gave the same errors as the training ones at every t. With
v-prediction on the zero-terminal-SNR schedule the first step's estimate is the network's own
x0, and the same chain reaches the clip (PROBES.md)."""
OVERFIT_SIZE = "tiny"
"""The overfit test's network in every preset: the chain it checks (prediction type, schedule, guidance,
motion frames) does not depend on the width, and the wide network fits one clip far slower (H200: -0.6 dB
after 511 steps, +0.4 dB after 1200, against the tiny network's +3.7 dB after 800 on the CPU)."""
OVERFIT_DROPOUT = 0.3
"""Reference and audio dropout of the overfit run: guidance (2.5 / 4.5) extrapolates along
``cond - uncond``, so the branches without reference or audio must be fitted too; at the probes'
0.05 / 0.1 the guided sample overshot (std 1.0 against the clip's 0.86; 2.0 dB after 800 steps,
3.0-3.2 dB at 0.3)."""


def overfit_and_sample(s: Settings, device: str, root: Path, tb_dir: Path | None = None,
                       threads: int = 0) -> dict[str, Any]:
    """Train stage 2 on one clip, then generate it with ``generate_video`` (two segments, continued).

    The clip has ``MOTION + 2 * TARGETS`` frames; generation starts at frame ``MOTION`` (the first
    frame training ever denoises) from frame 0 as the reference image and the clip's audio from
    there, exactly as ``cyberhost generate`` runs: the generation conditions of
    :mod:`cyberhost.inference.conditions`, the reference latent repeated as the first segment's
    motion frames (training shows that case with ``p_motion_reference``, raised to 0.5 here), DDIM
    with two-scale CFG, and the second segment's motion frames taken from the first's output. The
    hands are all sharp, so generation's one clarity value matches every frame.

    Returns:
        MSE of the sampled latents to the clip's latents (per segment too), of the baseline (the
        reference latent repeated), and the margin ``10 log10(baseline / sampled)`` in dB.
    """
    if threads:
        torch.set_num_threads(threads)
    with _full_fp32():
        return _overfit_and_sample(dataclasses.replace(s, size=OVERFIT_SIZE), device, root, tb_dir)


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """No TF32 in CUDA matmuls and convolutions (cuDNN's default is on) while the overfit test runs.

    The test checks the chain of training and sampling, not the precision of the device: with TF32 the
    H200 gave +2.98 dB where the CPU's float32 gave +3.64 dB for the same 800 steps and 25 DDIM steps.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _overfit_and_sample(s: Settings, device: str, root: Path, tb_dir: Path | None) -> dict[str, Any]:
    writer = _writer(tb_dir)
    t0 = time.perf_counter()
    net = NETWORKS["stage2"]
    n = clips.MOTION + 2 * clips.TARGETS
    clip = clips.stage2_clip("probeover-0000", 7, num_frames=n, sharp=True)
    copies = [dict(clip, key=f"probeover{i}-0000") for i in range(8)]  # a stream batch needs several clips
    train_dir = clips.write_clips(root / "overfit/train", copies)
    tcfg = dataclasses.replace(transform(net), p_motion_reference=0.5, p_drop_reference=OVERFIT_DROPOUT,
                               p_drop_audio=OVERFIT_DROPOUT)
    dm = datamodule(net, train_dir, train_dir, dataclasses.replace(s, eval_batch=1, eval_clips=1), 2, 0, tcfg)
    module = build_module(2, s, 0, device, OVERFIT_SCHEDULE)
    final, done = train(module, iter(dm.train_dataloader()), s.overfit_steps, device, 0, writer, "overfit")
    settings = InferenceSettings(model=module.model.config, transform=tcfg, schedule=module.schedule_config,
                                 buckets=buckets(), source="probe overfit run")
    reference = reference_from_keypoints(clip["frames"][0], clip["keypoints"][0], tcfg, clips.SIZE)
    per_frame = round(AUDIO_SAMPLE_RATE / clips.FPS)
    wave = clip["audio"][clips.MOTION * per_frame :]
    clarity = float(np.nanmean(clip["hand_clarity"][clips.MOTION :]))
    config = GenerateConfig(steps=s.sample_steps, num_frames=clips.TARGETS, num_motion=clips.MOTION,
                            hand_clarity=clarity, seed=0)
    segments: list[Tensor] = []
    generate_video(module.model, reference, wave, None, settings=settings, config=config, progress=False,
                   on_latents=segments.append)
    with torch.no_grad():
        frames = torch.from_numpy(clip["frames"]).permute(0, 3, 1, 2).to(device)
        truth = module.model.encode_images(to_unit(frames[clips.MOTION :]))[None]  # (1, 2T, 4, h, w)
        ref = module.model.encode_images(to_unit(frames[:1]))  # (1, 4, h, w)
    sample = torch.cat(segments, 1).float()
    base = ref[:, None].expand_as(truth)
    mse = [float((a - truth).pow(2).mean()) for a in (sample, base)]
    t = clips.TARGETS
    seg = [float((sample[:, i * t : (i + 1) * t] - truth[:, i * t : (i + 1) * t]).pow(2).mean()) for i in range(2)]
    out = {"train_steps": s.overfit_steps, "steps_done": done, "train_loss": final, "sample_steps": s.sample_steps,
           "schedule": dataclasses.asdict(OVERFIT_SCHEDULE), "dropout": OVERFIT_DROPOUT,
           "mse_sampled": mse[0], "mse_baseline": mse[1], "mse_segments": seg,
           "margin_db": 10 * math.log10(mse[1] / mse[0]),
           "margin_db_segments": [10 * math.log10(mse[1] / m) for m in seg], "seconds": time.perf_counter() - t0}
    out["verdict"] = "pass" if out["margin_db"] >= OVERFIT_MIN_DB and min(out["margin_db_segments"]) > 0 else "FAIL"
    if writer is not None:
        writer.add_scalar("overfit/margin_db", out["margin_db"], 0)
        writer.close()
    print(f"overfit: margin {out['margin_db']:.2f} dB (segments {out['margin_db_segments'][0]:.2f} / "
          f"{out['margin_db_segments'][1]:.2f}), {out['seconds']:.0f} s", flush=True)
    return out


# ============================================================================ report and CLI


def format_table(rows: list[dict[str, Any]], overfit: dict[str, Any] | None) -> str:
    """The table printed by ``make probe``."""
    lines = [f"{'condition':<30} {'network':<13} {'how':<30} {'where':<6} {'gap':>9} {'rel gap':>8} {'spread':>7}"
             f" {'frame':>7} {'>noise':>6}  verdict", "-" * 137]
    for r in rows:
        head = f"{r['condition']:<30} {r['network']:<13} {r['how']:<30} {r['where']:<6}"
        if r["verdict"] == "n/a":
            lines.append(f"{head} {'':>9} {'':>8} {'':>7} {'':>7} {'':>6}  n/a: {r['note']}")
        else:
            above = f"{r['seeds_above_noise']}/{len(r['per_seed'])}"
            lines.append(f"{head} {r['gap']:>9.5f} {r['rel_gap']:>7.2%} {r['spread']:>6.2%} {r['rel_gap_frame']:>6.2%}"
                         f" {above:>6}  {r['verdict']}")
    if overfit is not None:
        segs = "/".join(f"{m:.1f}" for m in overfit["margin_db_segments"])
        lines.append(f"{'overfit + generate (2 seg.)':<30} {'stage2':<13} {'vs reference repeated':<30} {'frame':<6} "
                     f"{overfit['margin_db']:>7.2f}dB {'segments ' + segs:>24}  {overfit['verdict']}")
    return "\n".join(lines)


def run(device: str, size: str, seeds: int, out: Path, networks: tuple[str, ...] = tuple(NETWORKS),
        overfit: bool = True, settings: Settings | None = None, jobs: int | None = None,
        tensorboard: Path | None = None) -> dict[str, Any]:
    """The whole suite; writes ``out/probes.json`` as results come in, TensorBoard logs to ``tensorboard``.

    Args:
        device: ``cpu`` or ``cuda``.
        size: preset and network size.
        seeds: networks trained per probe network.
        out: output folder.
        networks: keys of :data:`NETWORKS` to run.
        overfit: run the overfit-and-sample test.
        settings: instead of the preset.
        jobs: (network, seed) jobs run at once (None: ``settings.jobs``), each in its own process with
            ``torch.get_num_threads() // jobs`` threads (1: all in this process). On a loaded
            2-core machine two 1-thread jobs are far faster than one 2-thread job (OpenMP's
            threads wait for each other when the cores are shared); on a GPU several jobs fill it.
        tensorboard: TensorBoard folder (None: ``out/tb``): per job the training loss and the gaps,
            and the final table as text.
    """
    tb = out / "tb" if tensorboard is None else tensorboard
    if size == "wide":
        register_wide()
    s = settings or PRESETS[size]
    jobs = s.jobs if jobs is None else jobs
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else 0
    report: dict[str, Any] = {"device": device, "size": s.size, "seeds": seeds, "settings": dataclasses.asdict(s),
                              "t_range": list(T_RANGE), "jobs": jobs,
                              "torch_threads_per_job": threads or torch.get_num_threads()}
    done: list[dict[str, Any]] = []
    over: dict[str, Any] | None = None

    def results() -> list[dict[str, Any]]:
        grouped = []
        for name in networks:
            per_seed = sorted((r for r in done if r["network"] == name), key=lambda r: r["seed"])
            if per_seed:
                i = list(NETWORKS).index(name)
                grouped.append({"network": name, "stage": NETWORKS[name].stage, "mode": NETWORKS[name].mode,
                                "steps": s.steps[i], "batch": s.batch[i], "per_seed": per_seed})
        return grouped

    def save() -> None:
        grouped = results()
        report.update(table=table(grouped), overfit=over, networks=grouped, seconds=time.perf_counter() - t0)
        (out / "probes.json").write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory(prefix="probe-clips-") as tmp:
        root = Path(tmp)
        tasks: list[tuple[Any, tuple[Any, ...]]] = []
        for name in networks:
            net = NETWORKS[name]
            train_dir = clips.write_probe_shards(root / f"{name}/train", net.clips, s.train_clips, seed=0)
            held_dir = clips.write_probe_shards(root / f"{name}/held_out", net.clips, s.eval_clips, seed=100_000)
            tasks += [(probe_seed, (name, seed, s, device, train_dir, held_dir, tb / f"{name}-seed{seed}",
                                    threads)) for seed in range(seeds)]
        if overfit and s.overfit_steps:
            tasks.append((overfit_and_sample, (s, device, root, tb / "overfit", threads)))
        tasks.sort(key=lambda task: -_cost(task, s))  # longest first: the pool ends together
        if jobs <= 1:
            for fn, args in tasks:
                result = fn(*args)
                over = result if fn is overfit_and_sample else over
                if fn is probe_seed:
                    done.append(result)
                save()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(fn, *args): fn for fn, args in tasks}
                for future in as_completed(futures):
                    if futures[future] is overfit_and_sample:
                        over = future.result()
                    else:
                        done.append(future.result())
                    save()
    save()
    writer = _writer(tb)
    writer.add_text("probes/table", "    " + format_table(report["table"], over).replace("\n", "\n    "))
    writer.close()
    return report


def _cost(task: tuple[Any, tuple[Any, ...]], s: Settings) -> float:
    """Rough relative run time of a job (training steps times the per-step cost of its stage)."""
    fn, args = task
    if fn is overfit_and_sample:  # first: the longest job on the CPU (252 s against 128 s), never time-capped
        return math.inf
    i = list(NETWORKS).index(args[0])
    return s.steps[i] * s.batch[i] * (2.5 if NETWORKS[args[0]].stage == 2 else 1.0)


def main(argv: list[str] | None = None) -> int:
    """CLI entry; exit status 1 when any probe that ran fails."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.run", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--size", default="tiny", choices=sorted(PRESETS), help="network size and run length preset")
    p.add_argument("--seeds", type=int, default=3, help="networks trained per probe network")
    p.add_argument("--out", type=Path, default=Path("runs/probe"), help="folder of probes.json and tb/")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--steps", type=int, nargs=len(NETWORKS), default=None, metavar=tuple(n.upper() for n in NETWORKS),
                   help="override the training steps of each network")
    p.add_argument("--batch", type=int, nargs=len(NETWORKS), default=None, metavar=tuple(n.upper() for n in NETWORKS),
                   help="override the training batch size of each network")
    p.add_argument("--overfit-steps", type=int, default=None, help="override the overfit test's steps (0: skip it)")
    p.add_argument("--sample-steps", type=int, default=None, help="override the overfit test's DDIM steps")
    p.add_argument("--no-overfit", action="store_true", help="skip the overfit-and-sample test")
    p.add_argument("--jobs", type=int, default=None, help="(network, seed) jobs at once, in processes (default: preset)")
    p.add_argument("--tensorboard", type=Path, default=None, help="TensorBoard folder (default: OUT/tb)")
    p.add_argument("--max-train-seconds", type=float, default=None,
                   help="cap on each job's training time, seconds (default: preset; 0: none)")
    p.add_argument("--audio", choices=AUDIO_FEATURES, default=None,
                   help="stage-2 frozen audio features (default: preset, bands; see Settings.audio)")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps and clips per job: checks that the command runs (its numbers mean nothing)")
    args = p.parse_args(argv)
    s = PRESETS[args.size]
    if args.smoke:
        s = dataclasses.replace(s, **SMOKE)
    if args.max_train_seconds is not None:
        s = dataclasses.replace(s, max_train_seconds=args.max_train_seconds)
    if args.steps:
        s = dataclasses.replace(s, steps=tuple(args.steps))
    if args.batch:
        s = dataclasses.replace(s, batch=tuple(args.batch))
    if args.overfit_steps is not None:
        s = dataclasses.replace(s, overfit_steps=args.overfit_steps)
    if args.sample_steps is not None:
        s = dataclasses.replace(s, sample_steps=args.sample_steps)
    if args.audio is not None:
        s = dataclasses.replace(s, audio=args.audio)
    report = run(args.device, args.size, args.seeds, args.out, tuple(args.networks), not args.no_overfit, s,
                 args.jobs, args.tensorboard)
    print(format_table(report["table"], report["overfit"]))
    print(f"{report['seconds']:.0f} s on {args.device} ({torch.get_num_threads()} threads); wrote {args.out / 'probes.json'}")
    if args.smoke:
        print("smoke run: the command works end to end; its gaps and verdicts mean nothing")
        return 0
    bad = [r for r in report["table"] if r["verdict"] == "FAIL"] + (
        [report["overfit"]] if report["overfit"] and report["overfit"]["verdict"] == "FAIL" else [])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
