"""CPU smoke test of the training benchmark (real DataModule + LightningModule + Trainer)."""

from __future__ import annotations

from benchmarks import train as bench


def test_bench_tiny_cpu() -> None:
    rows = bench.main(["--size", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--workers", "0",
                       "--clips", "4"])
    assert [r["stage"] for r in rows] == [1, 2]
    for r in rows:
        assert r["steps_timed"] == 2 and r["samples_per_s"] > 0 and r["tflop_per_step"] > 0
        assert 0 <= r["data_wait_fraction"] < 1


def test_bench_host_nan_check_runs_the_host_guard() -> None:
    rows = bench.main(["--size", "tiny", "--device", "cpu", "--stages", "1", "--steps", "1", "--warmup", "1",
                       "--workers", "0", "--clips", "4", "--host-nan-check"])
    assert rows[0]["host_nan_check"] is True and rows[0]["steps_timed"] == 1
