"""One GPU through each strategy overlay (skipped without CUDA): fit, resume from the checkpoint, hand it to
stage 2; and the EMA resumed onto the GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cyberhost import cli
from tests.training.conftest import CONF, tiny_args

pytestmark = pytest.mark.gpu
GPU = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed")


def test_resume_on_gpu_moves_the_ema_to_the_gpu(shards: Path, tmp_path: Path) -> None:
    ema = ("--model.init_args.optim.ema_decay", "0.9")
    cli.main(tiny_args(1, shards, tmp_path, 2, *GPU, *ema))
    ckpt = tmp_path / "stage1" / "tiny" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["ema"]
    out = cli.main(tiny_args(1, shards, tmp_path, 4, *GPU, *ema, "--ckpt_path", str(ckpt)))
    assert out.trainer.global_step == 4
    assert {v.device.type for v in out.model.ema.values()} == {"cuda"}
    assert any(not torch.equal(out.model.ema[k].cpu(), v) for k, v in saved.items())  # it kept updating


@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp.yaml", "fsdp1.yaml"])
def test_strategy_fits_resumes_and_hands_off(shards: Path, tmp_path: Path, overlay: str) -> None:
    strategy = ("--config", str(CONF / "trainer" / overlay))
    cli.main(tiny_args(1, shards, tmp_path, 2, *GPU, *strategy))
    ckpt = tmp_path / "stage1" / "tiny" / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (tmp_path / "stage1" / "tiny" / "export" / "last.safetensors").is_file()
    out = cli.main(tiny_args(1, shards, tmp_path, 3, *GPU, *strategy, "--ckpt_path", str(ckpt)))
    assert out.trainer.global_step == 3
    out = cli.main(tiny_args(2, shards, tmp_path, 1, *GPU, *strategy, "--model.init_args.stage1_checkpoint",
                             str(ckpt)))
    assert out.trainer.global_step == 1
