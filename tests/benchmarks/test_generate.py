"""Smoke test of the generation benchmark (CPU, tiny; the timings mean nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.generate import main


def test_bench_tiny_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--size", "tiny", "--device", "cpu", "--steps", "2", "--segments", "2", "--frames", "6",
                 "--warmup", "0", "--json", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"eager", "ours", "ours_batched"}
    assert rows["eager"]["reference_net_calls"] == 2 * 2  # every step of every segment
    assert rows["ours"]["reference_net_calls"] == 2 and rows["ours_batched"]["reference_net_calls"] == 2
    assert all(r["frames"] == 12 and r["frames_per_s"] > 0 for r in rows.values())
    assert "| ours |" in capsys.readouterr().out
