"""Step 8b: ``manifest.json`` and ``report.json`` from the commit records of all shards.

Both files are rebuilt from the commit records (the source of truth), so they always describe
every finished input of every run and machine writing into the same output folder. With several
machines, the last one to finish writes complete files; ``python -m data_prep.merge --output OUT``
rebuilds them at any time.

Files under ``--input`` that are not inputs (other extensions, hidden, not regular files) are no
commit record's business: the input scan is the same on every machine, so part 0 alone records
them, in ``shards/ignored.json`` (rewritten by every run of part 0), and the report lists them
under ``ignored``. Merging per-machine folders unites the parts' lists, one entry per path.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from cyberhost.data.shards import commit_records
from cyberhost.media.files import atomic_write_bytes

FORMAT = "cyberhost-clips/1"
IGNORED = "ignored.json"
"""Name of the ignored-files record in ``shards/`` (written by part 0; see the module docstring)."""


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=False).encode())


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
    taken = {e["file"] for e in entries}
    ignored = [e for e in read_ignored(shard_dir) if e["file"] not in taken]  # an input of another run's config
    status = Counter(e["status"] for e in entries)
    summary = {"inputs": len(entries), "ok": status["ok"], "skipped": status["skipped"], "clips": sum(e["clips"] for e in entries), "frames": sum(e.get("frames", 0) for e in entries)}
    old = output / "manifest.json"
    if config is None and old.is_file():
        config = json.loads(old.read_text()).get("config")
    fps = (config or {}).get("fps", 25.0)
    manifest = {"format": FORMAT, **summary, "hours": round(summary["frames"] / fps / 3600, 4), "config": config, "shards": shards}
    report = {"summary": {**summary, "ignored": len(ignored)}, "files": entries, "ignored": ignored}
    output.mkdir(parents=True, exist_ok=True)
    _write_json(output / "manifest.json", manifest)
    _write_json(output / "report.json", report)
    return manifest, report


def write_ignored(shard_dir: Path, ignored: list[dict[str, str]]) -> None:
    """Record the files of ``--input`` that are not inputs (an empty list is written only over an old record).

    Args:
        shard_dir: the output's ``shards/`` folder.
        ignored: entries ``{"file", "status": "ignored", "reason"}``.
    """
    path = shard_dir / IGNORED
    if not ignored and not path.is_file():
        return  # nothing to say: a run that ignores nothing leaves no trace
    shard_dir.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"ignored": sorted(ignored, key=lambda e: e["file"])})


def read_ignored(folder: Path) -> list[dict[str, str]]:
    """The ignored-file entries recorded under ``folder`` (an output, its ``shards/`` or several parts), one per path.

    Where two records name the same path (parts merged from several runs), the first by path is kept.
    """
    unique: dict[str, dict[str, str]] = {}
    for path in sorted(folder.rglob(IGNORED)) if folder.is_dir() else []:
        try:
            entries = json.loads(path.read_text())["ignored"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for entry in entries:
            unique.setdefault(entry["file"], entry)
    return sorted(unique.values(), key=lambda e: e["file"])


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("file", "status", "reason", "clips", "frames") if k in entry}
