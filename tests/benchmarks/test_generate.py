"""Smoke test of the generation benchmark (CPU, tiny; the timings mean nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.generate import main


def test_bench_tiny_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--size", "tiny", "--device", "cpu", "--steps", "2", "--segments", "2", "--frames", "6",
                 "--warmup", "0", "--calls", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    rows = {r["case"]: r for r in report["rows"]}
    assert set(rows) == {"eager", "ours", "ours_batched"}
    assert rows["eager"]["reference_net_calls"] == 2 * 2  # every step of every segment
    assert rows["ours"]["reference_net_calls"] == 2 and rows["ours_batched"]["reference_net_calls"] == 2
    assert all(r["frames"] == 12 and r["frames_per_s"] > 0 for r in rows.values())
    calls = report["calls"]  # on a CPU the "graph" runs eagerly: the same network, the same prediction
    assert calls["batch"] == [3, 6, 4, 8, 8] and calls["eager_call_s"] > 0 and calls["graph_call_s"] > 0
    assert calls["graph_vs_eager_max_abs_diff"] == 0.0 and calls["eager_profile"]["kernels_per_step"] > 0
    printed = capsys.readouterr().out
    assert "| ours |" in printed and "one sampling call" in printed
