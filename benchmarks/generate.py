"""Generation benchmark: frames/s and peak memory of ``generate_video`` against a plain eager loop.

``python -m benchmarks.generate`` (on a GPU; defaults: ``sd15`` size, random init,
640x384, 25 DDIM steps, 2 segments of 12 frames + 4 motion frames, bf16 autocast) times, in one
run and on the same network and inputs:

* ``eager``: the plain loop peers' pipelines use: DDIM with two-scale CFG where the reference
  net re-runs (on the reference and the motion frames) at **every** sampling step, then VAE
  decoding of the whole segment at once;
* ``ours``: :func:`cyberhost.inference.generate_video` (reference/motion features once per
  segment, audio tokens once, chunked decoding), sequential CFG;
* ``ours_batched``: the same with the three CFG branches in one batch (``--batch-cfg``);
* ``ours_batched_half``: and the weights in bf16 (``--half-weights``);
* ``ours_batched_half_graphs``: and each segment's network call replayed from a CUDA graph
  (``--cuda-graphs``);
* ``ours_batched_half_flash`` / ``_efficient`` / ``_cudnn``: half weights with only that SDPA
  kernel family allowed (``--attention``);
* ``ours_batched_half_compiled`` (``--compile``): half weights and regional compilation.

``--calls N`` then times the network call sampling makes at every step (the batch of three
CFG branches of one segment, the last case's weights): with diffusers' layers and with
sampling's (``set_inference_layers``), with each SDPA kernel family, eager against the CUDA graph's replay,
each call synchronised, N calls each, and profiles one eager call (device busy vs idle time,
kernels launched) -- whether the call waits for the host, which is what a graph removes.

Reported per case: seconds, frames/s (generated frames / wall time of the whole generation
after the reference is prepared; keypoint detection and mp4 encoding are CPU work outside it),
peak GPU memory, and the speed-up over ``eager``. ``--size tiny --device cpu`` is a smoke test
(CPU timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.transforms import TransformConfig, audio_window, to_maps, to_unit
from cyberhost.diffusion import GuidedSampler, NoiseSchedule, SamplerConfig
from cyberhost.inference import pipeline
from cyberhost.inference.conditions import ReferenceConditions, reference_from_keypoints
from cyberhost.inference.pipeline import GenerateConfig, _autocast, attention_backend, generate_video
from cyberhost.models import CyberHost, CyberHostConfig
from cyberhost.models.conditioning import guided_denoiser
from cyberhost.models.precision import TokenTransformer2D, set_inference_layers


@dataclass
class BenchResult:
    """One benchmark row."""

    case: str
    seconds: float
    frames: int
    frames_per_s: float
    peak_mem_gib: float
    speedup_vs_eager: float
    reference_net_calls: int
    first_run_s: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    max_abs_diff_without_graphs: float | None = None


def synthetic_reference(size: tuple[int, int], seed: int = 0) -> ReferenceConditions:
    """Reference conditions of the drawn synthetic figure at ``size`` (random init makes real images pointless)."""
    from benchmarks.synthetic import make_clip

    clip = make_clip("bench-0000", num_frames=1, size=size, seed=seed)
    return reference_from_keypoints(clip["frames"][0], clip["keypoints"][0], TransformConfig(), size)


def eager_generate(model: CyberHost, ref: ReferenceConditions, audio: np.ndarray, cfg: GenerateConfig,
                   num_frames: int, num_motion: int, segments: int, fps: float) -> np.ndarray:
    """The plain loop: the reference net re-runs at every step; whole-segment decoding."""
    device = next(model.parameters()).device
    sampler = GuidedSampler(NoiseSchedule().sampling_scheduler(),
                            SamplerConfig(cfg.steps, cfg.ref_scale, cfg.audio_scale, cfg.eta))
    generator = torch.Generator().manual_seed(cfg.seed)
    window = TransformConfig(num_frames=num_frames, num_motion=num_motion, fps=fps)
    out = []
    cond = ref.conditions.batched().to(device)
    with torch.inference_mode(), _autocast(device, cfg.autocast):
        ref_latent = model.encode_images(to_unit(cond.reference))
        skeleton, face, hands = to_maps(cond.reference_skeleton), to_unit(cond.face_crop), to_unit(cond.hand_crops)
        driving_map = to_maps(cond.driving_map).expand(1, num_frames, -1, -1, -1)
        clarity = torch.full((1, num_frames, 2), 20.0, device=device)
        motion = ref_latent[:, None].expand(1, num_motion, *ref_latent.shape[1:])
        for s in range(segments):
            wave = audio_window({"audio": audio}, s * num_frames, window)[None].to(device)
            seg_tokens = model.encode_audio(wave, num_frames)
            feats: dict[str, object] = {}

            def denoise(x: torch.Tensor, t: torch.Tensor, use_ref: bool, use_audio: bool,
                        _m: torch.Tensor = motion, _tok: torch.Tensor = seg_tokens,
                        _f: dict[str, object] = feats) -> torch.Tensor:
                if use_ref and use_audio:  # first call of a step: re-run the reference net
                    _f["f"] = model.encode_reference(ref_latent, skeleton, _m, face, hands)
                return model.denoiser(_f["f"], driving_map, _tok, clarity)(x, t, use_ref, use_audio)  # type: ignore[arg-type]

            latents = sampler.sample(denoise, (1, num_frames, *ref_latent.shape[1:]), device, generator)
            motion = latents[:, -num_motion:]
            out.append(model.decode_latents(latents[0]).float().cpu())
    model.state.clear()
    return torch.cat(out).numpy()


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, float, object]:
    """Seconds, peak GiB and result of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return time.perf_counter() - start, peak, out


def run_benchmark(args: argparse.Namespace) -> tuple[list[BenchResult], dict[str, object] | None]:
    """Build the network, warm up, time the cases; returns one row per case (and ``--calls``' timing)."""
    device = torch.device(args.device)
    tiny = args.size == "tiny"
    h, w = args.height or (64 if tiny else 640), args.width or (64 if tiny else 384)
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device (building sd15 on the CPU is slow)
        model = CyberHost(CyberHostConfig(size=args.size, stage=2)).eval().requires_grad_(False)
    calls = [0]
    model.reference_net.conv_in.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    ref = synthetic_reference((h, w))
    frames = args.segments * args.frames
    audio = np.random.default_rng(0).normal(0, 0.1, round(frames / 25.0 * AUDIO_SAMPLE_RATE)).astype(np.float32)
    autocast = args.autocast if args.autocast != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    base = dict(steps=args.steps, autocast=autocast, num_frames=args.frames, num_motion=args.motion,
                decode_chunk=args.decode_chunk)

    def ours(batch_cfg: bool, **fast: bool) -> Callable[[], object]:
        cfg = GenerateConfig(batch_cfg=batch_cfg, **base, **fast)  # type: ignore[arg-type]
        return lambda: generate_video(model, ref, audio, None, config=cfg, progress=False).frames

    half = autocast != "fp32"  # the fast cases change the model in place, so they run last
    cases: dict[str, Callable[[], object]] = {
        "eager": lambda: eager_generate(model, ref, audio, GenerateConfig(**base), args.frames, args.motion,  # type: ignore[arg-type]
                                        args.segments, 25.0),
        "ours": ours(False),
        "ours_batched": ours(True),
        **({"ours_batched_half": ours(True, half_weights=True)} if half else {}),
        **({"ours_batched_half_graphs": ours(True, half_weights=True, cuda_graphs=True)} if half else {}),
        **({f"ours_batched_half_{name}": ours(True, half_weights=True, attention=name)  # type: ignore[arg-type]
            for name in ("flash", "efficient", "cudnn")} if half else {}),
        **({"ours_batched_half_compiled" if half else "ours_batched_compiled":
            ours(True, half_weights=half, compile=True)} if args.compile else {}),
    }
    if args.cases:
        unknown = set(args.cases) - set(cases)
        if unknown or "eager" not in args.cases:
            raise SystemExit(f"--cases: eager is required, choose from {sorted(cases)}; unknown: {sorted(unknown)}")
        cases = {k: v for k, v in cases.items() if k in args.cases}
    rows: list[BenchResult] = []
    reference: np.ndarray | None = None
    outputs: dict[str, np.ndarray] = {}
    for name, fn in cases.items():
        warm = [_timed(device, fn)[0] for _ in range(args.warmup)]
        calls[0] = 0
        seconds, peak, frames_out = _timed(device, fn)
        row = BenchResult(name, seconds, frames, frames / seconds, peak, 0.0, calls[0], warm[0] if warm else None)
        if name == "ours_batched":
            reference = np.asarray(frames_out)
        elif reference is not None and name.startswith("ours_batched"):  # same seed: the same frames?
            diff = np.abs(np.asarray(frames_out).astype(np.int16) - reference.astype(np.int16))
            row.max_abs_diff, row.mean_abs_diff = float(diff.max()), float(diff.mean())
        outputs[name] = np.asarray(frames_out)
        if name.endswith("_graphs") and name.removesuffix("_graphs") in outputs:  # graphs change nothing?
            plain = outputs[name.removesuffix("_graphs")].astype(np.int16)
            row.max_abs_diff_without_graphs = float(np.abs(outputs[name].astype(np.int16) - plain).max())
        rows.append(row)
        print(json.dumps({"partial": asdict(row)}), flush=True)  # a run cut short keeps what it measured
        if device.type == "cuda":
            torch.cuda.empty_cache()
    eager = rows[0].seconds
    for row in rows:
        row.speedup_vs_eager = eager / row.seconds
    timing = None
    if args.calls:
        timing = time_network_calls(model, ref, audio, GenerateConfig(batch_cfg=True, half_weights=half, **base),
                                    args.calls)
    return rows, timing


class _Captured(Exception):
    """Raised to stop a generation once its first segment's network inputs are known."""


def segment_inputs(model: CyberHost, ref: ReferenceConditions, audio: np.ndarray, cfg: GenerateConfig) -> dict:
    """The network inputs of the first segment, exactly as ``generate_video`` hands them to ``guided_denoiser``."""
    captured: dict[str, object] = {}

    def capture(model_: CyberHost, inputs: dict, *args: object, **kwargs: object) -> None:
        captured.update(inputs)
        raise _Captured

    real, pipeline.guided_denoiser = pipeline.guided_denoiser, capture
    try:
        generate_video(model, ref, audio, None, config=cfg, progress=False)
    except _Captured:
        pass
    finally:
        pipeline.guided_denoiser = real
    return captured


def time_network_calls(model: CyberHost, ref: ReferenceConditions, audio: np.ndarray, cfg: GenerateConfig,
                       calls: int) -> dict[str, object]:
    """Median seconds of sampling's batched CFG call: with autocast's float32 norms and (half weights) with
    16-bit norms, and replayed from a CUDA graph; a profile of the eager call as ``cfg`` runs it."""
    from benchmarks.profile_breakdown import breakdown

    device = next(model.parameters()).device
    inputs = segment_inputs(model, ref, audio, cfg)  # applies cfg (half weights) to the model
    h, w = (s // 8 for s in inputs["driving_map"].shape[-2:])  # the driving map is at pixel resolution
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.num_frames, 4, h, w, generator=g).to(device)
    t = torch.tensor([500], device=device)
    out: dict[str, object] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "batch": [3, cfg.num_frames, 4, h, w], "calls": calls}

    def median_call(graph: bool) -> tuple[float, torch.Tensor]:
        denoise = guided_denoiser(model, inputs, True, audio=True, cuda_graph=graph)
        for _ in range(3):  # warm-up (a graph records in its second call)
            denoise(x, t, True, True)
        times, pred = [], None
        for _ in range(calls):
            seconds, _, pred = _timed(device, lambda: denoise(x, t, True, True))
            times.append(seconds)
        return float(np.median(times)), pred

    with torch.inference_mode(), _autocast(device, cfg.autocast):
        if cfg.half_weights:  # the same call with diffusers' layers (autocast's float32 norms), then as generation runs it
            set_inference_layers(model, enabled=False)
            out["eager_float32_norms_call_s"], plain = median_call(False)
            set_inference_layers(model)
            token = [m for m in model.modules() if isinstance(m, TokenTransformer2D)]
            for m in token:  # every sampling layer but the spatial transformers' matmul projections
                m.__class__ = Transformer2DModel
            out["eager_conv_projections_call_s"] = median_call(False)[0]
            for m in token:
                m.__class__ = TokenTransformer2D
        if device.type == "cuda":  # each SDPA kernel family PyTorch has for these shapes
            out["attention_call_s"] = {}
            for name in ("flash", "efficient", "cudnn"):
                try:
                    with attention_backend(name):
                        out["attention_call_s"][name] = median_call(False)[0]
                except RuntimeError as err:  # no kernel of that family for some shape
                    out["attention_call_s"][name] = f"failed: {str(err)[:200]}"
        out["eager_call_s"], eager = median_call(False)
        out["graph_call_s"], graphed = median_call(True)
        out["graph_vs_eager_max_abs_diff"] = float((graphed.float() - eager.float()).abs().max())
        if cfg.half_weights:
            out["native_vs_float32_norms_max_abs_diff"] = float((eager.float() - plain.float()).abs().max())
        denoise = guided_denoiser(model, inputs, True, audio=True)
        out["eager_profile"] = breakdown(lambda: denoise(x, t, True, True), device, steps=2,
                                         step_s=out["eager_call_s"], top=40)
    model.state.clear()
    out["speedup"] = out["eager_call_s"] / out["graph_call_s"]
    return out


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    p.add_argument("--device", default="cuda")
    p.add_argument("--height", type=int, default=0, help="0 = 640 (sd15) / 64 (tiny)")
    p.add_argument("--width", type=int, default=0, help="0 = 384 (sd15) / 64 (tiny)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--frames", type=int, default=12, help="frames per segment")
    p.add_argument("--motion", type=int, default=4, help="motion frames")
    p.add_argument("--segments", type=int, default=2, help="segments timed per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    p.add_argument("--decode-chunk", type=int, default=8)
    p.add_argument("--autocast", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    p.add_argument("--cases", nargs="+", default=None, help="only these cases (eager is always needed)")
    p.add_argument("--compile", action="store_true", help="also time the compiled case (compiles in its warm-up)")
    p.add_argument("--calls", type=int, default=0,
                   help="then time N network calls eager and from a CUDA graph, and profile one (0 = off)")
    p.add_argument("--json", help="also write the rows (and the call timing), the device and versions here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run and print a table (and JSON lines)."""
    args = build_parser().parse_args(argv)
    rows, calls = run_benchmark(args)
    device = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else args.device
    print(f"# generation benchmark: {args.size}, {args.height or '-'}x{args.width or '-'}, {args.steps} steps, "
          f"{args.segments}x{args.frames} frames (+{args.motion} motion), {device}")
    print("| case | s | frames/s | peak GiB | speed-up vs eager | ref-net calls | first run s | frames vs ours_batched |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = f"{r.first_run_s:.1f}" if r.first_run_s is not None else ""
        diff = f"max {r.max_abs_diff:.0f}, mean {r.mean_abs_diff:.3f}" if r.max_abs_diff is not None else ""
        if r.max_abs_diff_without_graphs is not None:
            diff += f"; without graphs: max {r.max_abs_diff_without_graphs:.0f}"
        print(f"| {r.case} | {r.seconds:.2f} | {r.frames_per_s:.2f} | {r.peak_mem_gib:.1f} | {r.speedup_vs_eager:.2f}x "
              f"| {r.reference_net_calls} | {first} | {diff} |")
    for r in rows:
        print(json.dumps(asdict(r)))
    if calls is not None:
        from benchmarks.profile_breakdown import format_breakdown

        norms = calls.get("eager_float32_norms_call_s")
        print(f"# one sampling call, batch {calls['batch']}: eager {calls['eager_call_s'] * 1e3:.1f} ms"
              + (f" (float32 norms: {norms * 1e3:.1f} ms, max |diff| {calls['native_vs_float32_norms_max_abs_diff']:.2e})"
                 if norms else "")
              + f", CUDA graph {calls['graph_call_s'] * 1e3:.1f} ms ({calls['speedup']:.2f}x), "
              f"max |diff| {calls['graph_vs_eager_max_abs_diff']:.2e}")
        for name, seconds in calls.get("attention_call_s", {}).items():
            print(f"#   attention {name}: " + (f"{seconds * 1e3:.1f} ms" if isinstance(seconds, float) else seconds))
        print(format_breakdown("eager sampling call", calls["eager_profile"]))
    if args.json:
        import diffusers

        report = {"command": "python -m benchmarks.generate " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "device": device, "torch": torch.__version__, "diffusers": diffusers.__version__,
                  "rows": [asdict(r) for r in rows], "calls": calls}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
