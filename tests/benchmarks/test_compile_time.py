"""``benchmarks/compile_time.py`` on the tiny size and the CPU (dynamo's eager backend): one class compiled, its row and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import compile_time


def test_compile_time_rows_per_class(tmp_path: Path) -> None:
    out = tmp_path / "compile.json"
    rows = compile_time.main(["--size", "tiny", "--device", "cpu", "--steps", "1", "--json", str(out),
                              "--classes", "RegionCodebookAttention", "--backend", "eager"])
    assert [r["compiled"] for r in rows] == [[], ["RegionCodebookAttention"]]
    compiled = rows[1]
    assert compiled["blocks"] > 0 and compiled["graphs"] > 0 and compiled["recompiled_after"] == 0
    assert compiled["first_step_s"] > 0 and compiled["step_s"] > 0
    saved = json.loads(out.read_text())
    assert [r["compiled"] for r in saved["rows"]] == [r["compiled"] for r in rows]
    assert saved["rows"][1]["graphs"] == compiled["graphs"] and saved["tflop_per_step"] > 0
