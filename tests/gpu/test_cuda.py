"""GPU checks (``make test-gpu``; skipped without CUDA): the CUDA code paths of model, training and generation.

Tiny sizes, so they run in a minute on any CUDA card; the sd15 numbers come from the benchmarks
(BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import generate as generation_bench
from benchmarks import model_step as model_bench
from benchmarks import train as training_bench
from cyberhost import cli
from cyberhost.models.attention import AddedCrossAttention

from ..models.conftest import build, inputs, run, wake_zero_inits
from ..training.conftest import tiny_args

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _to(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(CUDA) for k, v in x.items()}


def test_stage2_bf16_forward_backward_matches_fp32() -> None:
    model = build(2, stage2_trainable="all").to(CUDA)
    wake_zero_inits(model)
    x = _to(inputs(2))
    want, _ = run(model, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, _ = run(model, x, drop_reference=torch.tensor([False, True], device=CUDA))
        same, _ = run(model, x, drop_reference=torch.tensor([False, False], device=CUDA))
    assert got.sample.dtype == torch.bfloat16 and torch.isfinite(got.sample.float()).all()
    torch.testing.assert_close(same.sample.float(), want.sample, rtol=0.05, atol=0.05)
    loss = got.sample.float().square().mean()
    for extra in (*got.heatmaps, *got.face_masks, *got.hand_masks):
        loss = loss + extra.float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_broadcast_codebook_attention_on_cuda() -> None:
    layer = AddedCrossAttention(320, 320, heads=8).to(CUDA)
    wake_zero_inits(layer)
    tokens = torch.randn(64, 77, 320, device=CUDA, requires_grad=True)
    book = torch.randn(1, 32, 320, device=CUDA, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        shared = layer(tokens, book)
        expanded = layer(tokens, book.expand(64, -1, -1).contiguous())
    torch.testing.assert_close(shared.float(), expanded.float(), rtol=0.02, atol=0.02)
    (g_shared,) = torch.autograd.grad(shared.float().sum(), book)
    (g_expanded,) = torch.autograd.grad(expanded.float().sum(), book)
    torch.testing.assert_close(g_shared, g_expanded, rtol=0.05, atol=0.5)


def test_fit_bf16_on_gpu_and_resume_with_ema(shards: Path, tmp_path: Path) -> None:
    gpu = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
           "--model.init_args.optim.ema_decay", "0.9"]
    cli.main(tiny_args(1, shards, tmp_path / "runs", 2, *gpu))
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    cli.main(tiny_args(1, shards, tmp_path / "runs", 4, *gpu, "--ckpt_path", str(last)))
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4


def test_benchmarks_run_on_cuda(tmp_path: Path) -> None:
    rows = model_bench.main(["--size", "tiny", "--device", "cuda", "--only", "yard1,stage2_ckpt", "--steps", "2",
                             "--warmup", "1"])
    assert all(r.time_s > 0 and r.peak_mem_gib > 0 and 0 < r.mfu <= r.hfu for r in rows)
    rows = training_bench.main(["--size", "tiny", "--device", "cuda", "--steps", "2", "--warmup", "1",
                                "--workers", "0", "--clips", "4"])
    assert [r["stage"] for r in rows] == [1, 2] and all(r["peak_mem_gib"] > 0 for r in rows)
    assert generation_bench.main(["--size", "tiny", "--device", "cuda", "--steps", "2", "--frames", "6",
                                  "--json", str(tmp_path / "gen.json")]) == 0
