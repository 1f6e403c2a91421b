"""2-process CPU (gloo) runs: DDP and FSDP2 (ModelParallelStrategy + fully_shard per UNet block)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import CONF, ROOT, scalars, tiny_args


@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp2.yaml"])
def test_two_process_cpu_run(shards: Path, tmp_path: Path, overlay: str) -> None:
    args = tiny_args(1, shards, tmp_path, 2, "--config", str(CONF / "trainer" / overlay), "--trainer.devices", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cyberhost.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(scalars(tmp_path / "stage1", "train/loss")) == 2
    assert (tmp_path / "stage1" / "tiny" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "stage1" / "tiny" / "export" / "last.safetensors").is_file()
