"""benchmarks/startup.py on the tiny size: 2 FSDP2 ranks start from meta, each holding about half the network."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import startup


def test_two_fsdp2_ranks_report_their_start_up(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    assert startup.main(["--size", "tiny", "--ranks", "2", "--strategy", "fsdp2", "--out", str(out),
                         "--tmp", str(tmp_path / "ranks")]) == 0
    result = json.loads(out.read_text())
    assert result["exit_codes"] == [0, 0] and len(result["per_rank"]) == 2
    for rank in result["per_rank"]:
        assert rank["built_on_meta"] and 0 < rank["peak_rss_gib"] < 8
        assert rank["seconds"]["imported"] <= rank["seconds"]["constructed"] <= rank["seconds"]["ready"]
        assert rank["parameters_on_this_rank"] < 0.75 * rank["parameters_total"]
