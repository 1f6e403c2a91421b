"""Step 8b: ``manifest.json`` and ``report.json`` from the commit records of all shards.

Both files are rebuilt from the commit records (the source of truth), so they always describe
every finished input of every run and machine writing into the same output folder. With several
machines, the last one to finish writes complete files; ``python -m data_prep.merge --output OUT``
rebuilds them at any time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from cyberhost.data.shards import commit_records

FORMAT = "cyberhost-clips/1"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    os.replace(tmp, path)


def write_outputs(output: Path, config: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rebuild the manifest and the report of an output folder.

    Args:
        output: the output folder (holding ``shards/``).
        config: the prep config to record in the manifest (kept from the old manifest if ``None``).

    Returns:
        ``(manifest, report)``.
    """
    shard_dir = output / "shards"
    records = commit_records(shard_dir) if shard_dir.is_dir() else []
    entries = sorted((_public(e) for r in records for e in r["inputs"]), key=lambda e: e["file"])
    shards = [
        {"path": Path(r["record_path"]).parent.joinpath(r["shard"]).relative_to(output).as_posix(), "clips": r["num_clips"], "bytes": r["bytes"], "keys": [k for e in r["inputs"] for k in e["keys"]]}
        for r in records
        if r["shard"]
    ]
    status = Counter(e["status"] for e in entries)
    summary = {"inputs": len(entries), "ok": status["ok"], "skipped": status["skipped"], "clips": sum(e["clips"] for e in entries), "frames": sum(e.get("frames", 0) for e in entries)}
    old = output / "manifest.json"
    if config is None and old.is_file():
        config = json.loads(old.read_text()).get("config")
    fps = (config or {}).get("fps", 25.0)
    manifest = {"format": FORMAT, **summary, "hours": round(summary["frames"] / fps / 3600, 4), "config": config, "shards": shards}
    report = {"summary": summary, "files": entries}
    output.mkdir(parents=True, exist_ok=True)
    _write_json(output / "manifest.json", manifest)
    _write_json(output / "report.json", report)
    return manifest, report


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("file", "status", "reason", "clips", "frames") if k in entry}
