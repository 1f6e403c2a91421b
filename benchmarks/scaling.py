"""Data-parallel scaling of one training setting: step time per rank, samples/s, spread, peak memory (issue 14).

Launch one process per GPU with torchrun (or per CPU rank, gloo, for a smoke run); each rank runs
``Trainer.fit`` with the strategy of a ``conf/trainer`` overlay (``ddp``: ``ddp.yaml``,
``fsdp2``: ``fsdp.yaml``) on the module of ``--stage`` and ``--size`` (random init; FSDP2 builds on
the meta device as the CLI does), and rank 0 writes one JSON report::

    torchrun --standalone --nproc_per_node 8 -m benchmarks.scaling --stage 1 --strategy ddp \\
        --out benchmarks/results/scaling/stage1_ddp_8.json
    python -m benchmarks.scaling --summarize benchmarks/results/scaling/*.json   # efficiency table

What one report holds:

* per rank: median step time, its resolution bucket, peak GPU memory allocated/reserved (host
  RSS on the CPU) and, with ``--forward-times``, the time to the end of the forward (the rank's
  own work before the first gradient collective; it adds a device sync mid-step);
* over ranks: the synchronous step time (per step the slowest rank, then the median), global and
  per-GPU samples/s and frames/s, and the spread across ranks (``(max - min) / max`` per step,
  median and worst; and the same over the per-rank medians of the forward);
* with ``--checkpoint-dir``: write and read time and size of a checkpoint of the trained state
  (FSDP2: a distributed-checkpoint folder, each rank writing its shards; DDP: one file from rank 0).

Stage 1 runs ``B`` pairs per GPU in one bucket; stage 2 one clip (12 + 4 frames at sd15) per GPU,
rank ``r`` in bucket ``r mod 5`` of the sd15 buckets (``--buckets same`` puts all in one), as the
paper's stage 2 does. Data loading is left out on purpose: each rank repeats one batch made by
the real DataModule from synthetic clips of its bucket (``benchmarks.train`` measures the loader),
so the numbers are compute and communication. Scaling efficiency at ``N`` GPUs is
``samples/s(N) / (N * samples/s(1))``, computed by ``--summarize`` from reports of the same
stage and size (one rank runs on Lightning's single device, the baseline of both strategies).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, IterableDataset

from benchmarks.synthetic import write_shards
from benchmarks.train import PRESETS, StepTimer
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.datamodule import Stage1DataModule, Stage2DataModule
from cyberhost.data.transforms import TransformConfig
from cyberhost.models import CyberHostConfig
from cyberhost.training.checkpoints import AtomicCheckpointIO
from cyberhost.training.module import build_on_meta
from cyberhost.training.stages import RANDOM_STAGE1, Stage1Module, Stage2Module
from cyberhost.training.strategies import close_process_group

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = {"ddp": "ddp.yaml", "fsdp2": "fsdp.yaml"}


def overlay_strategy(overlay: str) -> Any:
    """The ``trainer.strategy`` object of an overlay file in ``conf/trainer`` (``none``: Lightning's ``"auto"``)."""
    if overlay == "none":
        return "auto"
    spec = yaml.safe_load((ROOT / "conf" / "trainer" / overlay).read_text())["trainer"]["strategy"]
    mod, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(mod), name)(**spec.get("init_args", {}))


def rank_bucket(stage: int, size: str, rank: int, mode: str) -> tuple[int, int]:
    """(H, W) of this rank's bucket: stage 2 with ``per-rank`` cycles through the buckets, else the first."""
    p = PRESETS[size]
    buckets = BucketConfig(area=p["area"], multiple=p["multiple"], tolerance=0.15).buckets()
    per_rank = mode == "per-rank" or (mode == "auto" and stage == 2)
    return buckets[rank % len(buckets)] if per_rank else buckets[0]


def rank_batch(stage: int, size: str, batch: int, hw: tuple[int, int], folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """One training batch of ``batch`` samples in bucket ``hw``, through the real DataModule."""
    p = PRESETS[size]
    shards = write_shards(folder, num_clips=batch, num_frames=max(20, p["frames"] + p["motion"] + 4),
                          size=(hw[0] + hw[0] // 20, hw[1] + hw[1] // 20), clips_per_shard=batch, seed=seed)
    dm_cls = Stage1DataModule if stage == 1 else Stage2DataModule
    dm = dm_cls(str(shards), batch_size=batch, num_workers=0, shuffle_buffer=0, samples_per_epoch=batch,
                buckets=BucketConfig(area=p["area"], multiple=p["multiple"], tolerance=0.15),
                transform=TransformConfig(num_frames=p["frames"], num_motion=p["motion"], min_gap=2))
    return next(iter(dm.train_dataloader()))


class RepeatBatch(IterableDataset):
    """The same batch, ``n`` times (the step is measured, not the loader)."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        super().__init__()
        self.batch, self.n = batch, n

    def __iter__(self):  # noqa: ANN204
        for _ in range(self.n):
            yield self.batch


def build_module(stage: int, size: str, strategy: str, device: torch.device, trainable: str, gc: bool) -> L.LightningModule:
    """Random-init module; FSDP2 builds on the meta device (``configure_model`` shards and materialises)."""
    torch.manual_seed(0)
    cfg = CyberHostConfig(size=size, stage=stage, stage2_trainable=trainable)
    ctx = build_on_meta() if strategy == "fsdp2" else torch.device(device)
    with ctx:
        if stage == 1:
            return Stage1Module(model=cfg, gradient_checkpointing=gc)
        return Stage2Module(RANDOM_STAGE1, model=cfg, gradient_checkpointing=gc)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Probe(L.Callback):
    """Forward times (optional), peak memory after warm-up, the checkpoint timing, and the gather of it all to rank 0."""

    def __init__(self, timer: StepTimer, forward_times: bool, checkpoint_dir: Path | None, keep: bool) -> None:
        self.timer, self.forward_times, self.checkpoint_dir, self.keep = timer, forward_times, checkpoint_dir, keep
        self.forward: list[float] = []
        self.checkpoint: dict[str, Any] | None = None
        self.gathered: list[dict[str, Any]] = []
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        self._start = time.perf_counter()

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.forward_times and trainer.global_step >= self.timer.warmup:
            _sync(module.device)
            self.forward.append(time.perf_counter() - self._start)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        if self.checkpoint_dir is not None and trainer.global_step == trainer.max_steps:
            self.checkpoint = self._time_checkpoint(trainer, module)

    def _time_checkpoint(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        path = Path(self.checkpoint_dir) / "scaling.ckpt"
        trainer.strategy.barrier()
        start = time.perf_counter()
        trainer.save_checkpoint(path)
        _sync(module.device)
        trainer.strategy.barrier()
        write_s = time.perf_counter() - start
        size = _folder_bytes(path) if trainer.is_global_zero else 0
        start = time.perf_counter()
        trainer.strategy.load_checkpoint(path)  # FSDP2: loads each rank's shards in place; DDP: reads the file
        _sync(module.device)
        trainer.strategy.barrier()
        read_s = time.perf_counter() - start
        if trainer.is_global_zero and not self.keep:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return {"write_s": write_s, "read_s": read_s, "size_gib": size / 2**30, "path": str(path)}

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        device = module.device
        mine = {
            "rank": trainer.global_rank, "steps_s": self.timer.steps, "forward_s": self.forward,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
            "host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
        if dist.is_available() and dist.is_initialized():
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            self.gathered = everyone
        else:
            self.gathered = [mine]


def spread(values: list[float]) -> float:
    """``(max - min) / max`` (0 for one value)."""
    return (max(values) - min(values)) / max(values) if values and max(values) > 0 else 0.0


def report(args: argparse.Namespace, ranks: list[dict[str, Any]], buckets: list[tuple[int, int]],
           batch: int, frames: int, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's summary of the gathered per-rank measurements."""
    world = len(ranks)
    steps = min(len(r["steps_s"]) for r in ranks)
    per_step = [[r["steps_s"][i] for r in ranks] for i in range(steps)]
    step_s = statistics.median(max(s) for s in per_step)
    fwd = [statistics.median(r["forward_s"]) for r in ranks if r["forward_s"]]
    mem = [r["peak_mem_gib"] for r in ranks if r["peak_mem_gib"] is not None]
    return {
        "stage": args.stage, "size": args.size, "strategy": args.strategy,
        "overlay": OVERLAYS[args.strategy] if world > 1 else None,  # 1 rank: Lightning's single device
        "world_size": world, "device": ranks[0]["device_name"], "batch_per_rank": batch, "frames_per_sample": frames,
        "stage2_trainable": args.trainable if args.stage == 2 else None, "gradient_checkpointing": args.gradient_checkpointing,
        "precision": args.precision, "steps_timed": steps, "warmup": args.warmup,
        "step_s": step_s, "samples_per_s": world * batch / step_s, "samples_per_s_per_rank": batch / step_s,
        "frames_per_s": world * batch * frames / step_s,
        "step_spread_median": statistics.median(spread(s) for s in per_step),
        "step_spread_max": max(spread(s) for s in per_step),
        "rank_median_step_s": [statistics.median(r["steps_s"]) for r in ranks],
        "forward_s_per_rank": fwd or None, "forward_spread": spread(fwd) if fwd else None,
        "peak_mem_gib_max": max(mem) if mem else None, "peak_mem_gib_per_rank": mem or None,
        "peak_reserved_gib_per_rank": [r["peak_reserved_gib"] for r in ranks] if mem else None,
        "host_peak_rss_gib_per_rank": [r["host_peak_rss_gib"] for r in ranks],
        "bucket_per_rank": [list(b) for b in buckets], "checkpoint": checkpoint,
        "host": os.uname().nodename, "torch": torch.__version__,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """This rank's part of the measurement; rank 0 returns the report."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    p = PRESETS[args.size]
    batch = args.batch or (p["batch1"] if args.stage == 1 else p["batch2"])
    frames = 1 if args.stage == 1 else p["frames"]
    hw = rank_bucket(args.stage, args.size, rank, args.buckets)
    with tempfile.TemporaryDirectory() as tmp:
        data = rank_batch(args.stage, args.size, batch, hw, Path(tmp) / "shards", seed=rank * batch)
    module = build_module(args.stage, args.size, args.strategy, device, args.trainable, args.gradient_checkpointing)
    timer = StepTimer(args.warmup)
    probe = Probe(timer, args.forward_times, args.checkpoint_dir, args.keep_checkpoint)
    strategy = overlay_strategy(OVERLAYS[args.strategy]) if world > 1 else "auto"
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=local, num_nodes=max(1, world // local),
                        strategy=strategy, precision=args.precision, max_steps=args.warmup + args.steps,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        use_distributed_sampler=False, callbacks=[timer, probe],
                        plugins=[AtomicCheckpointIO()] if args.strategy == "ddp" else None)
    trainer.fit(module, train_dataloaders=DataLoader(RepeatBatch(data, args.warmup + args.steps), batch_size=None))
    buckets = [rank_bucket(args.stage, args.size, r, args.buckets) for r in range(world)]
    if trainer.global_rank != 0:
        return None
    checkpoint = probe.checkpoint
    if checkpoint is not None:
        checkpoint["kind"] = "distributed-checkpoint folder" if args.strategy == "fsdp2" else "one file (rank 0)"
    return report(args, probe.gathered, buckets, batch, frames, checkpoint)


def summarize(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of a scaling table: efficiency against the 1-GPU report of the same stage/size, FSDP2 against DDP.

    One rank runs on Lightning's single device whatever ``--strategy`` says, so any 1-rank report
    of the stage and size is the baseline of both strategies.
    """
    reports = [json.loads(p.read_text()) for p in paths]
    key = lambda r: (r["stage"], r["size"], r.get("stage2_trainable"))  # noqa: E731
    one = {key(r): r["samples_per_s"] for r in reports if r["world_size"] == 1}
    ddp = {(r["stage"], r["size"], r.get("stage2_trainable"), r["world_size"]): r["samples_per_s"]
           for r in reports if r["strategy"] == "ddp"}
    rows = []
    for r in sorted(reports, key=lambda r: (r["stage"], r["size"], r["strategy"], r["world_size"])):
        base = one.get(key(r))
        d = ddp.get((r["stage"], r["size"], r.get("stage2_trainable"), r["world_size"]))
        rows.append({
            "stage": r["stage"], "size": r["size"], "strategy": r["strategy"], "gpus": r["world_size"],
            "device": r["device"], "samples_per_s": r["samples_per_s"], "step_s": r["step_s"],
            "efficiency": r["samples_per_s"] / (r["world_size"] * base) if base else None,
            "vs_ddp": r["samples_per_s"] / d if d and r["strategy"] != "ddp" else None,
            "step_spread_median": r["step_spread_median"], "peak_mem_gib_max": r["peak_mem_gib_max"],
        })
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--size", choices=sorted(PRESETS), default="sd15")
    parser.add_argument("--strategy", choices=sorted(OVERLAYS), default="ddp", help="which conf/trainer overlay")
    parser.add_argument("--batch", type=int, default=0, help="samples per rank (0: the preset's, 12 / 1 at sd15)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--buckets", choices=("auto", "same", "per-rank"), default="auto",
                        help="auto: stage 2 per rank, stage 1 all in one bucket")
    parser.add_argument("--trainable", choices=("all", "added"), default="all", help="model.stage2_trainable")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPUs, 32-true on the CPU")
    parser.add_argument("--forward-times", action="store_true",
                        help="also time each rank's forward (a device sync mid-step)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="time writing and reading a checkpoint here after the timed steps (shared file system)")
    parser.add_argument("--keep-checkpoint", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="CPU ranks (gloo) even where CUDA exists")
    parser.add_argument("--out", type=Path, default=None, help="rank 0 writes the JSON report here")
    parser.add_argument("--summarize", type=Path, nargs="+", default=None, metavar="REPORT",
                        help="print the scaling table of these reports instead of measuring")
    args = parser.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16-mixed" if torch.cuda.is_available() and not args.cpu else "32-true"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Measure (one rank of the launch) or, with ``--summarize``, print the table of earlier reports."""
    args = parse_args(argv)
    if args.summarize:
        rows = summarize(args.summarize)
        print(json.dumps(rows, indent=1))
        return rows
    result = run(args)
    close_process_group()
    if result is not None:
        text = json.dumps(result, indent=1)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(text, flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
