"""``python -m data_prep``: raw talking videos -> validated, sharded, resumable clip dataset.

Reads top-down: arguments and config -> the input scan (part 0 records every file that is not an
input, with the reason) -> this machine's share of the inputs -> drop what a killed run left and
what is already finished -> worker processes (probe, decode, audio, segment, keypoints, regions,
filters, write; see :mod:`data_prep.worker`) -> manifest and report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyberhost.data.shards import remove_uncommitted
from data_prep.config import PrepConfig
from data_prep.outputs import write_ignored, write_outputs
from data_prep.run import PrepError, finished_inputs, partition, partition_from_env, run_pool, scan_inputs

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "data" / "prep.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n")[0])
    p.add_argument("--input", type=Path, required=True, help="folder of raw videos (searched recursively)")
    p.add_argument("--output", type=Path, required=True, help="dataset folder: shards/, manifest.json, report.json")
    p.add_argument("--workers", type=int, default=2, help="worker processes on this machine")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None, help="prep YAML (conf/data/prep.yaml)")
    p.add_argument("--num-shards", type=int, default=None, help="machines sharing the inputs (default: SLURM/torchrun env, else 1)")
    p.add_argument("--shard-index", type=int, default=None, help="this machine's index (default: SLURM/torchrun env, else 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; returns the exit code.

    0 when an input of this part gave clips (now or in an earlier run), and when this part has no
    input at all (``--num-shards`` larger than the number of inputs). Raises :class:`PrepError`
    (exit 1, one message) when the input folder is missing or has no video, the config is bad, a
    worker cannot start its keypoint backend, or no input of this part gave a clip.

    Files under ``--input`` that are not inputs are recorded by part 0 only (``shards/ignored.json``,
    listed under ``ignored`` in ``report.json``; every part scans the same folder, so this lists
    each once), and every part prints their count.
    """
    args = parse_args(argv)
    try:
        cfg = PrepConfig.from_yaml(args.config)
    except (OSError, ValueError, TypeError) as err:
        raise PrepError(f"config {args.config}: {err}") from err
    shard_index, num_shards = partition_from_env(args.num_shards, args.shard_index)
    scan = scan_inputs(args.input, cfg.extensions)
    inputs = scan.inputs
    mine = partition(inputs, shard_index, num_shards)
    part = f"part {shard_index}/{num_shards}"
    shard_dir = args.output / "shards"
    if shard_index == 0:
        write_ignored(shard_dir, scan.ignored)
    if not mine:  # more parts than inputs: an idle SLURM array task is not a failure
        print(f"data_prep: {part}: none of the {len(inputs)} inputs falls in this part; nothing to do", file=sys.stderr)
        if shard_index == 0 and scan.ignored and (args.output / "manifest.json").is_file():
            write_outputs(args.output)  # the other parts' report gets part 0's ignored files
        _print_ignored(scan.ignored, shard_index, args.output)
        return 0
    remove_uncommitted(shard_dir, shard_index)
    done = finished_inputs(shard_dir)
    todo = [rel for rel in mine if rel not in done]
    print(f"data_prep: {part}: {len(mine)} inputs, {len(mine) - len(todo)} already done, {len(todo)} to do", file=sys.stderr)
    result = run_pool(todo, args.input, shard_dir, cfg, args.workers, shard_index, not args.no_progress) if todo else None
    if result and result.errors:
        raise PrepError(result.errors[0])
    manifest, report = write_outputs(args.output, cfg.to_dict())
    lost = len(todo) - len(result.entries) if result else 0
    print(f"data_prep: {manifest['clips']} clips from {manifest['ok']} of {manifest['inputs']} inputs ({manifest['skipped']} skipped) -> {args.output}/manifest.json, report {args.output}/report.json", file=sys.stderr)
    if lost:
        print(f"data_prep: {lost} input(s) unfinished (a worker died); rerun to retry them", file=sys.stderr)
    _print_ignored(scan.ignored, shard_index, args.output)
    mine_set = set(mine)
    if not any(e["status"] == "ok" for e in report["files"] if e["file"] in mine_set):  # only this part's inputs count
        raise PrepError(f"no input of {part} gave a clip ({len(mine)} inputs, {lost} unfinished); reasons are in {args.output}/report.json")
    return 0


def _print_ignored(ignored: list[dict[str, str]], shard_index: int, output: Path) -> None:
    where = f"see {output}/report.json" if shard_index == 0 else "part 0 lists them in report.json"
    print(f"data_prep: {len(ignored)} file{'' if len(ignored) == 1 else 's'} ignored ({where})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
