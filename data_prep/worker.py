"""One input video -> clips in the worker's shard writer and one report entry.

:func:`process_input` is the per-video pipeline (probe, decode, audio, segment, keypoints,
regions, filters, write); :func:`worker_main` is the loop of a worker process.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.shards import ClipShardWriter
from cyberhost.media.audio import read_aligned_audio
from cyberhost.media.keypoints import KeypointBackend, make_backend
from cyberhost.media.video import FrameReader, MediaError
from data_prep.annotate import AnnotatedFrame, StepTimer, annotate_frames, clip_regions
from data_prep.audio import clip_audio
from data_prep.config import PrepConfig
from data_prep.filters import audio_problem, clip_problem
from data_prep.probe import SkipInput, probe
from data_prep.segment import needed, windows

Progress = Callable[[int], None]


def source_id(rel: str) -> str:
    """Key-safe, unique id of an input path: readable stem plus a hash of the whole path."""
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", Path(rel).stem).strip("_")[:40] or "video"
    return f"{stem}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def build_clip(
    key: str, start: int, items: list[AnnotatedFrame], audio: np.ndarray, reader: FrameReader, rel: str, cfg: PrepConfig, backend: str, timer: StepTimer | None = None
) -> dict[str, Any]:
    """Assemble the schema dict of one clip (``timer`` receives the ``clarity`` time)."""
    images = np.stack([it.image for it in items])
    keypoints = np.stack([it.keypoints for it in items]).astype(np.float32)
    t0 = (reader.start_time or 0.0) + start / cfg.fps
    return {
        "key": key,
        "frames": images,
        "audio": clip_audio(audio, start, len(items), cfg.fps),
        "keypoints": keypoints,
        **clip_regions(images, keypoints, cfg.regions, timer),
        "fps": float(cfg.fps),
        "source": rel,
        "start": round(t0, 6),
        "end": round(t0 + len(items) / cfg.fps, 6),
        "width": int(images.shape[2]),
        "height": int(images.shape[1]),
        "num_frames": len(items),
        "backend": backend,
    }


def _decode(reader: FrameReader, cfg: PrepConfig, timer: StepTimer, progress: Progress) -> Any:
    for k, image in timer.timed("decode", reader):
        if needed(k, cfg.clip_frames, cfg.clip_stride):
            progress(1)
            yield k, image


def process_input(path: Path, rel: str, cfg: PrepConfig, backend: KeypointBackend, writer: ClipShardWriter, timer: StepTimer, progress: Progress) -> dict[str, Any]:
    """Turn one video into clips written by ``writer``.

    Args:
        path: the file.
        rel: its path relative to the input folder (the report's ``file``).
        cfg: the prep config.
        backend: keypoint backend of this worker.
        writer: the worker's shard writer (the caller calls ``finish_input``).
        timer: collects per-step seconds.
        progress: called with the number of frames done.

    Returns:
        The report entry: ``file``, ``status`` (ok|skipped), ``reason``, ``clips``, and ``frames``.
    """
    info = probe(path, cfg)
    reader = FrameReader(path, cfg.fps, cfg.max_short_side)
    backend.reset()
    sid, audio, kept, frames, rejected = source_id(rel), None, 0, 0, Counter()
    stream = annotate_frames(_decode(reader, cfg, timer, progress), backend, cfg.regions.min_confidence, timer)
    for index, (start, items) in enumerate(windows(stream, cfg.clip_frames, cfg.clip_stride, cfg.min_clip_frames)):
        if audio is None:  # after the first clip's frames, so the video's start time is known
            t = time.perf_counter()
            audio, audio_error = read_aligned_audio(path, reader.start_time or 0.0, AUDIO_SAMPLE_RATE)
            timer.add("decode", time.perf_counter() - t)
        t, clarity = time.perf_counter(), timer.seconds["clarity"]
        clip = build_clip(f"{sid}-{index:04d}", start, items, audio, reader, rel, cfg, backend.name, timer)
        problem = audio_problem(len(audio), info.has_audio, start, len(items), cfg.fps) or clip_problem(
            clip["keypoints"], clip["face_box"], np.array([it.second_ratio for it in items]), cfg.regions.min_confidence, cfg.filters
        )
        timer.add("regions", time.perf_counter() - t - (timer.seconds["clarity"] - clarity))
        if problem:
            rejected[problem] += 1
            continue
        t = time.perf_counter()
        writer.write(clip)
        timer.add("write", time.perf_counter() - t)
        kept, frames = kept + 1, frames + len(items)
    return _entry(rel, info.duration, reader, kept, frames, rejected, audio_error if audio is not None else None)


def _entry(rel: str, duration: float, reader: FrameReader, kept: int, frames: int, rejected: Counter, audio_error: str | None) -> dict[str, Any]:
    notes = [f"{n} clip(s) dropped: {why}" for why, n in rejected.most_common()]
    if reader.error:
        notes.append(reader.error)
    decoded = reader.frames_out / reader.fps
    if duration - decoded > 0.5:
        notes.append(f"decoded {float(decoded):.2f} s of the {duration:.2f} s the container announces (truncated?)")
    if audio_error:
        notes.append(audio_error)
    if reader.rotation:
        notes.append(f"rotated by {reader.rotation} degrees")
    if kept == 0 and not rejected:
        notes.insert(0, f"too short: {float(decoded):.2f} s of video gives no clip of the minimum length")
    return {"file": rel, "status": "ok" if kept else "skipped", "reason": "; ".join(notes), "clips": kept, "frames": frames}


def safe_process(path: Path, rel: str, cfg: PrepConfig, backend: KeypointBackend, writer: ClipShardWriter, timer: StepTimer, progress: Progress) -> dict[str, Any]:
    """:func:`process_input` that turns every failure into a ``skipped`` entry (never raises)."""
    written = writer.open_input_clips
    try:
        return process_input(path, rel, cfg, backend, writer, timer, progress)
    except (SkipInput, MediaError) as err:  # MediaError: the decoder's reason (no decodable frame...)
        reason = str(err)
    except Exception as err:  # noqa: BLE001 - one bad video must not stop the run
        reason = f"internal error ({type(err).__name__}: {err}); {traceback.format_exc(limit=-1).strip().splitlines()[-2].strip()}"
    clips = writer.open_input_clips - written
    return {"file": rel, "status": "ok" if clips else "skipped", "reason": reason, "clips": clips, "frames": 0}


def _log_to_file(path: Path) -> None:
    """Send this process's stderr (MediaPipe's C++ log lines, tracebacks) to a file, not over the progress bar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(worker: int, shard_index: int, cfg: PrepConfig, input_dir: str, shard_dir: str, tasks: Any, events: Any,
                core: int | None = None) -> None:
    """Worker process: take input paths from ``tasks`` until ``None``, report to ``events``.

    Events: ``("frames", n)``, ``("input", entry)``, ``("timing", seconds_by_step)``, ``("error", text)``.
    ``core``: pin this process (and the threads its keypoint backend starts) to that CPU.
    """
    if core is not None:
        os.sched_setaffinity(0, {core})  # before the backend starts its threads: they inherit it
    _log_to_file(Path(shard_dir).parent / "logs" / f"worker-{shard_index:05d}-{worker:03d}.log")
    try:
        backend = make_backend(cfg.keypoints.backend, **cfg.keypoints.backend_options())
    except Exception as err:  # noqa: BLE001 - e.g. missing rtmlib model files: tell the parent
        events.put(("error", f"{type(err).__name__}: {err}"))
        return
    timer, pending = StepTimer(), [0]

    def progress(n: int) -> None:
        pending[0] += n
        if pending[0] >= 10:
            events.put(("frames", pending[0]))
            pending[0] = 0

    with ClipShardWriter(shard_dir, shard_index=shard_index, worker=worker, max_shard_bytes=int(cfg.max_shard_mb * 2**20), frame_encoding=cfg.frame_encoding, quality=cfg.quality) as writer:
        for rel in iter(tasks.get, None):
            entry = safe_process(Path(input_dir) / rel, rel, cfg, backend, writer, timer, progress)
            t = time.perf_counter()
            writer.finish_input(entry)
            timer.add("write", time.perf_counter() - t)
            events.put(("frames", pending[0]))
            pending[0] = 0
            events.put(("input", entry))
    backend.close()
    events.put(("timing", dict(timer.seconds)))
