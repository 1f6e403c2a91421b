"""``make demo``: the whole product on the embedded sample videos, with tiny models, on CPU.

sample videos (``data_prep/samples``) -> ``python -m data_prep`` -> stage 1 (``cyberhost fit``,
tiny) -> stage 2 from the stage-1 checkpoint (tiny) -> ``cyberhost generate`` of a short video
from a sample's first frame and its speech. Each step is the same command a user runs, called
in-process; everything lands under ``--output`` (default ``runs/demo``)::

    runs/demo/clips/               prepared dataset (shards/, manifest.json, report.json)
    runs/demo/stage1/tiny/         TensorBoard logs, config.yaml, checkpoints/, samples/, export/
    runs/demo/stage2/tiny/         the same for stage 2
    runs/demo/generated.mp4        the generated video (H.264 + the input speech)

The tiny networks are random-init and learn for a minute, so the video shows noise-like
colour blobs, not a person; the demo proves the pipeline runs end to end and that the losses fall.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SAMPLES = ROOT / "data_prep" / "samples"


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def loss_curve(run_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    """``(step, value)`` of a TensorBoard scalar from the event files under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return sorted(values.items())


def summarise_loss(curve: list[tuple[int, float]], window: int = 4) -> tuple[float, float]:
    """Mean of the first and of the last ``window`` logged values (noisy per-step losses, so averaged)."""
    if len(curve) < 2:
        raise RuntimeError("fewer than two logged losses: the run did not train")
    k = max(1, min(window, len(curve) // 2))
    vals = [v for _, v in curve]
    return float(np.mean(vals[:k])), float(np.mean(vals[-k:]))


def fit(stage: int, clips: Path, out: Path, steps: int) -> Path:
    """Run ``cyberhost fit`` for one tiny stage; returns its run directory."""
    from cyberhost.cli import main as cli

    configs = [CONF / f"stage{stage}.yaml", CONF / "debug" / "tiny.yaml"]
    extra: list[str] = []
    if stage == 2:
        configs.append(CONF / "debug" / "tiny_stage2.yaml")
        extra = ["--model.init_args.stage1_checkpoint", str(out / "stage1" / "tiny" / "checkpoints" / "last.ckpt")]
    args = ["fit"]
    for config in configs:
        args += ["--config", str(config)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads only ``args`` (and warns if argv has more)
    try:
        cli([
            *args, "--data.init_args.train_shards", str(clips), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(1, steps // 2)), *extra,
        ])  # fmt: skip
    finally:
        sys.argv = argv
    return out / f"stage{stage}" / "tiny"


def first_frame(video: Path, image: Path) -> Path:
    """Write the first frame of ``video`` as a PNG (the demo's reference image)."""
    from cyberhost.media import read_video

    frames, _ = read_video(video)
    cv2.imwrite(str(image), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    return image


def generate(sample: Path, checkpoint: Path, config: Path, video: Path, frames: int, steps: int = 4) -> int:
    """``cyberhost generate`` of ``frames`` frames from ``sample``'s first frame and its speech (CPU).

    Args:
        sample: a video with a person and speech (its first frame is the reference image).
        checkpoint: stage-2 checkpoint.
        config: the training config of the checkpoint.
        video: output mp4 (the reference image is written beside it).
        frames: frames to generate.
        steps: sampling steps.

    Returns:
        The command's exit status.
    """
    from cyberhost.inference.cli import main as generate_cli

    video.parent.mkdir(parents=True, exist_ok=True)
    image = first_frame(sample, video.parent / "reference.png")
    return generate_cli([
        "--image", str(image), "--audio", str(sample), "--checkpoint", str(checkpoint), "--config", str(config),
        "--output", str(video), "--max-frames", str(frames), "--steps", str(steps), "--device", "cpu",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m cyberhost.demo", description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, default=Path("runs/demo"), help="everything is written here")
    p.add_argument("--samples", type=Path, default=SAMPLES, help="folder of raw sample videos")
    p.add_argument("--steps", type=int, default=60, help="training steps per stage")
    p.add_argument("--frames", type=int, default=24, help="frames of the generated video")
    p.add_argument("--workers", type=int, default=2, help="data-prep worker processes")
    args = p.parse_args(argv)
    out: Path = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    _banner(f"1/4 prepare the sample videos in {args.samples} -> {out / 'clips'}")
    from data_prep.__main__ import main as prepare

    t = time.perf_counter()
    prepare(["--input", str(args.samples), "--output", str(out / "clips"), "--workers", str(args.workers)])
    timings["prepare"] = time.perf_counter() - t

    runs: dict[int, Path] = {}
    for stage in (1, 2):
        _banner(f"{stage + 1}/4 train stage {stage} (tiny network, CPU, {args.steps} steps)")
        t = time.perf_counter()
        runs[stage] = fit(stage, out / "clips", out, args.steps)
        timings[f"stage{stage}"] = time.perf_counter() - t

    _banner(f"4/4 generate {args.frames} frames from a sample's first frame and its speech")
    sample = sorted(args.samples.glob("*.mp4"))[0]
    video = out / "generated.mp4"
    t = time.perf_counter()
    code = generate(sample, runs[2] / "checkpoints" / "last.ckpt", runs[2] / "config.yaml", video, args.frames)
    timings["generate"] = time.perf_counter() - t
    if code:
        return int(code)

    _banner("done")
    falling = True
    for stage, run in runs.items():
        first, last = summarise_loss(loss_curve(run))
        falling &= last < first
        print(f"stage {stage}: train/loss {first:.4f} (first steps) -> {last:.4f} (last steps)")
    print(f"dataset:      {out / 'clips'} (report: {out / 'clips' / 'report.json'})")
    for stage, run in runs.items():
        print(f"stage {stage}:      checkpoints {run / 'checkpoints'}, samples {run / 'samples'}")
    print(f"video:        {video}")
    print(f"TensorBoard:  make tensorboard RUNS={out}   (or: tensorboard --logdir {out} --host 127.0.0.1)")
    print("time:         " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f", total {time.perf_counter() - start:.0f} s")
    if not falling:
        print("demo: the training loss did not fall in a stage (see the numbers above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
