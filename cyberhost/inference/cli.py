"""``cyberhost generate``: reference image + audio + checkpoint -> mp4 (H.264 + AAC).

Examples::

    cyberhost generate --image me.jpg --audio speech.wav --checkpoint runs/stage2/sd15/checkpoints/last.ckpt \\
        --output out.mp4
    cyberhost generate --image me.jpg --audio speech.wav --checkpoint runs/stage2/sd15/export/last.safetensors \\
        --no-ema --output raw.mp4
    cyberhost generate --image me.jpg --audio speech.m4a --checkpoint stage2.safetensors \\
        --config conf/stage2.yaml --set sd15_path=/models/sd15 --set wav2vec2_path=/models/w2v \\
        --output out.mp4 --frames-dir out_frames
    cyberhost generate --mode video --driving-video dance.mp4 --image me.jpg \\
        --checkpoint video.ckpt --output out.mp4

The checkpoint (a Lightning ``.ckpt``, an FSDP2 ``last.ckpt/`` folder or a safetensors export)
records the network config, noise schedule, clip transform and buckets of its run; ``--config``
YAMLs override them. Its EMA weights are used when it has them, unless ``--no-ema``.

Exit status: 0 on success, 2 when an input cannot be used (the message names it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from .conditions import CLARITY_PERCENTILE, clarity_from_data
from .errors import GenerateError, KeypointError
from .pipeline import MODES, GenerateConfig, generate_video

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cyberhost generate``."""
    p = argparse.ArgumentParser(prog="cyberhost generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--image", required=True, help="reference image (one person, upper body visible)")
    io.add_argument("--audio", help="driving audio, any format PyAV reads (wav, mp3, m4a, the track of an mp4)")
    io.add_argument("--checkpoint", required=True, action="append",
                    help="a stage-2 run's Lightning .ckpt, FSDP2 checkpoint folder (last.ckpt/) or exported .safetensors; "
                         "repeat to merge files left to right (e.g. a stage-1 export, then a stage-2 export of the "
                         "weights stage 2 trains)")
    io.add_argument("--config", action="append", default=[],
                    help="training YAML (repeatable, composed left to right); overrides the settings the checkpoint "
                         "records")
    io.add_argument("--output", required=True, help="output .mp4")
    io.add_argument("--frames-dir", help="also write every frame as PNG here")
    io.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a network config field, e.g. local pretrained paths: --set sd15_path=/models/sd15")
    io.add_argument("--trust-checkpoint", action="store_true",
                    help="allow a .ckpt that pickles arbitrary objects (only for files you made)")
    io.add_argument("--no-ema", action="store_true",
                    help="load the raw weights even when the checkpoint has EMA ones (default: EMA when present)")

    mode = p.add_argument_group("mode")
    mode.add_argument("--mode", choices=MODES, default="audio",
                      help="audio: movement box; video: driving skeletons replace it; multimodal: driving hands + audio")
    mode.add_argument("--driving-video", help="driving video of the video and multimodal modes")
    mode.add_argument("--no-align-driving", action="store_true",
                      help="use the driving keypoints as they are (default: align thorax/shoulders to the reference)")

    d = GenerateConfig()
    s = p.add_argument_group("sampling")
    s.add_argument("--steps", type=int, default=d.steps, help="DDIM steps")
    s.add_argument("--ref-scale", type=float, default=d.ref_scale, help="reference guidance scale (paper 2.5)")
    s.add_argument("--audio-scale", type=float, default=d.audio_scale, help="audio guidance scale (paper 4.5)")
    s.add_argument("--eta", type=float, default=d.eta, help="DDIM eta")
    s.add_argument("--seed", type=int, default=d.seed, help="seed of the initial noise")
    s.add_argument("--height", type=int, help="output height (multiple of 8); default: nearest training bucket")
    s.add_argument("--width", type=int, help="output width (multiple of 8)")
    s.add_argument("--hand-clarity", default="high",
                   help="hand clarity control: 'high' (the 90th percentile of the scores training saw, recorded in "
                        "the checkpoint; or the percentile of --hand-clarity-data), 'reference' (the reference's own "
                        "hands) or a number inside the range training saw")
    s.add_argument("--hand-clarity-data", metavar="DIR",
                   help="prepared training data (data_prep output): 'high' becomes a percentile of its hand_clarity")
    s.add_argument("--hand-clarity-percentile", type=float, default=CLARITY_PERCENTILE,
                   help="percentile of --hand-clarity-data taken as 'high'")
    s.add_argument("--num-frames", type=int, default=0, help="frames per segment (0 = training's clip length)")
    s.add_argument("--num-motion", type=int, default=0, help="motion frames (0 = training's)")
    s.add_argument("--max-frames", type=int, help="stop after this many frames")
    s.add_argument("--batch-cfg", action=argparse.BooleanOptionalAction, default=d.batch_cfg,
                   help="run the three CFG branches as one batch of 3 network calls (same result as three calls; "
                        "fewer, larger kernels, more activation memory)")

    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    r.add_argument("--autocast", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="mixed precision; auto = bf16 on CUDA, fp32 on CPU")
    r.add_argument("--half-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the VAE/UNet weights in the autocast dtype and run norms in it: half the weight memory "
                        "and faster (sd15 on an H100: 17.6 -> 9.7 GiB peak, 1.36x -> 1.73x the eager loop); "
                        "default: on with bf16/fp16 autocast")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=d.compile,
                   help="torch.compile the network's repeated blocks (the first segment waits for the compiler)")
    r.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=d.cuda_graphs,
                   help="replay each segment's network call from a CUDA graph (with --batch-cfg; the same frames; "
                        "pays only where the GPU waits for the host, which the sd15 call does not)")
    r.add_argument("--attention", choices=("auto", "flash", "efficient", "cudnn", "math"), default=d.attention,
                   help="SDPA kernel family (auto = PyTorch's choice)")
    r.add_argument("--decode-chunk", type=int, default=d.decode_chunk, help="frames per VAE decode call")
    r.add_argument("--crf", type=int, default=d.crf, help="x264 quality (lower is better)")
    r.add_argument("--keypoints", choices=("mediapipe", "rtmlib"), default="mediapipe", help="keypoint backend")
    r.add_argument("--rtmlib-det", help="rtmlib: local detector ONNX")
    r.add_argument("--rtmlib-pose", help="rtmlib: local whole-body pose ONNX")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=/x"]`` -> ``{"a": 1, "b": "/x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GenerateError(f"--set expects FIELD=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def make_keypoint_backend(args: argparse.Namespace, device: torch.device) -> Any:
    """The keypoint backend the flags name.

    Raises:
        KeypointError: rtmlib without its model files, or a backend that cannot be built (the reason in one line).
    """
    from cyberhost.media.keypoints import MediaPipeHolistic, make_backend

    if args.keypoints == "rtmlib":
        if not (args.rtmlib_det and args.rtmlib_pose):
            raise KeypointError("--keypoints rtmlib needs its local model files: --rtmlib-det DETECTOR.onnx and "
                                "--rtmlib-pose WHOLEBODY.onnx (nothing is downloaded; see the README's keypoint backends)")
        for flag, path in (("--rtmlib-det", args.rtmlib_det), ("--rtmlib-pose", args.rtmlib_pose)):
            if not Path(path).is_file():
                raise KeypointError(f"{flag} {path}: no such file")
    try:
        if args.keypoints == "rtmlib":
            return make_backend("rtmlib", det=args.rtmlib_det, pose=args.rtmlib_pose,
                                device="cuda" if device.type == "cuda" else "cpu")
        return MediaPipeHolistic(static_image_mode=True)
    except Exception as err:  # onnxruntime, MediaPipe and import errors: the user needs the reason, not a traceback
        raise KeypointError(f"cannot build the {args.keypoints} keypoint backend: {type(err).__name__}: "
                            f"{' '.join(str(err).split())}") from err


def generate_config(args: argparse.Namespace, device: torch.device) -> GenerateConfig:
    """The :class:`GenerateConfig` of the flags (hand clarity from the training data when asked)."""
    clarity: str | float = args.hand_clarity
    if args.hand_clarity_data and clarity == "high":
        clarity = clarity_from_data(args.hand_clarity_data, args.hand_clarity_percentile)
        log.info("hand clarity 'high' = %.2f (percentile %g of %s)", clarity, args.hand_clarity_percentile,
                 args.hand_clarity_data)
    autocast = args.autocast if args.autocast != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    try:
        return GenerateConfig(
            mode=args.mode, steps=args.steps, ref_scale=args.ref_scale, audio_scale=args.audio_scale, eta=args.eta,
            seed=args.seed, height=args.height, width=args.width, hand_clarity=clarity,
            decode_chunk=args.decode_chunk, num_frames=args.num_frames, num_motion=args.num_motion,
            batch_cfg=args.batch_cfg, align_driving=not args.no_align_driving, max_frames=args.max_frames,
            autocast=autocast, crf=args.crf, compile=args.compile,
            half_weights=autocast != "fp32" if args.half_weights is None else args.half_weights,
            cuda_graphs=args.cuda_graphs, attention=args.attention,
        )  # fmt: skip
    except ValueError as err:  # the config's own checks say what to change
        raise GenerateError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, write the video."""
    from .loading import load_model

    if args.mode == "audio" and not args.audio:
        raise GenerateError("--audio is required in audio mode")
    if args.mode != "audio" and not args.driving_video:
        raise GenerateError(f"--driving-video is required in {args.mode} mode")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    config = generate_config(args, device)
    backend = make_keypoint_backend(args, device)  # before the model: a missing model file fails fast
    try:
        model, settings = load_model(args.checkpoint, args.config, parse_overrides(args.overrides),
                                     args.trust_checkpoint, prefer_ema=not args.no_ema)
        model.to(device)
        result = generate_video(model, args.image, args.audio, args.output, settings=settings, config=config,
                                backend=backend, driving=args.driving_video, frames_dir=args.frames_dir,
                                progress=not args.no_progress)
    finally:
        backend.close()
    print(f"wrote {result.path}: {result.num_frames} frames at {result.fps:g} fps, {result.size[1]}x{result.size[0]}, "
          f"{result.segments} segment(s) in {result.seconds:.1f} s, {'EMA' if settings.ema else 'raw'} weights")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cyberhost generate`` / ``python -m cyberhost.inference``.

    Returns:
        0 on success, 2 when an input is unusable (the error names it on stderr).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # which weights were loaded, clarity, ...
    if (args.height is None) != (args.width is None):
        print("error: give both --height and --width, or neither", file=sys.stderr)
        return 2
    try:
        return run(args)
    except GenerateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
