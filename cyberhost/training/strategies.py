"""Distributed strategies with CyberHost's wrapping (one FSDP unit per UNet block).

DDP is Lightning's own ``DDPStrategy`` (``conf/trainer/ddp.yaml``); FSDP2 is Lightning's
``ModelParallelStrategy`` with ``CyberHostModule.configure_model`` applying ``fully_shard``
(``conf/trainer/fsdp.yaml``). :class:`BlockFSDPStrategy` is FSDP v1 (GPU only, ``conf/trainer/fsdp1.yaml``) with the UNet
blocks of both stages as the auto-wrap units, so a YAML file need not list classes.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

from cyberhost.training.checkpoints import checkpoint_safe_globals


def close_process_group() -> None:
    """Wait for every rank, then destroy the default process group: the last step of a distributed run.

    Lightning leaves the group up after ``fit``. Left to interpreter exit, the gloo/NCCL threads are
    torn down in no fixed order and a rank could abort (``terminate called without an active
    exception``) after its work was done, so torchrun reported the whole run as failed.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def unet_block_types() -> set[type[nn.Module]]:
    """diffusers block classes of the 2D (stage 1) and motion (stage 2) UNets."""
    from diffusers.models.unets import unet_2d_blocks as b2
    from diffusers.models.unets import unet_motion_model as bm

    names2 = ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UNetMidBlock2DCrossAttn")
    names3 = ("CrossAttnDownBlockMotion", "DownBlockMotion", "CrossAttnUpBlockMotion", "UpBlockMotion",
              "UNetMidBlockCrossAttnMotion")
    return {getattr(b2, n) for n in names2} | {getattr(bm, n) for n in names3 if hasattr(bm, n)}


class BlockFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` wrapping every UNet block (and using original parameters for frozen parts).

    Args:
        **kwargs: ``FSDPStrategy`` options; ``auto_wrap_policy`` defaults to the UNet blocks.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", unet_block_types())
        kwargs.setdefault("use_orig_params", True)
        super().__init__(**kwargs)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as pure FSDP2: all ranks form the data-parallel (sharding) dimension.

    Lightning's ``"auto"`` sizes give data parallel = nodes and tensor parallel = GPUs per node;
    CyberHost has no tensor-parallel plan, so here ``data_parallel_size`` defaults to the world size
    and ``tensor_parallel_size`` to 1. ``CyberHostModule.configure_model`` shards each UNet block.

    Args:
        **kwargs: ``ModelParallelStrategy`` options.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(**kwargs)

    def setup_environment(self) -> None:
        """Resolve ``data_parallel_size="auto"`` to the world size, then set up as usual."""
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loading of a distributed-checkpoint folder, with our unpickling allowlist.

        The folder's ``meta.pt`` pickles the hyper-parameters; Lightning reads it with
        ``torch.load(weights_only=True)``. The CLI's are plain dicts, but a module built in Python
        with our config dataclasses (``benchmarks/scaling.py --checkpoint-dir``, scripts) saves
        those, which that load refused; the ``.ckpt`` files of DDP runs already load with this
        allowlist (:class:`~cyberhost.training.checkpoints.AtomicCheckpointIO`).
        """
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
