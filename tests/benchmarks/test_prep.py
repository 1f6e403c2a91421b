"""The data-prep benchmark: goal verdict on made-up numbers, and a smoke run of every code path."""

from __future__ import annotations

import json

from benchmarks import prep as bench


def _run(workers: int, frames_per_s: float, **seconds: float) -> dict[str, float]:
    row = {"workers": workers, "frames_per_s": frames_per_s, "frames_per_s_per_core": frames_per_s / workers}
    for step in bench.STEPS:
        row[f"{step}_s"] = seconds.get(step, 1.0)
        row[f"{step}_frames_per_s_per_worker"] = 100.0 / row[f"{step}_s"]
    return row


def test_verdict_meets_and_misses_goals():
    ok = bench.verdict([_run(1, 30.0, keypoints=3.0), _run(2, 56.0, keypoints=3.1)])
    assert ok["per_core_goal_met"] and ok["speedup"] == 1.87 and ok["speedup_goal_met"] and ok["slowest_step"] == "keypoints"
    assert "met" in ok["summary"] and "MISSED" not in ok["summary"] and "keypoints (43% of worker time" in ok["summary"]
    slow = bench.verdict([_run(1, 30.0, decode=5.0), _run(2, 48.0)])  # 24 frames/s per core with 2 workers
    assert not slow["per_core_goal_met"] and slow["speedup"] == 1.6 and not slow["speedup_goal_met"] and slow["slowest_step"] == "decode"
    assert slow["summary"].count("MISSED") == 2
    single = bench.verdict([_run(1, 26.0, clarity=2.0)])
    assert single["per_core_goal_met"] and single["speedup"] is None and single["speedup_goal_met"] is None
    assert single["slowest_step"] == "clarity" and "not measured" in single["summary"]


def test_smoke_run_has_every_step_and_a_verdict(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--smoke", "--output", str(out)])
    assert json.loads(out.read_text())["smoke"] is True
    (run,) = results["pipeline"]
    assert run["workers"] == 1 and 16 <= run["frames"] <= 18 and run["frames_per_s"] > 0
    assert all(f"{step}_s" in run for step in ("decode", "keypoints", "clarity", "regions", "write"))
    assert run["keypoints_s"] > 0 and run["decode_s"] > 0 and run["write_s"] > 0
    assert set(results["encoding"]) == {"jpg_q90", "mp4_crf18", "mp4_crf23"} and "tracking_ms" in results["keypoints_ms_per_frame"]
    assert results["goals"]["slowest_step"] in bench.STEPS
    assert "benchmarks.prep: (smoke run, numbers are meaningless) end-to-end" in capsys.readouterr().out
