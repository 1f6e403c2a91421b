"""benchmarks/scaling.py as 2 gloo CPU ranks (timings on the CPU mean nothing), and its efficiency table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scaling
from tests.launch import run_module

ROOT = Path(__file__).resolve().parents[2]


def _launch(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report.json"
    run_module("benchmarks.scaling", "--size", "tiny", "--cpu", "--steps", "2", "--warmup", "1", "--out", str(out), *args,
               ranks=2)
    return json.loads(out.read_text())


def _check_common(r: dict, stage: int, strategy: str) -> None:
    assert r["stage"] == stage and r["strategy"] == strategy and r["world_size"] == 2 and r["steps_timed"] == 2
    assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(2 * r["batch_per_rank"] / r["step_s"])
    assert 0 <= r["step_spread_median"] <= r["step_spread_max"] < 1 and len(r["rank_median_step_s"]) == 2
    assert r["peak_mem_gib_max"] is None and all(m > 0 for m in r["host_peak_rss_gib_per_rank"])  # CPU: no GPU memory


def test_stage2_fsdp2_two_cpu_ranks_in_two_buckets_with_checkpoint(tmp_path: Path) -> None:
    """Stage 2 under FSDP2: one clip per rank, each rank in its own bucket; a distributed checkpoint timed and sized."""
    r = _launch(tmp_path, "--stage", "2", "--strategy", "fsdp2", "--forward-times", "--checkpoint-dir", str(tmp_path))
    _check_common(r, 2, "fsdp2")
    assert r["batch_per_rank"] == 1 and r["bucket_per_rank"][0] != r["bucket_per_rank"][1]
    assert len(r["forward_s_per_rank"]) == 2 and 0 <= r["forward_spread"] < 1
    ck = r["checkpoint"]
    assert ck["kind"] == "distributed-checkpoint folder" and ck["write_s"] > 0 and ck["read_s"] > 0
    assert 0 < ck["size_gib"] < 1 and not Path(ck["path"]).exists()  # measured, then removed


@pytest.mark.slow
def test_stage1_ddp_two_cpu_ranks(tmp_path: Path) -> None:
    r = _launch(tmp_path, "--stage", "1", "--strategy", "ddp")
    _check_common(r, 1, "ddp")
    assert r["batch_per_rank"] == 4 and r["bucket_per_rank"][0] == r["bucket_per_rank"][1] and r["checkpoint"] is None


def test_summarize_gives_efficiency_against_one_gpu_and_fsdp2_against_ddp(tmp_path: Path) -> None:
    base = {"stage": 1, "size": "sd15", "stage2_trainable": None, "device": "x", "step_s": 1.0,
            "step_spread_median": 0.0, "peak_mem_gib_max": None}
    reports = [{**base, "strategy": "ddp", "world_size": 1, "samples_per_s": 10.0},
               {**base, "strategy": "ddp", "world_size": 8, "samples_per_s": 72.0},
               {**base, "strategy": "fsdp2", "world_size": 8, "samples_per_s": 36.0}]
    paths = []
    for i, rep in enumerate(reports):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(rep))
    rows = {(r["strategy"], r["gpus"]): r for r in scaling.summarize(paths)}
    assert rows["ddp", 1]["efficiency"] == 1.0 and rows["ddp", 8]["efficiency"] == pytest.approx(0.9)
    assert rows["fsdp2", 8]["efficiency"] == pytest.approx(0.45)  # one rank is a single device for both
    assert rows["fsdp2", 8]["vs_ddp"] == pytest.approx(0.5) and rows["ddp", 8]["vs_ddp"] is None
