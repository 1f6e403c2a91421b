"""The fast training path on CUDA gives the plain path's loss and gradients (``make test-gpu``).

Fast = regional ``torch.compile`` (inductor) + frozen weights stored in bf16 + selective
checkpointing; plain = eager under bf16 autocast with float32 weights. Both run the same batch
through the stage-2 LightningModule's ``model_step``. Tolerances (bf16 has 8 mantissa bits, and
inductor fuses and reorders reductions): loss within 1 % relative; the whole gradient vector at
cosine similarity >= 0.995 with norms within 2 %, and each top-level part at cosine >= 0.98.
"""

from __future__ import annotations

import pytest
import torch

from cyberhost.models.blocks import CompileConfig

from ..models.conftest import wake_zero_inits

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _module(fast: bool):
    from cyberhost.models import CyberHostConfig
    from cyberhost.training.stages import RANDOM_STAGE1, Stage2Module

    torch.manual_seed(0)
    cfg = CyberHostConfig(size="tiny", stage=2, stage2_trainable="added")
    module = Stage2Module(RANDOM_STAGE1, model=cfg,
                          gradient_checkpointing=[r"^unet\.up_blocks\.\d\.resnets"] if fast else False,
                          compile=CompileConfig(enabled=fast), frozen_bf16=fast)
    wake_zero_inits(module.model)  # the zero-initialised additions: their gradients must not be trivially equal
    module.setup("fit")
    return module.to(CUDA).train()


def _batch(shards) -> dict[str, torch.Tensor]:
    from cyberhost.data.datamodule import Stage2DataModule
    from cyberhost.data.transforms import TransformConfig

    dm = Stage2DataModule(str(shards), batch_size=1, num_workers=0, samples_per_epoch=4, val_batches=0,
                          transform=TransformConfig(num_frames=8, num_motion=4, min_gap=2))
    dm.setup("fit")
    return {k: v.to(CUDA) for k, v in next(iter(dm.train_dataloader())).items()}


def _step(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = module.model_step(batch, torch.Generator().manual_seed(11))
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in module.model.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_fast_path_matches_plain_loss_and_gradients(shards) -> None:
    batch = _batch(shards)
    plain, fast = _module(False), _module(True)
    want_loss, want = _step(plain, batch)
    for _ in range(2):  # the second call runs the compiled graphs without compiling
        got_loss, got = _step(fast, batch)
    assert abs(float(got_loss - want_loss)) <= 0.01 * abs(float(want_loss))
    assert got.keys() == want.keys()
    flat_got = torch.cat([got[n].flatten() for n in want])
    flat_want = torch.cat([want[n].flatten() for n in want])
    assert _cos(flat_got, flat_want) >= 0.995
    assert abs(float(flat_got.norm() / flat_want.norm()) - 1) <= 0.02
    parts = sorted({n.split(".")[0] for n in want})
    for part in parts:
        names = [n for n in want if n.split(".")[0] == part]
        a = torch.cat([got[n].flatten() for n in names])
        b = torch.cat([want[n].flatten() for n in names])
        if b.norm() > 0:
            assert _cos(a, b) >= 0.98, part
