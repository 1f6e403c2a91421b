"""``python -m data_prep.bench`` (``make bench-prep``): data-prep throughput and the frame-encoding trade-off.

Three measurements on the committed samples (repeated ``--copies`` times so two workers have work):

1. end-to-end frames/s of ``python -m data_prep``'s worker pool with 1 and 2 workers, and per
   step (decode, keypoints, regions + clarity, encode + write) from the workers' step timers;
2. MediaPipe per-frame cost in static-image mode, tracking mode, and tracking at a reduced size;
3. frame encoding: bytes per frame, encode time, and decode time of 2 random frames, of 16
   consecutive frames and of a whole clip, for per-frame JPEG vs one H.264 segment per clip.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from cyberhost.data.keypoints import MediaPipeHolistic
from cyberhost.data.shards import decode_frames, encode_frames
from data_prep.config import PrepConfig
from data_prep.run import find_inputs, run_pool
from data_prep.video import FrameReader

SAMPLES = Path(__file__).parent / "samples"


def bench_pipeline(copies: int, workers: int, cfg: PrepConfig) -> dict[str, float]:
    """Run the worker pool over ``copies`` x the samples; frames/s overall and per step."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        for c in range(copies):
            for src in sorted(SAMPLES.glob("*.mp4")):
                os.symlink(src.resolve(), raw / f"{c}_{src.name}")
        result = run_pool(find_inputs(raw, cfg.extensions), raw, Path(tmp) / "out" / "shards", cfg, workers, 0, progress=False)
    out = {"workers": workers, "frames": result.frames, "wall_s": round(result.wall, 2), "frames_per_s": round(result.frames / result.wall, 1)}
    for step, seconds in sorted(result.seconds.items()):
        out[f"{step}_frames_per_s_per_worker"] = round(result.frames / seconds, 1) if seconds else float("inf")
    return out


def bench_keypoints(frames: np.ndarray) -> dict[str, float]:
    """Milliseconds per frame of MediaPipe holistic variants."""
    out = {}
    for name, kwargs in {"static": {"static_image_mode": True}, "tracking": {}, "tracking_256": {"detect_short_side": 256}}.items():
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


def source_clips(cfg: PrepConfig) -> list[dict]:
    """Clips of ``cfg.clip_frames`` frames straight from the decoder (not re-encoded), from every sample."""
    clips = []
    for path in sorted(SAMPLES.glob("*.mp4")):
        frames = [f for _, f in FrameReader(path, cfg.fps, cfg.max_short_side)]
        for s in range(0, len(frames) - cfg.clip_frames + 1, cfg.clip_frames):
            clips.append({"frames": np.stack(frames[s : s + cfg.clip_frames]), "fps": cfg.fps})
    return clips


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks and print/save the numbers."""
    p = argparse.ArgumentParser(prog="python -m data_prep.bench", description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=2, help="times the samples are repeated as inputs")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--output", type=Path, default=Path("data/bench-prep.json"))
    p.add_argument("--skip-pipeline", action="store_true")
    args = p.parse_args(argv)
    cfg = PrepConfig()
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()}
    clips = source_clips(cfg)
    results["encoding"] = bench_encoding(clips, np.random.default_rng(0))
    results["keypoints_ms_per_frame"] = bench_keypoints(clips[0]["frames"])
    if not args.skip_pipeline:
        results["pipeline"] = [bench_pipeline(args.copies, w, cfg) for w in args.workers]
        runs = results["pipeline"]
        if len(runs) >= 2:
            results["speedup"] = round(runs[-1]["frames_per_s"] / runs[0]["frames_per_s"], 2)
    results["load_avg_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
