"""Run a module of this repository in fresh processes: one, or ``ranks`` of a torchrun launch (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, ranks: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` (through ``torch.distributed.run`` when ``ranks`` > 1) from the repo root,
    one thread per process; asserts it exited 0, showing the end of its stderr otherwise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    proc = subprocess.run([*launch, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
