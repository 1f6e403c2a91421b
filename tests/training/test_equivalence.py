"""Data parallelism changes nothing: one step on 2 gloo ranks with ``B/2`` each = one process with ``B`` (issue 14, item 2).

What makes it hold, and what this checks:

* the same start: every process builds the tiny module from seed 0, zero-initialised tensors filled
  so that every tensor gets a gradient (``equivalence.py`` checks each rank against rank 0's
  weights; FSDP2 shards those weights);
* the same data: rank ``r`` takes half ``r`` of the one process's batch, in order;
* the same draws: timesteps, noise and the heatmap gate's coin are drawn per sample, seeded by its
  index in the global batch (:meth:`CyberHostModule.sample_draws`), not by rank;
* the same gradient: DDP (and our FSDP2 reduce-scatter plus the all-reduce of replicated
  parameters) average the ranks' gradients; every loss term is a mean over equal-sized halves
  (the heatmap term a mean of per-sample values), so the mean of the two halves' means is the
  batch mean;
* the same clipping: the gradient norm is of the averaged (full) gradient.

AdamW runs with a large ``eps`` (``equivalence.OPTIM``) so that its first step is proportional to
the gradient rather than its sign. Tolerance: per tensor, the change of the parameters may differ
by at most ``1e-4`` of that tensor's largest change plus 4 float32 spacings of its largest weight
(the change is added to the weight in float32, so its rounding is that of the weight). What is
left in float32 on the CPU -- another batch per convolution/matmul call, another summation order
over the batch -- stayed below a quarter of this tolerance (most tensors came out bit-identical); a
lost or doubled all-reduce, other noise or another half of the batch change the step by O(1) (with
noise seeded by rank, as before ``sample_draws``, the losses already differ). Stage 1 takes about
50 s on 2 CPU cores; stage 2 (another 60 s) is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import run_module

RTOL = 1e-4
"""Allowed |change (2 ranks) - change (1 process)| relative to the tensor's largest change (plus float32 spacing)."""


def _batch(stage: int, shards: Path, size: int, path: Path) -> Path:
    """One training batch of ``size`` samples of the tiny stage from the synthetic shards."""
    from cyberhost.data.buckets import BucketConfig
    from cyberhost.data.datamodule import Stage1DataModule, Stage2DataModule
    from cyberhost.data.transforms import TransformConfig

    dm_cls = Stage1DataModule if stage == 1 else Stage2DataModule
    dm = dm_cls(str(shards), batch_size=size, num_workers=0, shuffle_buffer=8, samples_per_epoch=400,
                buckets=BucketConfig(area=6144, multiple=16, tolerance=0.15),
                transform=TransformConfig(num_frames=8, num_motion=4, face_crop=64, hand_crop=128, min_gap=2))
    torch.save(next(iter(dm.train_dataloader())), path)
    return path


def _step(stage: int, overlay: str, batch: Path, out: Path, ranks: int, *device: str) -> dict:
    run_module("tests.training.equivalence", str(stage), overlay, str(batch), str(out), *device, ranks=ranks)
    return json.loads((out / "report.json").read_text())


def _worst(before: dict, after: dict, want_before: dict, want_after: dict, rtol: float = RTOL) -> tuple[float, str]:
    """Largest deviation of the parameter change over the tensors, in units of the tolerance, and which tensor."""
    worst, name = 0.0, ""
    spacing = torch.finfo(torch.float32).eps
    for k, want in want_after.items():
        assert torch.equal(before[k], want_before[k]), f"{k}: another start"
        want_delta, got_delta = (want - want_before[k]).double(), (after[k] - before[k]).double()
        allowed = rtol * float(want_delta.abs().max()) + 4 * spacing * float(want.abs().max()) + 1e-30
        err = float((got_delta - want_delta).abs().max()) / allowed
        if err > worst:
            worst, name = err, k
    return worst, name


def _check(stage: int, batch_size: int, shards: Path, tmp_path: Path, *device: str, rtol: float = RTOL,
           loss_rtol: float = 1e-5) -> None:
    batch = _batch(stage, shards, batch_size, tmp_path / "batch.pt")
    alone = _step(stage, "none", batch, tmp_path / "alone", 1, *device)
    want_before, want_after = load_file(str(tmp_path / "alone" / "before.safetensors")), \
        load_file(str(tmp_path / "alone" / "after.safetensors"))
    moved = sum(int(not torch.equal(want_before[k], v)) for k, v in want_after.items())
    print(f"stage {stage}: the step moved {moved} of {len(want_after)} trainable tensors")
    # what stays: cross-attention queries and keys over the one text-context token (a softmax over one key is 1)
    assert moved > 0.9 * len(want_after), "the step should move nearly every trainable tensor"
    for overlay in ("ddp.yaml", "fsdp.yaml"):
        report = _step(stage, overlay, batch, tmp_path / overlay, 2, *device)
        assert report["same_start"] and report["world"] == 2 and report["global_step"] == 1
        # each rank's loss is its half's mean; their mean is the batch's
        assert sum(report["losses"]) / 2 == pytest.approx(alone["losses"][0], rel=loss_rtol)
        before = load_file(str(tmp_path / overlay / "before.safetensors"))
        after = load_file(str(tmp_path / overlay / "after.safetensors"))
        assert after.keys() == want_after.keys()
        worst, name = _worst(before, after, want_before, want_after, rtol)
        print(f"stage {stage} {overlay}: worst deviation {worst:.2e} of the tolerance ({name})")
        assert worst <= 1.0, (overlay, name, worst)


def test_stage1_two_ranks_half_batch_equals_one_process(shards: Path, tmp_path: Path) -> None:
    """Stage 1, B = 4: DDP and FSDP2 on 2 ranks x 2 samples give the one-process step's parameters."""
    _check(1, 4, shards, tmp_path)


@pytest.mark.slow
def test_stage2_two_ranks_half_batch_equals_one_process(shards: Path, tmp_path: Path) -> None:
    """Stage 2 (every parameter trainable, heatmap and mask terms), B = 2: one clip per rank."""
    _check(2, 2, shards, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize(("stage", "precision", "rtol"), [(1, "32-true", 1e-3), (2, "32-true", 1e-3),
                                                          (1, "bf16-mixed", 5e-2), (2, "bf16-mixed", 5e-2)])
def test_two_gpus_half_batch_equals_one_gpu(shards: Path, tmp_path: Path, stage: int, precision: str,
                                            rtol: float) -> None:
    """The same check on 2 GPUs (NCCL) against 1 GPU (issue 14 item 2 as asked; run with ``make test-gpu``).

    The tolerances are first guesses, NOT yet measured (no 2-GPU host was lent when this was
    written): float32 without TF32 1e-3 of each tensor's change (cuDNN picks other kernels for
    another batch size), bf16-mixed 5e-2 (bf16 keeps 8 bits of mantissa). The printed worst
    deviation is what to record in BENCHMARKS.md and to tighten them to.
    """
    _check(stage, 4 if stage == 1 else 2, shards, tmp_path, "gpu", precision, rtol=rtol,
           loss_rtol=1e-4 if precision == "32-true" else 1e-2)
