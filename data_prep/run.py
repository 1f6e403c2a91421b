"""Inputs, partition across machines, resume bookkeeping and the parallel worker pool."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import stat
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cyberhost.data.shards import commit_records
from data_prep.config import PrepConfig
from data_prep.probe import file_kind
from data_prep.worker import worker_main


class PrepError(SystemExit):
    """A run that cannot start or produced nothing: one clear message, non-zero exit."""

    def __init__(self, message: str) -> None:
        super().__init__(f"data_prep: error: {message}")


@dataclass
class InputScan:
    """What ``--input`` holds.

    Attributes:
        inputs: paths (relative to the input folder, sorted) whose extension is a video extension.
        ignored: every other file, sorted by path: ``{"file", "status": "ignored", "reason"}``.
    """

    inputs: list[str]
    ignored: list[dict[str, str]]


def scan_inputs(input_dir: Path, extensions: tuple[str, ...]) -> InputScan:
    """The inputs under ``input_dir`` and, with a reason, every file that is not one.

    Inputs are matched by file extension only (case-insensitive; ``PrepConfig.extensions``),
    recursively. Every match is an input, whatever it is: a broken link, a FIFO or a directory
    named ``x.mp4`` gets a ``skipped`` report entry from the worker. Everything else is reported
    as ignored rather than dropped silently: a hidden file, a hidden folder (one entry, not
    searched), a file that is not regular (FIFO, socket, device, dangling link, link to a folder,
    which is not followed) or a file with another extension. Folders themselves are searched,
    not reported.

    Raises:
        PrepError: the folder is missing or holds no video file.
    """
    if not input_dir.is_dir():
        raise PrepError(f"input directory {input_dir} does not exist or is not a directory")
    inputs: list[str] = []
    ignored: list[dict[str, str]] = []
    pending = [input_dir]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as err:  # e.g. a sub-folder without read permission
            ignored.append(_ignored(Path(folder).relative_to(input_dir), f"folder not searched: {err.strerror or err}"))
            continue
        for entry in entries:
            rel = Path(entry.path).relative_to(input_dir)
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.name.startswith("."):
                ignored.append(_ignored(rel, "hidden folder (not searched)" if is_dir else "hidden file"))
                continue
            if rel.suffix.lower() in extensions:
                inputs.append(rel.as_posix())
            elif not is_dir:
                ignored.append(_ignored(rel, _not_a_video(entry, rel.suffix.lower(), extensions)))
            if is_dir:
                pending.append(Path(entry.path))
    if not inputs:
        note = f"; {len(ignored)} other file(s) ignored, e.g. {ignored[0]['file']}: {ignored[0]['reason']}" if ignored else ""
        raise PrepError(f"no video files ({', '.join(extensions)}) under {input_dir}{note}")
    return InputScan(sorted(inputs), sorted(ignored, key=lambda e: e["file"]))


def find_inputs(input_dir: Path, extensions: tuple[str, ...]) -> list[str]:
    """The inputs of :func:`scan_inputs` (relative paths, sorted)."""
    return scan_inputs(input_dir, extensions).inputs


def _ignored(rel: Path, reason: str) -> dict[str, str]:
    return {"file": rel.as_posix(), "status": "ignored", "reason": reason}


def _not_a_video(entry: os.DirEntry, suffix: str, extensions: tuple[str, ...]) -> str:
    """Why a file that is not a folder is not an input: what it is when not a regular file, else its extension."""
    try:
        mode = entry.stat(follow_symlinks=True).st_mode
    except OSError as err:
        if entry.is_symlink():
            return f"dangling symbolic link (target {os.readlink(entry.path)!r} does not exist)"
        return f"cannot stat: {err.strerror or err}"
    if entry.is_symlink() and stat.S_ISDIR(mode):
        return "symbolic link to a folder (not followed)"
    if not stat.S_ISREG(mode):
        return f"not a regular file ({file_kind(mode)})"
    accepted = f"(accepted: {', '.join(extensions)}; config key extensions)"
    return f"extension {suffix} is not a video extension {accepted}" if suffix else f"no file extension {accepted}"


def partition_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``(shard_index, num_shards)`` from the arguments, else SLURM array, SLURM task or torchrun variables.

    Raises:
        PrepError: an index outside ``[0, num_shards)``.
    """
    env = os.environ
    candidates = (
        ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
        ("SLURM_PROCID", "SLURM_NTASKS", None),
        ("RANK", "WORLD_SIZE", None),
    )
    env_index, env_count = 0, 1
    for idx, count, base in candidates:
        if idx in env and count in env:
            env_index, env_count = int(env[idx]) - int(env.get(base, 0) if base else 0), int(env[count])
            break
    index = env_index if shard_index is None else shard_index
    count = env_count if num_shards is None else num_shards
    if count < 1 or not 0 <= index < count:
        raise PrepError(f"shard index {index} is outside [0, {count}) (check --shard-index/--num-shards)")
    return index, count


def partition(inputs: list[str], shard_index: int, num_shards: int) -> list[str]:
    """This machine's inputs: a stable hash of the path modulo ``num_shards`` (adding files moves none)."""
    return [r for r in inputs if int(hashlib.sha1(r.encode()).hexdigest(), 16) % num_shards == shard_index]


def finished_inputs(shard_dir: Path) -> set[str]:
    """Inputs named by a commit record (finished by any earlier run on any machine)."""
    return {entry["file"] for record in commit_records(shard_dir) for entry in record["inputs"]} if shard_dir.is_dir() else set()


@dataclass
class RunResult:
    """What a run did.

    Attributes:
        entries: report entries of the inputs finished in this run.
        seconds: per-step worker seconds, summed over workers.
        wall: wall-clock seconds of the pool.
        frames: frames decoded and annotated.
        errors: fatal worker errors (e.g. a keypoint model that cannot load).
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    wall: float = 0.0
    frames: int = 0
    errors: list[str] = field(default_factory=list)


def worker_cores(workers: int, usable: list[int]) -> list[int | None]:
    """The CPU each worker is pinned to: the i-th usable one, or None for all (one worker, or too few CPUs)."""
    if workers < 2 or workers > len(usable):
        return [None] * workers
    return usable[:workers]


def run_pool(todo: list[str], input_dir: Path, shard_dir: Path, cfg: PrepConfig, workers: int, shard_index: int, progress: bool = True) -> RunResult:
    """Process ``todo`` with ``workers`` processes (spawned, each with its own backend and shard writer).

    Args:
        todo: input paths relative to ``input_dir``.
        input_dir: the input folder.
        shard_dir: where shards and commit records go.
        cfg: the prep config.
        workers: number of worker processes (at least 1).
        shard_index: this machine's shard index (in shard names).
        progress: show a live tqdm bar on stderr.

    Returns:
        The run's result.
    """
    ctx = mp.get_context("spawn")  # MediaPipe/OpenCV threads do not survive fork
    tasks, events = ctx.Queue(), ctx.Queue()
    for rel in todo:
        tasks.put(rel)
    workers = max(1, min(workers, len(todo)))
    for _ in range(workers):
        tasks.put(None)
    args = (shard_index, cfg, str(input_dir), str(shard_dir), tasks, events)
    cores = worker_cores(workers, sorted(os.sched_getaffinity(0))) if cfg.pin_workers else [None] * workers
    procs = [ctx.Process(target=worker_main, args=(w, *args), kwargs={"core": cores[w]}, daemon=True)
             for w in range(workers)]
    result, start = RunResult(), time.perf_counter()
    for p in procs:
        p.start()
    bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    timings = 0
    with bar:
        while timings + len(result.errors) < workers:
            try:
                kind, payload = events.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break  # a worker died without saying goodbye (e.g. killed)
                continue
            timings += _handle(kind, payload, result, bar)
            elapsed = time.perf_counter() - start
            bar.set_postfix({"clips": sum(e["clips"] for e in result.entries), "frames/s": f"{result.frames / max(elapsed, 1e-9):.1f}"})
    for p in procs:
        p.join(timeout=30)
    result.wall = time.perf_counter() - start
    return result


def _handle(kind: str, payload: Any, result: RunResult, bar: tqdm) -> int:
    if kind == "frames":
        result.frames += payload
    elif kind == "input":
        result.entries.append(payload)
        bar.update(1)
    elif kind == "error":
        result.errors.append(payload)
    elif kind == "timing":
        for step, s in payload.items():
            result.seconds[step] += s
        return 1
    return 0
