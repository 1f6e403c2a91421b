"""Training throughput through the real DataModule, LightningModule and Trainer.

``python -m benchmarks.train`` (GPU, sd15 size, 640x384, random init, bf16-mixed) writes
synthetic shards to a temp folder, then per stage runs ``Trainer.fit`` with a timing callback and
reports samples/s and frames/s (timed wall time, waiting for data included), the median step
time, model FLOPs per step (``torch.utils.flop_counter``, counted once, with checkpointing off so
that recomputation is not counted; the frozen encoders' share -- VAE, wav2vec2, ArcFace -- is
reported beside it), MFU against a measured bf16 matmul peak, peak memory and the fraction of
wall time spent waiting for data. ``--yardstick`` also times the plain eager diffusers steps
(:mod:`benchmarks.model_step` ``yard1``/``yard2``) in the same process, for a side-by-side table.
``--size tiny --device cpu`` is a smoke test (timings on CPU mean nothing).

A step here is a whole optimiser step as the Trainer runs it: VAE encoding, conditions, forward,
losses, backward, gradient clipping and AdamW.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.model_step import COMPILE_DYNAMIC, measure_peak
from benchmarks.synthetic import write_shards
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.datamodule import Stage1DataModule, Stage2DataModule
from cyberhost.data.transforms import TransformConfig
from cyberhost.models import CyberHostConfig
from cyberhost.models.blocks import CompileConfig, checkpointing_paused
from cyberhost.training.stages import RANDOM_STAGE1, Stage1Module, Stage2Module

PRESETS = {
    "sd15": {"area": 640 * 384, "multiple": 64, "frame": (672, 400), "batch1": 12, "batch2": 1, "frames": 12, "motion": 4},
    "tiny": {"area": 6144, "multiple": 16, "frame": (112, 80), "batch1": 4, "batch2": 1, "frames": 8, "motion": 4},
}


class StepTimer(L.Callback):
    """Per-step wall time and time waiting for the next batch, after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.steps, self.waits = warmup, [], []
        self.all_steps: list[float] = []  # every step, warm-up (and compilation) included
        self.graphs_after_warmup = 0
        self._end: float | None = None
        self._start = 0.0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        self._start = time.perf_counter()
        if self._end is not None and trainer.global_step >= self.warmup:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        self._sync(module)
        now = time.perf_counter()
        self.all_steps.append(now - self._start)
        if trainer.global_step > self.warmup:
            self.steps.append(now - self._start)
        elif trainer.global_step == self.warmup:
            self.graphs_after_warmup = int(counters["stats"]["unique_graphs"])
        self._end = now


FROZEN_ENCODERS = ("Encoder", "Wav2Vec2Model", "IResNet")
"""Top-level names FlopCounterMode gives the frozen encoders' calls (VAE encoder, wav2vec2, ArcFace)."""


def count_flops(module: Any, dm: Any, device: torch.device, precision: str) -> tuple[float, float]:
    """(all, frozen-encoder) FLOPs of one training step (forward + backward) on one batch.

    Counted with gradient checkpointing off: recomputation is not useful work (it shows as a lower MFU).
    """
    batch = {k: v.to(device) for k, v in next(iter(dm.train_dataloader())).items()}
    module.to(device).train()
    ckpt = module.hparams.gradient_checkpointing
    full = ckpt is True
    if full:
        module.model.enable_gradient_checkpointing(False)
    ctx = torch.autocast(device.type, torch.bfloat16) if precision.startswith("bf16") else torch.autocast(device.type, enabled=False)
    with FlopCounterMode(display=False) as counter, ctx, checkpointing_paused(), torch.compiler.set_stance("force_eager"):
        loss, _ = module.model_step(batch)
        loss.backward()
    module.zero_grad(set_to_none=True)
    if full:
        module.model.enable_gradient_checkpointing(True)
    counts = counter.get_flop_counts()
    frozen = sum(sum(counts.get(name, {}).values()) for name in FROZEN_ENCODERS)
    return float(counter.get_total_flops()), float(frozen)


def build(stage: int, size: str, shards: Path, workers: int, gc: bool | list[str], channels_last: bool = False,
          device: torch.device | None = None, stage2_trainable: str = "all", fast: dict | None = None) -> tuple[Any, Any, int]:
    """Module (random init on ``device``: building sd15 on the CPU is slow), DataModule and frames per sample."""
    p = PRESETS[size]
    buckets = BucketConfig(area=p["area"], multiple=p["multiple"], tolerance=0.15)
    tf = TransformConfig(num_frames=p["frames"], num_motion=p["motion"], min_gap=2)
    cfg = CyberHostConfig(size=size, stage=stage, stage2_trainable=stage2_trainable)
    with torch.device(device or "cpu"):
        if stage == 1:
            module = Stage1Module(model=cfg, gradient_checkpointing=gc, channels_last=channels_last, **(fast or {}))
        else:
            module = Stage2Module(RANDOM_STAGE1, model=cfg, gradient_checkpointing=gc, channels_last=channels_last,
                                  **(fast or {}))
    if stage == 1:
        dm_cls, batch, frames = Stage1DataModule, p["batch1"], 1
    else:
        dm_cls, batch, frames = Stage2DataModule, p["batch2"], p["frames"]
    dm = dm_cls(str(shards), batch_size=batch, num_workers=workers, samples_per_epoch=10**6, val_batches=0,
                buckets=buckets, transform=tf)
    return module, dm, frames


def run_stage(stage: int, args: argparse.Namespace, shards: Path, peak: float) -> dict[str, Any]:
    """Fit ``warmup + steps`` steps of one stage and report its throughput."""
    device = torch.device(args.device)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    dynamic = COMPILE_DYNAMIC[args.compile_dynamic]
    classes = tuple(args.compile_classes or ())
    compile_cfg = CompileConfig(enabled=args.compile, dynamic=dynamic, vae=args.compile_vae == "true", classes=classes,
                                backend=args.compile_backend)
    fast = {"compile": compile_cfg, "frozen_bf16": args.frozen_bf16}
    gc_setting = args.checkpoint or args.gradient_checkpointing
    module, dm, frames = build(stage, args.size, shards, args.workers, gc_setting,
                               args.channels_last, device, args.stage2_trainable, fast)
    flops, frozen_flops = count_flops(module, dm, device, precision)
    if args.host_nan_check:  # the guard as it was: the loss read on the host between forward and backward
        module._device_skip_optimizer = lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                        max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer], gradient_clip_val=1.0)
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - fit_start
    graphs = int(counters["stats"]["unique_graphs"])
    step = statistics.median(timer.steps)
    batch = dm.batch_size
    timed = min(len(timer.steps), len(timer.waits))  # step i waited waits[i] for its batch
    wall = sum(timer.steps[:timed]) + sum(timer.waits[:timed])
    per_step = wall / max(1, timed)
    row = {
        "stage": stage, "size": args.size, "device": str(device), "device_name": _device_name(device),
        "batch": batch, "frames_per_sample": frames, "gradient_checkpointing": args.gradient_checkpointing,
        "channels_last": args.channels_last, "stage2_trainable": args.stage2_trainable if stage == 2 else None,
        "trainable_params_m": sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6, "step_s": step, "wall_s_per_step": per_step,
        "samples_per_s": batch / per_step, "frames_per_s": batch * frames / per_step,
        "tflop_per_step": flops / 1e12, "frozen_encoder_tflop": frozen_flops / 1e12,
        "compile": args.compile, "compile_dynamic": args.compile_dynamic, "compile_vae": compile_cfg.vae, "compile_backend": compile_cfg.backend,
        "compile_classes": list(classes) or "all", "host_nan_check": args.host_nan_check, "first_step_s": timer.all_steps[0], "frozen_bf16": args.frozen_bf16, "checkpoint_patterns": args.checkpoint or None,
        "warmup_s": sum(timer.all_steps[:args.warmup + 1]), "fit_s": fit_s,
        "compiled_graphs": graphs, "graphs_compiled_in_timed_steps": graphs - timer.graphs_after_warmup,
        "mfu_datasheet_989": flops / per_step / 989e12,
        "mfu": flops / per_step / peak, "mfu_trained_network": (flops - frozen_flops) / per_step / peak,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "data_wait_fraction": sum(timer.waits[:timed]) / max(1e-9, wall), "steps_timed": len(timer.steps),
    }  # fmt: skip
    del trainer, module, dm
    return row


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; prints one JSON line per stage and returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(PRESETS), default="sd15")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    parser.add_argument("--clips", type=int, default=0,
                        help="synthetic clips written (0: 2 x workers x stage-1 batch, so every worker fills batches)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--checkpoint", nargs="+", default=[], metavar="REGEX",
                        help="selective checkpointing: only the blocks matching these regexes")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile (model.compile)")
    parser.add_argument("--compile-dynamic", choices=sorted(COMPILE_DYNAMIC), default="auto",
                        help="torch.compile dynamic= (auto: static first, then dynamic sizes)")
    parser.add_argument("--compile-classes", nargs="+", default=None, metavar="CLASS",
                        help="compile only these region classes (default: all of cyberhost.models.blocks.REGION_CLASSES)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (cudagraphs: CUDA graphs of the traced blocks, no code generation)")
    parser.add_argument("--compile-vae", choices=["true", "false"], default="true", help="also compile the VAE's blocks")
    parser.add_argument("--frozen-bf16", action="store_true", help="frozen VAE/UNet weights in bf16")
    parser.add_argument("--channels-last", action="store_true", help="channels-last conv weights")
    parser.add_argument("--stage2-trainable", choices=["all", "added"], default="all",
                        help="stage 2: train everything (the paper's end to end) or only what stage 2 adds")
    parser.add_argument("--yardstick", action="store_true",
                        help="also time the eager diffusers yardstick (benchmarks.model_step yard1, yard2) in this run")
    parser.add_argument("--host-nan-check", action="store_true",
                        help="the NaN/Inf guard's host check (a sync per step) instead of the device-side skip")
    parser.add_argument("--output", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    peak = measure_peak(device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        p = PRESETS[args.size]
        args.clips = args.clips or 2 * max(1, args.workers) * p["batch1"]
        shards = write_shards(Path(tmp), num_clips=args.clips, num_frames=max(20, p["frames"] + p["motion"] + 4),
                              size=p["frame"], clips_per_shard=max(1, args.clips // max(1, args.workers)))
        for stage in args.stages:
            row = run_stage(stage, args, shards, peak)
            row["peak_tflops"] = peak / 1e12
            print(json.dumps(row), flush=True)
            rows.append(row)
            _free(device)  # stage 1's weights and optimiser state must not count in stage 2's peak
    if args.yardstick:
        rows += yardstick_rows(args, peak)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))
    return rows


def yardstick_rows(args: argparse.Namespace, peak: float) -> list[dict[str, Any]]:
    """The eager diffusers steps of DESIGN.md's table, with this run's checkpointing setting."""
    from benchmarks import model_step as model_bench

    device = torch.device(args.device)
    p = PRESETS[args.size]
    h, w = (640, 384) if args.size == "sd15" else (64, 64)
    bench_args = model_bench.parse_args(["--size", args.size, "--device", args.device, "--steps", str(args.steps),
                                         "--warmup", str(args.warmup), "--batch", str(p["batch1"]),
                                         "--height", str(h), "--width", str(w)])
    rows = []
    for case in ("yard1", "yard2"):
        res = model_bench.run_case(case + ("_ckpt" if args.gradient_checkpointing else ""), bench_args, peak, device)
        row = {"yardstick": res.case, "step_s": res.time_s, "items_per_s": res.items_per_s, "mfu": res.mfu,
               "tflop_per_step": res.tflop_per_step, "peak_mem_gib": res.peak_mem_gib, "note": res.note}
        print(json.dumps(row), flush=True)
        rows.append(row)
        _free(device)
    return rows


if __name__ == "__main__":
    main()
