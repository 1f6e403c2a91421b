"""Training throughput through the real DataModule, LightningModule and Trainer.

``python -m cyberhost.training.bench`` (GPU, sd15 size, 640x384, random init, bf16-mixed) writes
synthetic shards to a temp folder, then per stage runs ``Trainer.fit`` with a timing callback and
reports samples/s, frames/s, model FLOPs per step (``torch.utils.flop_counter``, counted once),
MFU against a measured bf16 matmul peak, peak memory and the fraction of step time spent waiting
for data. ``--size tiny --device cpu`` is a smoke test (timings on CPU mean nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from cyberhost.data.buckets import BucketConfig
from cyberhost.data.datamodule import Stage1DataModule, Stage2DataModule
from cyberhost.data.transforms import TransformConfig
from cyberhost.models import CyberHostConfig
from cyberhost.training.stages import RANDOM_STAGE1, Stage1Module, Stage2Module
from cyberhost.training.synthetic import write_shards

PRESETS = {
    "sd15": {"area": 640 * 384, "multiple": 64, "frame": (672, 400), "batch1": 12, "batch2": 1, "frames": 12, "motion": 4},
    "tiny": {"area": 6144, "multiple": 16, "frame": (112, 80), "batch1": 4, "batch2": 1, "frames": 8, "motion": 4},
}


class StepTimer(L.Callback):
    """Per-step wall time and time waiting for the next batch, after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.steps, self.waits = warmup, [], []
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
        if trainer.global_step > self.warmup:
            self.steps.append(now - self._start)
        self._end = now


def measure_peak(device: torch.device) -> float:
    """Dense matmul FLOP/s (bf16 8192^3 on CUDA, fp32 512^3 on CPU)."""
    n, reps, dtype = (8192, 20, torch.bfloat16) if device.type == "cuda" else (512, 3, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def count_flops(module: Any, dm: Any, device: torch.device, precision: str) -> float:
    """Model FLOPs of one training step (forward + backward) on one batch."""
    batch = {k: v.to(device) for k, v in next(iter(dm.train_dataloader())).items()}
    module.to(device).train()
    ctx = torch.autocast(device.type, torch.bfloat16) if precision.startswith("bf16") else torch.autocast(device.type, enabled=False)
    with FlopCounterMode(display=False) as counter, ctx:
        loss, _ = module.model_step(batch)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def build(stage: int, size: str, shards: Path, workers: int, gc: bool, channels_last: bool = False) -> tuple[Any, Any, int]:
    """Module, DataModule and frames per sample of one stage."""
    p = PRESETS[size]
    buckets = BucketConfig(area=p["area"], multiple=p["multiple"], tolerance=0.15)
    tf = TransformConfig(num_frames=p["frames"], num_motion=p["motion"], min_gap=2)
    cfg = CyberHostConfig(size=size, stage=stage)
    if stage == 1:
        module, dm_cls, batch, frames = Stage1Module(model=cfg, gradient_checkpointing=gc, channels_last=channels_last), Stage1DataModule, p["batch1"], 1
    else:
        module = Stage2Module(RANDOM_STAGE1, model=cfg, gradient_checkpointing=gc, channels_last=channels_last)
        dm_cls, batch, frames = Stage2DataModule, p["batch2"], p["frames"]
    dm = dm_cls(str(shards), batch_size=batch, num_workers=workers, samples_per_epoch=10**6, val_batches=0,
                buckets=buckets, transform=tf)
    return module, dm, frames


def run_stage(stage: int, args: argparse.Namespace, shards: Path, peak: float) -> dict[str, Any]:
    """Fit ``warmup + steps`` steps of one stage and report its throughput."""
    device = torch.device(args.device)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    module, dm, frames = build(stage, args.size, shards, args.workers, args.gradient_checkpointing,
                               args.channels_last)
    flops = count_flops(module, dm, device, precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                        max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer], gradient_clip_val=1.0)
    trainer.fit(module, datamodule=dm)
    step = statistics.median(timer.steps)
    batch = dm.batch_size
    wait = sum(timer.waits) / max(1e-9, sum(timer.waits) + sum(timer.steps))
    return {
        "stage": stage, "size": args.size, "device": str(device), "batch": batch, "frames_per_sample": frames,
        "gradient_checkpointing": args.gradient_checkpointing, "channels_last": args.channels_last, "step_s": step, "samples_per_s": batch / step,
        "frames_per_s": batch * frames / step, "tflop_per_step": flops / 1e12, "mfu": flops / step / peak,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "data_wait_fraction": wait, "steps_timed": len(timer.steps),
    }  # fmt: skip


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
    parser.add_argument("--channels-last", action="store_true", help="channels-last conv weights")
    parser.add_argument("--output", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    peak = measure_peak(torch.device(args.device))
    rows = []
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
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
