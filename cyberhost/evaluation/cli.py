"""``cyberhost evaluate``: the paper's metrics for generated vs ground-truth videos.

Examples::

    cyberhost evaluate --generated out/ --ground-truth data/test/ --weights-dir checkpoints/eval --output eval/
    cyberhost evaluate --pairs pairs.csv --metrics ssim psnr fid --fid-weights pt_inception-2015-12-05-6726825d.pth
    python -m cyberhost.evaluation --generated a.mp4 --ground-truth b.mp4 --keypoints none

Writes ``metrics.json``, ``per_video.csv`` and ``aggregate.csv`` into ``--output`` and, with
``--tb-dir``, ``eval/<metric>`` scalars for TensorBoard. Exit status 0 on success, 2 on bad
input (missing file, mismatched lengths) or an output that cannot be written, with a one-line
message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cyberhost.evaluation.evaluate import ALL_METRICS, WEIGHT_FILES, EvalConfig, Evaluator, write_outputs
from cyberhost.evaluation.pairs import discover_pairs, read_pairs_csv

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cyberhost evaluate``."""
    p = argparse.ArgumentParser(
        prog="cyberhost evaluate",
        description="SSIM, PSNR, FID, FVD, CSIM, HKC, HKV, AKD and SyncC/SyncD of generated videos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("inputs")
    src.add_argument("--generated", type=Path, help="generated video file or directory")
    src.add_argument("--ground-truth", type=Path, help="ground-truth video file or directory (matched by file stem)")
    src.add_argument("--pairs", type=Path, help="CSV with columns generated[,ground_truth,reference_image,audio,name]")
    src.add_argument("--reference-images", type=Path, help="identity reference image file or directory for CSIM")
    src.add_argument(
        "--audio", type=Path, help="driving audio file or directory for Sync (default: the generated track)"
    )
    w = p.add_argument_group("weights (local files only; a metric without weights is reported as skipped)")
    w.add_argument("--weights-dir", type=Path, help="folder with " + ", ".join(WEIGHT_FILES.values()))
    w.add_argument("--fid-weights", type=Path, help="FID Inception-v3 state dict (.pth) or TorchScript feature net")
    w.add_argument("--i3d-weights", type=Path, help="I3D TorchScript for FVD (i3d_torchscript.pt)")
    w.add_argument("--face-weights", type=Path, help="ArcFace .onnx (w600k_r50.onnx) or TorchScript for CSIM")
    w.add_argument("--syncnet-weights", type=Path, help="syncnet_v2.model for SyncC/SyncD")
    w.add_argument("--i3d-kwargs", type=json.loads, default=None, help="JSON keyword arguments of each I3D call")
    o = p.add_argument_group("protocol and output")
    o.add_argument("--metrics", nargs="+", choices=ALL_METRICS, default=list(ALL_METRICS), help="metrics to compute")
    o.add_argument("--keypoints", choices=("mediapipe", "rtmlib", "none"), default="mediapipe", help="keypoint backend")
    o.add_argument("--rtmlib-det", type=Path, help="rtmlib detector ONNX (with --keypoints rtmlib)")
    o.add_argument("--rtmlib-pose", type=Path, help="rtmlib whole-body pose ONNX (with --keypoints rtmlib)")
    o.add_argument("--length-mismatch", choices=("error", "truncate"), default="error", help="when frame counts differ")
    o.add_argument("--fid-stride", type=int, default=1, help="use every n-th frame for FID")
    o.add_argument("--batch-size", type=int, default=16, help="images per network forward")
    o.add_argument("--device", default="cpu", help="torch device")
    o.add_argument("--output", type=Path, default=Path("eval"), help="folder for metrics.json and the CSVs")
    o.add_argument("--tb-dir", type=Path, help="TensorBoard log dir for eval/<metric> scalars")
    o.add_argument("--tb-step", type=int, default=0, help="global step of the TensorBoard scalars")
    return p


def _pairs(args: argparse.Namespace) -> list:
    if args.pairs is not None:
        if args.generated is not None or args.ground_truth is not None:
            raise ValueError("give either --pairs or --generated/--ground-truth, not both")
        return read_pairs_csv(args.pairs)
    if args.generated is None:
        raise ValueError("nothing to evaluate: pass --generated (and --ground-truth) or --pairs")
    return discover_pairs(args.generated, args.ground_truth, args.reference_images, args.audio)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation.

    Args:
        argv: arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        Exit status: 0 success, 2 bad input.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {}
    if args.keypoints == "rtmlib":
        if args.rtmlib_det is None or args.rtmlib_pose is None:
            print("cyberhost evaluate: error: --keypoints rtmlib needs its local model files: --rtmlib-det "
                  "DETECTOR.onnx and --rtmlib-pose WHOLEBODY.onnx", file=sys.stderr)
            return 2
        options = {"det": str(args.rtmlib_det), "pose": str(args.rtmlib_pose)}
    try:
        pairs = _pairs(args)
        config = EvalConfig(
            metrics=tuple(args.metrics),
            weights_dir=args.weights_dir,
            fid_weights=args.fid_weights,
            i3d_weights=args.i3d_weights,
            face_weights=args.face_weights,
            syncnet_weights=args.syncnet_weights,
            keypoints=args.keypoints,
            keypoint_options=options,
            length_mismatch=args.length_mismatch,
            fid_stride=args.fid_stride,
            i3d_kwargs=args.i3d_kwargs,
            device=args.device,
            batch_size=args.batch_size,
        )
        result = Evaluator(config).run(pairs, progress=lambda msg: print(msg, file=sys.stderr))
    except (FileNotFoundError, ValueError) as err:
        print(f"cyberhost evaluate: error: {err}", file=sys.stderr)
        return 2
    # the numbers first: a failed write must not lose a long evaluation's results
    for metric, value in result["aggregate"].items():
        print(f"{metric:>8}: {'-' if value is None else f'{value:.4f}'}  (n={result['counts'].get(metric, 0)})")
    if "akd_frames" in result["counts"]:
        used, skipped = result["counts"]["akd_frames"], result["counts"]["akd_skipped_frames"]
        print(f"{'akd':>8}: {used} frame pairs scored, {skipped} skipped (no body/hand point confident in both)")
    for metric, reason in result["skipped"].items():
        print(f"{metric:>8}: skipped - {reason}")
    try:
        paths = write_outputs(result, args.output, args.tb_dir, args.tb_step)
    except (OSError, ValueError) as err:
        print(f"cyberhost evaluate: error: cannot write the results to {args.output}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {paths['json']}, {paths['per_video']}, {paths['aggregate']}")
    return 0
