"""``python -m data_prep.merge --output OUT [PART ...]``: one dataset from several machines' runs.

Two ways to run many machines (``--num-shards K --shard-index i``, see the README):

* **one shared output folder** (a network file system): every machine writes its own shards
  (names carry the shard index, so they never collide) and commit records into ``OUT/shards``.
  Readers need nothing more: :func:`cyberhost.data.iter_clips` reads every committed shard of
  the folder. ``python -m data_prep.merge --output OUT`` rebuilds ``manifest.json`` and
  ``report.json`` from all commit records once every machine is done (each machine rewrites
  them when it finishes, so the last one to finish already leaves complete files).
* **one output folder per machine**: ``python -m data_prep.merge --output OUT PART0 PART1 ...``
  copies every committed shard and its commit record from the part folders into ``OUT/shards``
  (tar first, record last, each through a temporary name: a killed merge leaves nothing half
  visible, and rerunning it skips what is already there), then rebuilds manifest and report.
  It refuses, before copying anything, an input that two parts both finished (its clip keys
  would repeat) and two different files with one name.

Files of the input folder that are not inputs are recorded by part 0 only (every machine scans
the same folder, so each would list the same files); the merge unites the ignored-file records
of the output and of the parts, one entry per path, so nothing is listed twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cyberhost.data.shards import commit_records
from cyberhost.media.files import atomic_copy
from data_prep.outputs import read_ignored, write_ignored, write_outputs


class MergeError(SystemExit):
    """Parts that cannot be merged: one clear message, non-zero exit."""

    def __init__(self, message: str) -> None:
        super().__init__(f"data_prep.merge: error: {message}")


def plan_merge(parts: list[Path], dest: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The commit records of ``parts`` still to copy into ``dest``, after checking them all.

    Args:
        parts: output folders (or their ``shards/`` folders) of separate runs.
        dest: the merged shard folder (may already hold shards of an earlier merge).

    Returns:
        ``(record path, record)`` pairs to copy, in order.

    Raises:
        MergeError: a part has no commit record, an input was finished by two parts, or two
            different files share a name.
    """
    owner = {e["file"]: Path(r["record_path"]) for r in commit_records(dest) for e in r["inputs"]} if dest.is_dir() else {}
    todo = []
    for part in parts:
        if part.resolve() in (dest.resolve(), dest.parent.resolve()):
            continue  # the output folder itself: its records are already in place
        records = commit_records(part) if part.is_dir() else []
        if not records:
            raise MergeError(f"{part}: no commit record (is it a data_prep output folder whose run finished an input?)")
        for record in records:
            src = Path(record.pop("record_path"))
            target = dest / src.name
            if target.exists():
                if target.read_bytes() == src.read_bytes():
                    continue  # merged before
                raise MergeError(f"{src} and {target} share a name but differ")
            for entry in record["inputs"]:
                if entry["file"] in owner:
                    raise MergeError(
                        f"input {entry['file']!r} was finished twice ({owner[entry['file']]} and {src}); its clip keys would"
                        " repeat. Merge parts of one partition only (same --num-shards, distinct --shard-index)"
                    )
                owner[entry["file"]] = src
            todo.append((src, record))
    return todo


def merge_parts(parts: list[Path], output: Path) -> int:
    """Copy the committed shards of ``parts`` into ``output/shards``.

    Args:
        parts: output folders of separate runs.
        output: the merged output folder.

    Returns:
        Number of commit records copied.
    """
    dest = output / "shards"
    todo = plan_merge(parts, dest)
    dest.mkdir(parents=True, exist_ok=True)
    for src, record in todo:
        if record["shard"]:
            atomic_copy(src.parent / record["shard"], dest / record["shard"])
        atomic_copy(src, dest / src.name)  # the record last: it is what makes the tar visible
    _merge_ignored(parts, dest)
    return len(todo)


def _merge_ignored(parts: list[Path], dest: Path) -> None:
    """One ignored-file record in ``dest``: its own entries and the parts' (normally part 0's only), one per path."""
    unique: dict[str, dict[str, str]] = {}
    for folder in (dest, *parts):
        for entry in read_ignored(folder):
            unique.setdefault(entry["file"], entry)
    write_ignored(dest, list(unique.values()))


def _part_config(parts: list[Path]) -> dict[str, Any] | None:
    configs = []
    for part in parts:
        manifest = part / "manifest.json"
        if manifest.is_file():
            configs.append(json.loads(manifest.read_text()).get("config"))
    if any(c != configs[0] for c in configs[1:]):
        print("data_prep.merge: warning: the parts were prepared with different configs; the manifest keeps the first", file=sys.stderr)
    return configs[0] if configs else None


def main(argv: list[str] | None = None) -> None:
    """Merge part folders (if any) into ``--output`` and rebuild its manifest and report."""
    p = argparse.ArgumentParser(prog="python -m data_prep.merge", description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, required=True, help="merged dataset folder (or the shared folder all machines wrote)")
    p.add_argument("parts", type=Path, nargs="*", help="output folders of separate machines to copy into --output")
    args = p.parse_args(argv)
    copied = merge_parts(args.parts, args.output) if args.parts else 0
    config = None if (args.output / "manifest.json").is_file() else _part_config(args.parts)
    manifest, report = write_outputs(args.output, config)
    print(
        f"data_prep.merge: {copied} commit record(s) copied; {manifest['clips']} clips in {len(manifest['shards'])} shards"
        f" from {manifest['inputs']} inputs ({manifest['ok']} ok, {manifest['skipped']} skipped), {report['summary']['ignored']} other"
        f" file(s) ignored -> {args.output}/manifest.json"
    )


if __name__ == "__main__":
    main()
