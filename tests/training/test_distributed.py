"""2-process CPU (gloo) runs: DDP and FSDP2 (ModelParallelStrategy + fully_shard per UNet block)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.launch import run_module
from tests.training.conftest import CONF, ROOT, scalars, tiny_args


def _fit(args: list[str], cwd: Path, **env: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, "-m", "cyberhost.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp.yaml"])
def test_two_process_cpu_run(shards: Path, tmp_path: Path, overlay: str) -> None:
    """ddp.yaml runs without find_unused_parameters; fsdp.yaml's folder checkpoint feeds stage 2 like the export."""
    _fit(tiny_args(1, shards, tmp_path, 2, "--config", str(CONF / "trainer" / overlay), "--trainer.devices", "2"),
         tmp_path)
    assert len(scalars(tmp_path / "stage1", "train/loss")) == 2
    ckpt = tmp_path / "stage1" / "tiny" / "checkpoints" / "last.ckpt"
    export = tmp_path / "stage1" / "tiny" / "export" / "last.safetensors"
    assert ckpt.exists() and export.is_file()
    if overlay == "fsdp.yaml":
        from safetensors.torch import load_file

        from cyberhost.training.checkpoints import load_network_weights

        assert ckpt.is_dir()
        weights, exported = load_network_weights(ckpt, "stage1_checkpoint"), load_file(str(export))
        assert exported.keys() <= weights.keys()
        assert all(torch.equal(weights[k], v) for k, v in exported.items())


@pytest.mark.slow
def test_ddp_mid_epoch_resume_gives_each_rank_its_batches(tmp_path: Path) -> None:
    """2 DDP ranks on uneven shards: stop at step 3, resume to 6; every rank sees the batches of one run to 6."""
    from tests.data.test_datamodule import _uneven_shards

    shards = _uneven_shards(tmp_path / "uneven", (2, 8))  # one shard per rank: 1 and 4 batches per pass
    recorder = ["--trainer.callbacks+=tests.training.recorder.BatchRecorder"]
    ddp = ["--config", str(CONF / "trainer" / "ddp.yaml"), "--trainer.devices", "2",
           "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "100"]
    full, part = tmp_path / "full", tmp_path / "part"
    for runs, steps, extra in ((full, 6, []), (part, 3, []),
                               (part, 6, ["--ckpt_path", str(part / "stage1" / "tiny" / "checkpoints" / "last.ckpt")])):
        _fit(tiny_args(1, shards, runs, steps, *ddp, *recorder, "--trainer.val_check_interval", "3", *extra),
             tmp_path, BATCH_LOG=str(runs))
    ckpt = torch.load(part / "stage1" / "tiny" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ranks = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["ranks"]
    assert ranks[0]["positions"] != ranks[1]["positions"]  # rank 0's position would be wrong for rank 1
    for rank in range(2):
        want = json.loads((full / f"batches_rank{rank}.json").read_text())
        got = json.loads((part / f"batches_rank{rank}.json").read_text())
        assert len(want) == 6 and got == want, rank


def _fit_and_kill(args: list[str], cwd: Path, pidfile: Path, **env: str) -> int:
    """Start a 2-rank run, SIGKILL the rank that writes ``pidfile``, and return the run's exit code.

    The surviving rank fails in its next collective (gloo: connection closed) and exits; if it
    hangs instead, the whole group is killed after 120 s, as torchrun or SLURM would.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.Popen([sys.executable, "-m", "cyberhost.cli", *args], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not pidfile.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pidfile.is_file(), f"no rank stopped to be killed; exit {proc.poll()}"
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        try:
            return proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            return -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp.yaml"])
def test_resume_after_sigkill_of_one_rank_continues_as_uninterrupted(shards: Path, tmp_path: Path, overlay: str) -> None:
    """Issue 14 item 4: SIGKILL rank 1 of a 2-rank DDP/FSDP2 run at step 5 (last.ckpt is step 4's, mid-epoch).

    Checkpoints come from the stage config's ModelCheckpoint (``save_last``, at every validation:
    ``val_check_interval`` 2 here; FSDP2 writes distributed-checkpoint folders). Resuming from last.ckpt, both ranks see the batches and the run
    logs the losses of an uninterrupted run. Loss tolerance: relative 1e-6 -- the resumed run
    restores the exact float32 weights and AdamW state, the data positions and the step, and the
    noise is a function of (seed, step, sample index), so on the CPU it repeats the same
    arithmetic; anything lost (a batch skipped, optimiser state reset, other noise) moves the loss
    by far more.
    """
    recorder = ["--trainer.callbacks+=tests.training.recorder.BatchRecorder",
                "--trainer.callbacks+=tests.training.recorder.StopForKill"]
    ddp = ["--config", str(CONF / "trainer" / overlay), "--trainer.devices", "2", "--data.init_args.batch_size", "2",
           "--data.init_args.samples_per_epoch", "100", "--trainer.val_check_interval", "2", *recorder]
    full, part = tmp_path / "full", tmp_path / "part"
    logs = {name: tmp_path / f"batches_{name}" for name in ("full", "killed", "resumed")}
    for d in logs.values():
        d.mkdir()
    _fit(tiny_args(1, shards, full, 6, *ddp), tmp_path, BATCH_LOG=str(logs["full"]))
    pidfile = tmp_path / "rank1.pid"
    code = _fit_and_kill(tiny_args(1, shards, part, 6, *ddp), tmp_path, pidfile, BATCH_LOG=str(logs["killed"]),
                         KILL_AT_STEP="5", KILL_RANK="1", KILL_PIDFILE=str(pidfile))
    assert code != 0
    last = part / "stage1" / "tiny" / "checkpoints" / "last.ckpt"
    if last.is_dir():  # FSDP2: a distributed-checkpoint folder; the loop state is in its meta.pt
        from cyberhost.training.checkpoints import checkpoint_safe_globals

        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            ckpt = torch.load(last / "meta.pt", map_location="cpu", weights_only=True)
    else:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    _fit(tiny_args(1, shards, part, 6, *ddp, "--ckpt_path", str(last)), tmp_path, BATCH_LOG=str(logs["resumed"]))
    for rank in range(2):
        want = json.loads((logs["full"] / f"batches_rank{rank}.json").read_text())
        killed = json.loads((logs["killed"] / f"batches_rank{rank}.json").read_text())
        resumed = json.loads((logs["resumed"] / f"batches_rank{rank}.json").read_text())
        assert [s for s, _ in want] == list(range(6)) and killed[:5] == want[:5], rank
        assert resumed == want[4:], rank  # step 4 again (it was not in the checkpoint), then step 5
    want, got = dict(scalars(full / "stage1", "train/loss")), dict(scalars(part / "stage1", "train/loss"))
    assert sorted(got) == sorted(want) and len(want) == 6
    assert all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want), (got, want)


def test_fsdp2_builds_on_meta_and_each_rank_fills_its_shards(tmp_path: Path) -> None:
    """The FSDP2 start-up path: meta build, shard, materialise (drawn once, split), stage-1 weights broadcast from rank 0."""
    from safetensors.torch import save_file

    from cyberhost.models import CyberHost, CyberHostConfig

    torch.manual_seed(0)
    stage1 = CyberHost(CyberHostConfig(size="tiny", stage=1)).state_dict()
    path = tmp_path / "stage1.safetensors"
    save_file({k: v.contiguous() for k, v in stage1.items() if not k.startswith("vae.")}, str(path))  # as an export
    run_module("tests.training.fsdp_weights", str(path), str(tmp_path / "out"), ranks=2)
    report = json.loads((tmp_path / "out" / "rank0.json").read_text())
    assert report["built_on_meta"] and report["loaded_equal"] and report["loaded"] > 300 and report["finite"]
    assert report["halves_differ"] and report["zero_outputs"]
    assert all(n < 0.75 * report["total"] for n in report["local"])  # each rank holds about half (+ frozen parts)
    from safetensors.torch import load_file

    from cyberhost.training.module import build_on_meta
    from cyberhost.training.stages import Stage2Module

    with build_on_meta():  # the same start in one process: the values do not depend on the number of ranks
        alone = Stage2Module(str(path), model=CyberHostConfig(size="tiny", stage=2, stage2_trainable="all"))
    alone.configure_model()
    gathered, want = load_file(str(tmp_path / "out" / "full.safetensors")), alone.model.state_dict()
    assert gathered.keys() == want.keys()
    assert [k for k in want if not torch.equal(gathered[k], want[k])] == []
