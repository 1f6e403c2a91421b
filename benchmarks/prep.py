"""``python -m benchmarks.prep`` (``make bench-prep``): data-prep throughput and the frame-encoding trade-off.

Three measurements on the committed samples (repeated ``--copies`` times so two workers have work):

1. end-to-end frames/s of ``python -m data_prep``'s worker pool with 1 and 2 workers, and per
   step (decode = video and audio decoding, keypoints, clarity, regions = boxes + audio cut +
   filters, write = encode + tar write) from the workers' step timers; then whether the goals are met (>= 25 frames/s per
   core end-to-end with MediaPipe, >= 1.8x from 1 to 2 workers) and which step is the slowest;
2. MediaPipe per-frame cost in static-image mode, tracking mode, and tracking at a reduced size;
3. frame encoding: bytes per frame, encode time, and decode time of 2 random frames, of 16
   consecutive frames and of a whole clip, for per-frame JPEG vs one H.264 segment per clip.

``--smoke`` runs every code path in a few seconds (one 0.68 s input, one worker, one keypoint
variant on a few frames, one clip per encoding); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np

import data_prep
from cyberhost.data.keypoints import MediaPipeHolistic
from cyberhost.data.shards import decode_frames, encode_frames
from data_prep.config import PrepConfig
from data_prep.run import find_inputs, run_pool
from data_prep.video import FrameReader

SAMPLES = Path(data_prep.__file__).parent / "samples"  # package data, so also found when installed


STEPS = ("decode", "keypoints", "clarity", "regions", "write")
"""Worker step timers (:class:`data_prep.annotate.StepTimer`), in pipeline order."""
GOAL_FRAMES_PER_S_PER_CORE = 25.0
GOAL_SPEEDUP_1_TO_2 = 1.8


def _link_inputs(raw: Path, copies: int, sources: list[Path]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for src in sources:
            os.symlink(src.resolve(), raw / f"{c}_{src.name}")


def bench_pipeline(copies: int, workers: int, cfg: PrepConfig, sources: list[Path] | None = None) -> dict[str, float]:
    """Run the worker pool over ``copies`` x the samples; frames/s overall and per step."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        _link_inputs(raw, copies, sources or sorted(SAMPLES.glob("*.mp4")))
        result = run_pool(find_inputs(raw, cfg.extensions), raw, Path(tmp) / "out" / "shards", cfg, workers, 0, progress=False)
    if result.errors:
        raise RuntimeError(result.errors[0])
    fps = result.frames / result.wall
    out: dict[str, float] = {"workers": workers, "frames": result.frames, "wall_s": round(result.wall, 2), "frames_per_s": round(fps, 1)}
    out["frames_per_s_per_core"] = round(fps / workers, 1)
    for step in STEPS:
        seconds = result.seconds.get(step, 0.0)
        out[f"{step}_s"] = round(seconds, 3)
        out[f"{step}_frames_per_s_per_worker"] = round(result.frames / seconds, 1) if seconds else float("inf")
    return out


def verdict(runs: list[dict[str, float]]) -> dict[str, object]:
    """Whether the throughput goals are met, and the slowest step.

    Args:
        runs: :func:`bench_pipeline` results, the first with 1 worker.

    Returns:
        ``per_core_goal_met`` (every run reaches :data:`GOAL_FRAMES_PER_S_PER_CORE` frames/s per
        core), ``speedup`` and ``speedup_goal_met`` from the 1- to the 2-worker run (``None`` without
        both), ``slowest_step`` (most worker seconds in the first run) and a one-line ``summary``.
    """
    per_core = [r["frames_per_s_per_core"] for r in runs]
    one = next((r for r in runs if r["workers"] == 1), None)
    two = next((r for r in runs if r["workers"] == 2), None)
    speedup = round(two["frames_per_s"] / one["frames_per_s"], 2) if one and two else None
    slowest = max(STEPS, key=lambda step: runs[0].get(f"{step}_s", 0.0))
    out: dict[str, object] = {
        "per_core_goal_met": all(v >= GOAL_FRAMES_PER_S_PER_CORE for v in per_core),
        "speedup": speedup,
        "speedup_goal_met": None if speedup is None else speedup >= GOAL_SPEEDUP_1_TO_2,
        "slowest_step": slowest,
    }
    share = runs[0][f"{slowest}_s"] / max(sum(runs[0].get(f"{s}_s", 0.0) for s in STEPS), 1e-9)
    met = {True: "met", False: "MISSED", None: "not measured (needs a 1- and a 2-worker run)"}
    out["summary"] = (
        f"end-to-end {', '.join(f'{v:.1f}' for v in per_core)} frames/s per core (goal >= {GOAL_FRAMES_PER_S_PER_CORE:g}): "
        f"{met[out['per_core_goal_met']]}; speed-up 1 -> 2 workers "
        f"{'-' if speedup is None else f'{speedup:.2f}x'} (goal >= {GOAL_SPEEDUP_1_TO_2:g}x): {met[out['speedup_goal_met']]}; "
        f"slowest step: {slowest} ({share:.0%} of worker time, {runs[0][f'{slowest}_frames_per_s_per_worker']} frames/s per worker)"
    )
    return out


def short_copy(src: Path, dst: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src`` remuxed (no re-encoding) into ``dst``."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (*inp.streams.video[:1], *inp.streams.audio[:1])}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is None or packet.pts is None or float(packet.pts * packet.time_base) >= seconds:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


KEYPOINT_VARIANTS = {"static": {"static_image_mode": True}, "tracking": {}, "tracking_256": {"detect_short_side": 256}}


def bench_keypoints(frames: np.ndarray, variants: tuple[str, ...] = tuple(KEYPOINT_VARIANTS)) -> dict[str, float]:
    """Milliseconds per frame of MediaPipe holistic variants."""
    out = {}
    for name in variants:
        kwargs = KEYPOINT_VARIANTS[name]
        backend = MediaPipeHolistic(**kwargs)
        backend(frames[0])  # graph start-up is not per-frame cost
        t = time.perf_counter()
        for f in frames:
            backend(f)
        out[f"{name}_ms"] = round(1000 * (time.perf_counter() - t) / len(frames), 1)
        backend.close()
    return out


def bench_encoding(clips: list[dict], rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Size, encode and random/consecutive decode time of each frame encoding."""
    out = {}
    for name, encoding, quality in (("jpg_q90", "jpg", 90), ("mp4_crf18", "mp4", 65), ("mp4_crf23", "mp4", 55)):
        sizes, enc, dec2, dec16, dec_all, psnr = [], [], [], [], [], []
        for clip in clips:
            frames = clip["frames"]
            t = time.perf_counter()
            sample = encode_frames(frames, encoding, quality, clip["fps"])
            enc.append(time.perf_counter() - t)
            sizes.append(sum(len(v) for v in sample.values()) / len(frames))
            n = len(frames)
            for _ in range(5):
                t = time.perf_counter()
                decode_frames(sample, sorted(rng.choice(n, 2, replace=False).tolist()))
                dec2.append(time.perf_counter() - t)
                start = int(rng.integers(0, n - 16 + 1))
                t = time.perf_counter()
                decode_frames(sample, range(start, start + 16))
                dec16.append(time.perf_counter() - t)
            t = time.perf_counter()
            back = decode_frames(sample)
            dec_all.append(time.perf_counter() - t)
            mse = np.mean((back.astype(np.float64) - frames[:, : back.shape[1], : back.shape[2]]) ** 2)
            psnr.append(10 * np.log10(255**2 / mse))
        out[name] = {
            "kB_per_frame": round(float(np.mean(sizes)) / 1e3, 1),
            "encode_ms_per_frame": round(1000 * float(np.sum(enc)) / sum(len(c["frames"]) for c in clips), 2),
            "decode_2_random_ms": round(1000 * float(np.mean(dec2)), 1),
            "decode_16_consecutive_ms": round(1000 * float(np.mean(dec16)), 1),
            "decode_clip_ms": round(1000 * float(np.mean(dec_all)), 1),
            "psnr_db": round(float(np.mean(psnr)), 1),
        }
    return out


def source_clips(cfg: PrepConfig, paths: list[Path] | None = None) -> list[dict]:
    """Clips of ``cfg.clip_frames`` frames straight from the decoder (not re-encoded), from every sample."""
    clips = []
    for path in paths or sorted(SAMPLES.glob("*.mp4")):
        frames = [f for _, f in FrameReader(path, cfg.fps, cfg.max_short_side)]
        for s in range(0, len(frames) - cfg.clip_frames + 1, cfg.clip_frames):
            clips.append({"frames": np.stack(frames[s : s + cfg.clip_frames]), "fps": cfg.fps})
    return clips


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmarks, print the numbers and the goal verdict, save them as JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.prep", description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=2, help="times the samples are repeated as inputs")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--output", type=Path, default=Path("data/bench-prep.json"))
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--smoke", action="store_true", help="every code path in seconds: 1 short input, 1 worker, meaningless numbers")
    args = p.parse_args(argv)
    cfg = PrepConfig(clip_frames=16, clip_stride=16, min_clip_frames=16, max_short_side=160) if args.smoke else PrepConfig()
    results: dict[str, object] = {"smoke": args.smoke, "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()}
    clips = source_clips(cfg, sorted(SAMPLES.glob("*.mp4"))[:1])[:1] if args.smoke else source_clips(cfg)
    results["encoding"] = bench_encoding(clips, np.random.default_rng(0))
    frames = clips[0]["frames"][:5] if args.smoke else clips[0]["frames"]
    results["keypoints_ms_per_frame"] = bench_keypoints(frames, ("tracking",) if args.smoke else tuple(KEYPOINT_VARIANTS))
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            sources = [short_copy(sorted(SAMPLES.glob("*.mp4"))[0], Path(tmp) / "short.mp4", 0.68)] if args.smoke else None
            workers = [1] if args.smoke else args.workers
            copies = 1 if args.smoke else args.copies
            results["pipeline"] = runs = [bench_pipeline(copies, w, cfg, sources) for w in workers]
        results["goals"] = verdict(runs)
        results["speedup"] = results["goals"]["speedup"]
    results["load_avg_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    if "goals" in results:
        print(f"benchmarks.prep: {'(smoke run, numbers are meaningless) ' if args.smoke else ''}{results['goals']['summary']}")
    return results


if __name__ == "__main__":
    main()
