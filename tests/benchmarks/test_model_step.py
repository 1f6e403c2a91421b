"""CPU smoke test of the GPU benchmark (the numbers themselves come from the device)."""

import json
from pathlib import Path

from benchmarks import model_step as bench


def test_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    results = bench.main(["--size", "tiny", "--device", "cpu", "--only", "yard1,stage1_ckpt,stage2",
                          "--steps", "1", "--warmup", "0", "--batch", "1", "--frames", "2",
                          "--motion-frames", "1", "--json", str(out)])
    assert [r.case for r in results] == ["yard1", "stage1_ckpt", "stage2"]
    data = json.loads(out.read_text())
    for row in data["results"]:
        assert row["time_s"] > 0 and row["tflop_per_step"] > 0 and row["params_m"] > 0
