"""Condition probes: does the network learn each condition? (``make probe``; PROBES.md has the results)

For each stage, a small network is trained briefly on probe clips (:mod:`benchmarks.probes.clips`,
whose targets depend on each condition in a known way) through the real DataModules and the
stage's LightningModule ``model_step``. Then, on held-out clips, the diffusion loss with the true
conditions is compared with the loss of the *same* batch, noise and timesteps with one condition
shuffled across the batch (or set to its dropped value): the **gap**. A network that reads a
condition has a gap clearly above zero; its spread over seeds is reported. An overfit-and-sample
test then trains on one clip and samples it with the project's sampler, two-scale guidance and
motion-frame continuation; the samples must be much closer to the clip's latents than the
reference latent repeated (margin in dB).

What this proves: each condition is wired into the network and learnable. What it does not:
image quality, or anything about real pretrained weights.

Training and evaluation draw timesteps from ``T_RANGE`` only (400-999: noisy enough that the
clean image is not readable from the noised latent, so the conditions decide the prediction); the
overfit test trains on all timesteps, since its sampler visits all of them. The random VAE's
``scaling_factor`` is calibrated to unit-variance latents first (:func:`calibrate_latents`).

``python -m benchmarks.probes.run --device cpu|cuda --size tiny|wide --seeds 3 --out DIR``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.probes import clips
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.datamodule import Stage1DataModule, Stage2DataModule
from cyberhost.data.transforms import TransformConfig
from cyberhost.diffusion import GuidedSampler, SamplerConfig
from cyberhost.models import CyberHostConfig
from cyberhost.models.conditioning import guided_denoiser
from cyberhost.models.config import SIZES
from cyberhost.training.module import CyberHostModule, OptimConfig
from cyberhost.training.stages import RANDOM_STAGE1, Stage1Module, Stage2Module

# ============================================================================ THE condition table
# All knowledge of which batch keys carry each condition lives here (and in the two adapters
# below it): when the batch contract changes, this is the one place to edit.


@dataclass(frozen=True)
class Probe:
    """One row of the probe table.

    Attributes:
        name: condition (table row).
        stage: 1 or 2.
        shuffle: batch keys rolled by one sample across the batch (together).
        drop: batch keys set to this value instead (the condition's 'dropped' form).
        context: batch keys set in both the true and the altered batch (e.g. reference dropped).
        mode: transform mode the probe needs (``None``: any).
    """

    name: str
    stage: int
    shuffle: tuple[str, ...] = ()
    drop: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None


PROBES: tuple[Probe, ...] = (
    Probe("reference", 1, shuffle=("reference",)),
    Probe("reference (dropped)", 1, drop={"drop_reference": True}),
    Probe("pose-aligned reference", 1, shuffle=("reference_skeleton",)),
    Probe("movement map | reference dropped", 1, shuffle=("driving_map",), context={"drop_reference": True}),
    Probe("movement map", 1, shuffle=("driving_map",)),
    Probe("audio", 2, shuffle=("audio",)),
    Probe("audio (dropped)", 2, drop={"drop_audio": True}),
    Probe("motion frames", 2, shuffle=("motion", "motion_from_reference")),
    Probe("hand clarity", 2, shuffle=("hand_clarity", "hand_clarity_valid")),
    Probe("identity crops", 2, shuffle=("face_crop", "face_crop_valid", "hand_crops", "hand_crops_valid")),
    Probe("skeleton maps (video mode)", 2, shuffle=("driving_map",), mode="video"),
)
"""Condition -> how to take it away. ``loss_diffusion`` is compared (the heatmap/mask terms read targets)."""
MOTION_KEY = "motion"
"""Batch key of the motion frames (the overfit test replaces them by generated latents)."""
REFERENCE_KEYS = ("reference", "reference_skeleton", "face_crop", "face_crop_valid", "hand_crops", "hand_crops_valid")
"""Batch keys that come from the reference frame (kept across continuation segments)."""


def network_inputs(module: CyberHostModule, batch: dict[str, Tensor], latents: dict[str, Tensor]) -> dict[str, Any]:
    """The stage's network inputs of a batch, nothing dropped (sampling)."""
    return module.conditions(batch, latents, dropout=False)


def cfg_denoiser(module: CyberHostModule, cond: dict[str, Any]) -> Any:
    """``cyberhost generate``'s batched two-scale CFG denoiser over these inputs."""
    return guided_denoiser(module.model, cond)


# ============================================================================ settings

T_RANGE = (400, 1000)
"""Timesteps of probe training and evaluation (see the module docstring)."""


@dataclass
class Settings:
    """Sizes of one probe run (``--size`` picks a preset; the GPU preset is wider and longer).

    Attributes:
        size: network size (``tiny`` or ``wide``, a 4x wider tiny registered here).
        steps: training steps per stage and seed.
        batch: training batch size.
        lr: AdamW learning rate.
        train_clips: training clips per stage.
        eval_clips: held-out clips per stage (one batch each ``eval_batch``).
        eval_batch: held-out batch size.
        draws: noise/timestep draws per held-out batch.
        overfit_steps: steps of the overfit-and-sample test (0: skip it).
        sample_steps: DDIM steps of its sampler.
    """

    size: str = "tiny"
    steps: tuple[int, int] = (400, 250)
    batch: int = 4
    lr: float = 1e-3
    train_clips: int = 384
    eval_clips: int = 16
    eval_batch: int = 8
    draws: int = 2
    overfit_steps: int = 150
    sample_steps: int = 10


PRESETS = {
    "tiny": Settings(),
    "wide": Settings(size="wide", steps=(1500, 1000), batch=8, train_clips=1024, eval_clips=32, draws=4,
                     overfit_steps=600, sample_steps=25),
}


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


def transform(stage: int) -> TransformConfig:
    """Probe transform: whole-frame crop, the probe clip lengths, some dropout for the dropped rows."""
    return TransformConfig(min_gap=1, num_frames=clips.TARGETS if stage == 2 else 1, num_motion=clips.MOTION,
                           crop_scale=(1.0, 1.0), face_crop=64, hand_crop=128,
                           p_drop_reference=0.3 if stage == 1 else 0.05, p_drop_audio=0.1)


def datamodule(stage: int, train: Path, held_out: Path, s: Settings, seed: int) -> Stage1DataModule | Stage2DataModule:
    """The stage's real DataModule over the probe shards."""
    cls = Stage1DataModule if stage == 1 else Stage2DataModule
    return cls(train_shards=str(train), val_shards=str(held_out), batch_size=s.batch, val_batch_size=s.eval_batch,
               val_batches=max(1, s.eval_clips // s.eval_batch), num_workers=0, shuffle_buffer=64, seed=seed,
               samples_per_epoch=1 << 20, pin_memory=False, buckets=BucketConfig(area=clips.SIZE[0] * clips.SIZE[1], multiple=16, sizes=[list(clips.SIZE)]),
               transform=transform(stage))


def build_module(stage: int, s: Settings, seed: int, device: str) -> CyberHostModule:
    """A random-init module of the stage (stage 2 from random stage-1 weights, every part trained)."""
    torch.manual_seed(seed)
    cfg = CyberHostConfig(size=s.size, stage=stage, stage2_trainable="all")
    optim = OptimConfig(lr=s.lr, weight_decay=0.0)
    module = Stage1Module(model=cfg, optim=optim, seed=seed) if stage == 1 else Stage2Module(
        RANDOM_STAGE1, model=cfg, optim=optim, seed=seed)
    return module.to(device)


@torch.no_grad()
def calibrate_latents(module: CyberHostModule, batch: dict[str, Tensor]) -> float:
    """Set the random VAE's ``scaling_factor`` so the probe latents have unit variance; returns it.

    SD-1.5's 0.18215 is 1 / std of *its* VAE's latents. A random tiny VAE's latents scaled by it
    have a std of a few hundredths, so the noise swamps the image at all but the smallest
    timesteps and no condition can change the loss much. This calibrates the factor the way SD's
    was chosen, on the target frames of one training batch.
    """
    vae = module.model.vae
    vae.register_to_config(scaling_factor=1.0)
    images = batch["target"].flatten(0, 1).to(next(vae.parameters()).device)
    std = float(module.model.encode_images(images.float() / 127.5 - 1.0).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return 1.0 / std


def restrict_timesteps(module: CyberHostModule, lo: int, hi: int) -> None:
    """Make ``model_step`` draw timesteps uniformly from ``[lo, hi)`` (same generator use as the schedule)."""

    def sample(batch: int, device: Any = "cpu", generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(lo, hi, (batch,), generator=generator).to(device)

    module.schedule.sample_timesteps = sample


def to_device(batch: dict[str, Tensor], device: str) -> dict[str, Tensor]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


# ============================================================================ training and the gap


def train(module: CyberHostModule, loader: Any, steps: int, device: str, seed: int, writer: Any, tag: str) -> float:
    """Plain AdamW loop over ``model_step``; returns the mean loss of the last 20 steps."""
    opt = module.configure_optimizers()["optimizer"]
    params = [p for p in module.parameters() if p.requires_grad]
    module.train()
    losses = []
    for step, batch in zip(range(steps), loader, strict=False):
        loss, logs = module.model_step(to_device(batch, device), torch.Generator().manual_seed(seed * 100_003 + step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(logs["loss_diffusion"]))
        if writer is not None:
            writer.add_scalar(f"{tag}/train/loss_diffusion", losses[-1], step)
    return float(np.mean(losses[-20:]))


def altered(batch: dict[str, Tensor], probe: Probe) -> dict[str, Tensor]:
    """The batch with the probe's condition shuffled across the batch or set to its dropped value."""
    out = dict(batch)
    for key in probe.shuffle:
        out[key] = torch.roll(batch[key], 1, dims=0)
    for key, value in probe.drop.items():
        out[key] = torch.full_like(batch[key], value)
    return out


def with_context(batch: dict[str, Tensor], probe: Probe) -> dict[str, Tensor]:
    out = dict(batch)
    for key, value in probe.context.items():
        out[key] = torch.full_like(batch[key], value)
    return out


@torch.no_grad()
def gaps(module: CyberHostModule, batches: list[dict[str, Tensor]], probes: list[Probe], draws: int) -> dict[str, Any]:
    """Held-out ``loss_diffusion`` with the true conditions and each probe's gap (same noise and timesteps)."""
    module.eval()
    true: dict[str, list[float]] = {p.name: [] for p in probes}
    alt: dict[str, list[float]] = {p.name: [] for p in probes}

    def loss(batch: dict[str, Tensor], seed: int) -> float:
        return float(module.model_step(batch, torch.Generator().manual_seed(seed))[1]["loss_diffusion"])

    for i, batch in enumerate(batches):
        for d in range(draws):
            seed, cache = 10_000 + 97 * i + d, {}
            for p in probes:
                base = with_context(batch, p)
                ctx = tuple(sorted(p.context.items()))
                if ctx not in cache:  # one true loss per context
                    cache[ctx] = loss(base, seed)
                true[p.name].append(cache[ctx])
                alt[p.name].append(loss(altered(base, p), seed))
    out = {}
    for p in probes:
        t, a = np.array(true[p.name]), np.array(alt[p.name])
        out[p.name] = {"loss_true": float(t.mean()), "loss_altered": float(a.mean()), "gap": float((a - t).mean()),
                       "rel_gap": float((a - t).mean() / t.mean())}
    return out


def supported(probe: Probe) -> str | None:
    """Why a probe cannot run here (None: it can): the probe networks train in ``transform(stage).mode``."""
    mode = getattr(transform(probe.stage), "mode", "audio")
    if probe.mode is not None and probe.mode != mode:
        return f"needs a network trained with transform.mode={probe.mode!r} and clips whose pose moves (not built yet)"
    return None


def run_stage(stage: int, s: Settings, seeds: int, device: str, root: Path, writer: Any) -> dict[str, Any]:
    """Train ``seeds`` networks of one stage and measure every runnable probe of that stage."""
    probes = [p for p in PROBES if p.stage == stage and supported(p) is None]
    train_dir = clips.write_probe_shards(root / f"stage{stage}/train", stage, s.train_clips, seed=0)
    held_dir = clips.write_probe_shards(root / f"stage{stage}/held_out", stage, s.eval_clips, seed=100_000,
                                        held_out=True)
    per_seed = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        dm = datamodule(stage, train_dir, held_dir, s, seed)
        module = build_module(stage, s, seed, device)
        restrict_timesteps(module, *T_RANGE)
        loader = iter(dm.train_dataloader())
        calibrate_latents(module, next(loader))
        final = train(module, loader, s.steps[stage - 1], device, seed, writer,
                      f"stage{stage}/seed{seed}")
        batches = [to_device(b, device) for b in dm.val_dataloader()]
        result = gaps(module, batches, probes, s.draws)
        per_seed.append({"seed": seed, "train_loss": final, "seconds": time.perf_counter() - t0, "probes": result})
        for name, r in result.items():
            if writer is not None:
                writer.add_scalar(f"stage{stage}/gap/{name}", r["gap"], seed)
        print(f"stage {stage} seed {seed}: train loss {final:.4f}, {time.perf_counter() - t0:.0f} s; "
              + ", ".join(f"{n}: {r['rel_gap']:+.2%}" for n, r in result.items()), flush=True)
    return {"stage": stage, "steps": s.steps[stage - 1], "per_seed": per_seed}


MIN_REL_GAP = 0.01
"""Smallest mean relative gap (1 % of the true loss) that counts as clearly above zero."""


def verdict(rel: list[float]) -> str:
    """``pass``: every seed's gap > 0, the mean > 2 standard errors and >= ``MIN_REL_GAP``; ``weak``: mean > 0; else ``FAIL``."""
    mean = float(np.mean(rel))
    sem = float(np.std(rel, ddof=1) / math.sqrt(len(rel))) if len(rel) > 1 else 0.0
    if min(rel) > 0 and mean > max(2 * sem, MIN_REL_GAP):
        return "pass"
    return "weak" if mean > 0 else "FAIL"


def table(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per probe: gap (absolute and relative to the true loss), spread over seeds, verdict."""
    rows = []
    for p in PROBES:
        why = supported(p)
        st = next((x for x in stages if x["stage"] == p.stage), None)
        if why is not None or st is None:
            rows.append({"condition": p.name, "stage": p.stage, "how": _how(p), "verdict": "n/a",
                         "note": why or "stage not run"})
            continue
        rel = [r["probes"][p.name]["rel_gap"] for r in st["per_seed"]]
        gap = [r["probes"][p.name]["gap"] for r in st["per_seed"]]
        rows.append({"condition": p.name, "stage": p.stage, "how": _how(p), "gap": float(np.mean(gap)),
                     "rel_gap": float(np.mean(rel)), "spread": float(np.std(rel, ddof=1)) if len(rel) > 1 else 0.0,
                     "per_seed": rel, "verdict": verdict(rel)})
    return rows


def _how(p: Probe) -> str:
    how = "shuffled" if p.shuffle else "dropped"
    return how + (" (" + ", ".join(f"{k}={v}" for k, v in p.context.items()) + ")" if p.context else "")


# ============================================================================ overfit and sample


def overfit_and_sample(s: Settings, device: str, root: Path, writer: Any) -> dict[str, Any]:
    """Train stage 2 on one clip, then sample two continued segments with the project's sampler and CFG.

    Segment 1 uses the clip's motion frames; segment 2 (the next ``TARGETS`` frames) uses the last
    ``MOTION`` latents segment 1 generated, as ``cyberhost generate`` continues. Returns the MSE of
    the sampled latents to the clip's latents, of the baseline (reference latent repeated), and the
    margin ``10 log10(baseline / sampled)`` in dB.
    """
    t0 = time.perf_counter()
    n = clips.MOTION + 2 * clips.TARGETS
    clip = clips.stage2_clip("probeover-0000", 7, num_frames=n)
    train_dir = clips.write_clips(root / "overfit/train", [clip])
    seg2 = clips.write_clips(root / "overfit/seg2", [clips.sub_clip(clip, clips.TARGETS, clips.MOTION + clips.TARGETS)])
    s1 = dataclasses.replace(s, batch=2, eval_batch=1, eval_clips=1)
    dm = datamodule(2, train_dir, train_dir, s1, 0)
    module = build_module(2, s1, 0, device)
    loader = iter(dm.train_dataloader())
    calibrate_latents(module, next(loader))
    final = train(module, loader, s.overfit_steps, device, 0, writer, "overfit")
    module.eval()
    first = to_device(next(iter(dm.val_dataloader())), device)
    second = to_device(next(iter(datamodule(2, seg2, seg2, s1, 0).val_dataloader())), device)
    second.update({k: first[k] for k in REFERENCE_KEYS})
    sampler = GuidedSampler(module.schedule.sampling_scheduler(), SamplerConfig(steps=s.sample_steps))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lat1, lat2 = module.encode(first), module.encode(second)
        x1 = sampler.sample(cfg_denoiser(module, network_inputs(module, first, lat1)),
                            tuple(lat1["target"].shape), device, gen)
        lat2["motion"] = x1[:, -clips.MOTION:]  # continuation: the last generated latents
        x2 = sampler.sample(cfg_denoiser(module, network_inputs(module, second, lat2)),
                            tuple(lat2["target"].shape), device, gen)
    truth = torch.cat([lat1["target"], lat2["target"]], 1)
    sample = torch.cat([x1, x2], 1)
    base = lat1["reference"][:, None].expand_as(truth)
    mse = [float((a - truth).pow(2).mean()) for a in (sample, base)]
    seg = [float((x - t).pow(2).mean()) for x, t in ((x1, lat1["target"]), (x2, lat2["target"]))]
    out = {"train_steps": s.overfit_steps, "train_loss": final, "sample_steps": s.sample_steps,
           "mse_sampled": mse[0], "mse_baseline": mse[1], "mse_segments": seg,
           "margin_db": 10 * math.log10(mse[1] / mse[0]), "seconds": time.perf_counter() - t0}
    out["verdict"] = "pass" if out["margin_db"] >= OVERFIT_MIN_DB else "FAIL"
    return out


OVERFIT_MIN_DB = 3.0
"""Smallest margin (dB) over the repeated-reference baseline the overfit test accepts."""


# ============================================================================ report and CLI


def format_table(rows: list[dict[str, Any]], overfit: dict[str, Any] | None) -> str:
    """The table printed by ``make probe``."""
    lines = [f"{'condition':<34} {'st':>2} {'how':<30} {'gap':>9} {'rel gap':>8} {'spread':>7}  verdict",
             "-" * 104]
    for r in rows:
        if r["verdict"] == "n/a":
            lines.append(f"{r['condition']:<34} {r['stage']:>2} {r['how']:<30} {'':>9} {'':>8} {'':>7}  n/a: {r['note']}")
        else:
            lines.append(f"{r['condition']:<34} {r['stage']:>2} {r['how']:<30} {r['gap']:>9.5f} {r['rel_gap']:>7.2%} "
                         f"{r['spread']:>6.2%}  {r['verdict']}")
    if overfit is not None:
        lines.append(f"{'overfit + sample (2 segments)':<34} {2:>2} {'vs reference repeated':<30} "
                     f"{overfit['margin_db']:>7.2f}dB {'':>8} {'':>7}  {overfit['verdict']}")
    return "\n".join(lines)


def run(device: str, size: str, seeds: int, out: Path, stages: tuple[int, ...] = (1, 2), overfit: bool = True,
        settings: Settings | None = None) -> dict[str, Any]:
    """The whole suite; writes ``out/probes.json`` (and TensorBoard logs under ``out/tb``) and returns the report."""
    if size == "wide":
        register_wide()
    s = settings or PRESETS[size]
    out.mkdir(parents=True, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probe-clips-") as tmp:
        results = [run_stage(st, s, seeds, device, Path(tmp), writer) for st in stages]
        over = overfit_and_sample(s, device, Path(tmp), writer) if overfit and s.overfit_steps else None
    report = {"device": device, "size": s.size, "seeds": seeds, "settings": dataclasses.asdict(s),
              "t_range": list(T_RANGE), "table": table(results), "overfit": over, "stages": results,
              "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
    (out / "probes.json").write_text(json.dumps(report, indent=2))
    writer.add_text("probes/table", "    " + format_table(report["table"], over).replace("\n", "\n    "))
    writer.close()
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry; exit status 1 when any runnable probe fails."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.run", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--size", default="tiny", choices=sorted(PRESETS), help="network size and run length preset")
    p.add_argument("--seeds", type=int, default=3, help="networks trained per stage")
    p.add_argument("--out", type=Path, default=Path("runs/probe"), help="folder of probes.json and tb/")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--steps", type=int, nargs=2, default=None, metavar=("STAGE1", "STAGE2"), help="override steps")
    p.add_argument("--no-overfit", action="store_true", help="skip the overfit-and-sample test")
    args = p.parse_args(argv)
    s = PRESETS[args.size]
    if args.steps:
        s = dataclasses.replace(s, steps=tuple(args.steps))
    report = run(args.device, args.size, args.seeds, args.out, tuple(args.stages), not args.no_overfit, s)
    print(format_table(report["table"], report["overfit"]))
    print(f"{report['seconds']:.0f} s on {args.device} ({torch.get_num_threads()} threads); wrote {args.out / 'probes.json'}")
    bad = [r for r in report["table"] if r["verdict"] == "FAIL"] + (
        [report["overfit"]] if report["overfit"] and report["overfit"]["verdict"] == "FAIL" else [])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
