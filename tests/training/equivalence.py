"""One optimiser step of a fixed batch, alone or as one of 2 ranks (run by ``test_equivalence.py``).

The batch file holds a stage's batch of ``B`` samples; each of ``W`` processes (``W = 1`` alone,
else ``WORLD_SIZE`` under torchrun) takes the ``B/W`` samples of its rank, in order, and runs one
``Trainer.fit`` step with the strategy of the overlay given (``conf/trainer/ddp.yaml``,
``fsdp.yaml``; ``none`` = one process). The module is built as the tiny stage's, same seed on
every rank (FSDP2 shards the built weights, so every rank starts from the same values as the
single process). Rank 0 writes ``OUT/before.safetensors`` (the trainable weights before the step),
``OUT/after.safetensors`` (after, gathered in full under FSDP2) and ``OUT/report.json``: the loss
of each rank, and whether every rank started from rank 0's weights.

    python -m tests.training.equivalence STAGE OVERLAY|none BATCH.pt OUT [cpu|gpu [PRECISION]]
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.training.equivalence ...

On GPUs (``gpu``, one per rank) TF32 is switched off, so that ``32-true`` compares the
data-parallel arithmetic and not TF32's rounding; ``bf16-mixed`` is the training precision.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from benchmarks.scaling import overlay_strategy
from cyberhost.models import CyberHostConfig
from cyberhost.training.module import OptimConfig
from cyberhost.training.stages import RANDOM_STAGE1, Stage1Module, Stage2Module
from cyberhost.training.strategies import close_process_group

OPTIM = OptimConfig(lr=100.0, eps=10.0, weight_decay=0.0)
"""AdamW's first step is ``lr * g / (|g| + eps)``: with the default eps that is ``lr * sign(g)``,
blind to the scale of the gradient (a sum over ranks instead of a mean would pass) and flipping for
gradients near zero. With ``eps`` far above every gradient entry (the norm is clipped to 1) the step
is about ``lr * g / eps``, so the parameters carry the gradient itself; no weight decay, so the change
is the gradient alone; a large ``lr`` so that even the smallest tensors' changes stand far above
the float32 spacing of the weights they are added to (at ``lr = 1`` some were 1000 spacings)."""


def build(stage: int) -> L.LightningModule:
    """The tiny module of ``stage`` (stage 2: every parameter trainable), random init from seed 0.

    Zero-initialised tensors (output projections of the added attention layers, biases) get small
    random values, so that every trainable tensor is in a path with a non-zero gradient: behind a
    zero projection half of stage 2's tensors would not move in one step and could not be compared.
    """
    torch.manual_seed(0)
    cfg = CyberHostConfig(size="tiny", stage=stage, stage2_trainable="all")
    module = Stage1Module(model=cfg, optim=OPTIM) if stage == 1 else Stage2Module(RANDOM_STAGE1, model=cfg, optim=OPTIM)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.model.parameters():
            if p.requires_grad and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return module


def trainable(module: L.LightningModule) -> dict[str, torch.Tensor]:
    """Full values of the trainable parameters (collective under FSDP2: every rank must call it)."""
    names = [n for n, p in module.model.named_parameters() if p.requires_grad]
    if getattr(module, "_sharded", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True))
    else:
        full = module.model.state_dict()
    return {n: full[n].detach().cpu().float().contiguous().clone() for n in names}


class LossRecorder(L.Callback):
    """The loss of the step on this rank."""

    losses: list[float]

    def __init__(self) -> None:
        self.losses = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def main(stage: int, overlay: str, batch_file: str, out: str, accelerator: str = "cpu",
         precision: str = "32-true") -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if accelerator == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    batch = torch.load(batch_file, weights_only=True)
    b = batch["target"].shape[0]
    if b % world:
        raise SystemExit(f"batch of {b} does not split over {world} ranks")
    part = {k: v[rank * b // world:(rank + 1) * b // world] for k, v in batch.items()}  # rank r: part r, in order
    module = build(stage)
    before = trainable(module)
    recorder = LossRecorder()
    trainer = L.Trainer(accelerator=accelerator, devices=world, strategy=overlay_strategy(overlay), precision=precision,
                        max_steps=1, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[recorder])
    trainer.fit(module, train_dataloaders=DataLoader([part], batch_size=None))
    after = trainable(module)
    same_start, losses = True, recorder.losses
    if world > 1:
        import torch.distributed as dist

        reference = {k: v.clone() for k, v in before.items()}
        device = torch.device("cuda", torch.cuda.current_device()) if accelerator == "gpu" else torch.device("cpu")
        for k, v in reference.items():  # NCCL broadcasts device tensors
            on_device = v.to(device)
            dist.broadcast(on_device, 0)
            reference[k] = on_device.cpu()
        same_start = all(torch.equal(reference[k], before[k]) for k in before)
        starts, all_losses = [None] * world, [None] * world
        dist.all_gather_object(starts, same_start)
        dist.all_gather_object(all_losses, losses)
        same_start, losses = all(starts), [x for rank_losses in all_losses for x in rank_losses]
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file(before, str(Path(out) / "before.safetensors"))
        save_file(after, str(Path(out) / "after.safetensors"))
        (Path(out) / "report.json").write_text(json.dumps({"losses": losses, "same_start": same_start,
                                                           "world": world, "global_step": trainer.global_step}))
    close_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
