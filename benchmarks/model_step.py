"""GPU training-step benchmark of CyberHost against the plain eager diffusers yardstick (DESIGN.md).

``python -m benchmarks.model_step`` times, in one run and with random init + bf16 autocast:

* ``yard1``: eager diffusers ``UNet2DConditionModel``: reference UNet forward (no grad) + UNet
  forward/backward, B=12, 640x384 (DESIGN.md's stage-1-like yardstick).
* ``yard2``: eager diffusers ``UNetMotionModel`` forward/backward, 16 frames, 640x384.
* ``stage1``: CyberHost stage 1 (pose encoders + reference net + UNet, fwd/bwd), B=12, 640x384.
* ``stage2``: CyberHost stage 2 (12 frames + 4 motion frames, audio, face/hand RCA, heatmaps,
  identity encoders, clarity; stage-2 trainable set), 640x384.

each also with gradient checkpointing (``*_ckpt``). Reported per case: median step time (CUDA
events after warm-up), model FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``,
counted with checkpointing off, so recomputation is not counted as useful work), MFU against a
measured bf16 8192^3 matmul peak, HFU (the FLOPs the GPU really ran, recomputation included),
peak memory and parameter counts (per part for the CyberHost cases).
``--size tiny --device cpu`` is a smoke test (CPU timings mean nothing).

The step is forward + loss + backward + ``zero_grad``, no optimiser step, for every case alike.
Per-item rates: ``yard2`` counts its 16 frames; ``stage2`` counts the 12 generated frames, its 4
motion frames going through the reference net.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.profile_breakdown import breakdown, format_breakdown
from cyberhost.models import SIZES, CyberHost, CyberHostConfig

CASES = ("yard1", "yard1_ckpt", "yard2", "yard2_ckpt", "stage1", "stage1_ckpt", "stage2", "stage2_ckpt")
COMPILE_DYNAMIC = {"auto": None, "true": True, "false": False}
"""A ``--compile-dynamic`` choice -> ``CompileConfig.dynamic`` (``benchmarks.train``, ``benchmarks.compile_time``)."""


@dataclass
class Result:
    """One benchmark row."""

    case: str
    time_s: float
    items_per_s: float
    tflop_per_step: float
    mfu: float
    peak_mem_gib: float
    params_m: float
    trainable_m: float
    note: str
    hfu: float = float("nan")
    params_by_part_m: dict[str, float] | None = None
    profile: dict | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(device: torch.device, n: int = 8192, reps: int = 50, trials: int = 3) -> float:
    """Measured dense matmul throughput in FLOP/s, best of ``trials`` (bf16 on CUDA; fp32 n=512 on CPU)."""
    if device.type != "cuda":
        n, reps, trials = 512, 3, 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def _time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def _count_flops(step: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def print_profile(case: str, step: Callable[[], None], device: torch.device, rows: int = 25) -> None:
    """One step under ``torch.profiler``: the ops that take the most device time, and device vs host time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    print(f"--- profile of one {case} step (top {rows} by {key})")
    print(events.table(sort_by=key, row_limit=rows, max_name_column_width=60))


def _set_checkpointing(module: torch.nn.Module, enabled: bool) -> None:
    if isinstance(module, CyberHost):
        module.enable_gradient_checkpointing(enabled)
    elif enabled:
        module.enable_gradient_checkpointing()
    else:
        module.disable_gradient_checkpointing()


def params_by_part(module: torch.nn.Module) -> dict[str, float]:
    """Millions of parameters of each top-level child (and ``trainable``)."""
    parts = {name: sum(p.numel() for p in child.parameters()) / 1e6 for name, child in module.named_children()}
    parts = {k: round(v, 3) for k, v in parts.items() if v}
    parts["trainable"] = round(sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6, 3)
    return parts



class Shapes:
    """Benchmark sizes (defaults: the paper's; the tiny smoke test shrinks them)."""

    def __init__(self, args: argparse.Namespace) -> None:
        tiny = args.size == "tiny"
        self.batch = args.batch or (2 if tiny else 12)
        self.frames = args.frames or (3 if tiny else 12)
        self.motion = args.motion_frames or (2 if tiny else 4)
        self.height = args.height or (64 if tiny else 640)
        self.width = args.width or (64 if tiny else 384)
        self.h, self.w = self.height // 8, self.width // 8


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _prepare(module: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def yardstick_steps(case: str, size: str, shp: Shapes, device: torch.device, ckpt: bool,
                    channels_last: bool) -> tuple[Callable[[], None], torch.nn.Module, int, str]:
    """Eager diffusers steps as every peer trains (AttnProcessor2_0 = SDPA, diffusers' default)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    spec = SIZES[size]
    cross = spec.unet["cross_attention_dim"]
    if case == "yard1":
        unet = _prepare(UNet2DConditionModel(**spec.unet), device, channels_last).train()
        ref = _prepare(UNet2DConditionModel(**spec.unet), device, channels_last).eval().requires_grad_(False)
        if ckpt:
            unet.enable_gradient_checkpointing()
        x = torch.randn(shp.batch, 4, shp.h, shp.w, device=device)
        ctx = torch.randn(shp.batch, 77, cross, device=device)
        t = torch.randint(0, 1000, (shp.batch,), device=device)

        def step() -> None:
            with _autocast(device):
                with torch.no_grad():
                    ref(x, torch.zeros_like(t), ctx)
                loss = unet(x, t, ctx).sample.float().square().mean()
            loss.backward()
            unet.zero_grad(set_to_none=True)

        return step, unet, shp.batch, "img"
    frames = shp.frames + shp.motion
    unet2d = UNet2DConditionModel(**spec.unet)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # from_unet2d warns about an empty fp32 list
    unet = _prepare(UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**spec.motion_adapter)), device, channels_last)
    del unet2d
    unet.train()
    if ckpt:
        unet.enable_gradient_checkpointing()
    x = torch.randn(1, 4, frames, shp.h, shp.w, device=device)
    ctx = torch.randn(frames, 77, cross, device=device)
    t = torch.randint(0, 1000, (1,), device=device)

    def step2() -> None:
        with _autocast(device):
            loss = unet(x, t, ctx).sample.float().square().mean()
        loss.backward()
        unet.zero_grad(set_to_none=True)

    return step2, unet, frames, "frame"


def cyberhost_steps(case: str, size: str, shp: Shapes, device: torch.device, ckpt: bool,
                    channels_last: bool) -> tuple[Callable[[], None], torch.nn.Module, int, str]:
    """CyberHost training steps (forward + losses' backward; no optimiser, like the yardstick)."""
    stage = 1 if case == "stage1" else 2
    model = CyberHost(CyberHostConfig(size=size, stage=stage))
    _prepare(model, device, channels_last).train()
    if ckpt:
        model.enable_gradient_checkpointing()
    b = shp.batch if stage == 1 else 1
    f = 1 if stage == 1 else shp.frames
    m = 0 if stage == 1 else shp.motion
    dev = {"device": device}
    ref_latents = torch.randn(b, 4, shp.h, shp.w, **dev)
    skeleton = torch.randn(b, 3, shp.height, shp.width, **dev)
    noisy = torch.randn(b, f, 4, shp.h, shp.w, **dev)
    driving_map = torch.randn(b, f, 3, shp.height, shp.width, **dev)
    t = torch.randint(0, 1000, (b,), **dev)
    motion = torch.randn(b, m, 4, shp.h, shp.w, **dev) if m else None
    face = torch.randn(b, 3, 256, 256, **dev) if stage == 2 else None
    hands = torch.randn(b, 2, 3, 128, 128, **dev) if stage == 2 else None
    audio = torch.randn(b, (f + m) * 640, **dev) if stage == 2 else None  # 25 fps at 16 kHz
    clarity = torch.rand(b, f, 2, **dev) * 100 if stage == 2 else None

    def step() -> None:
        with _autocast(device):
            ref = model.encode_reference(ref_latents, skeleton, motion, face, hands)
            tokens = model.encode_audio(audio, f + m)[:, m:] if audio is not None else None
            out = model(noisy, t, ref, driving_map, tokens, clarity)
            loss = out.sample.float().square().mean()
            for extra in (*out.heatmaps, *out.face_masks, *out.hand_masks):
                loss = loss + extra.float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step, model, b * f, "img" if stage == 1 else "frame"


def run_case(case: str, args: argparse.Namespace, peak: float, device: torch.device) -> Result:
    """Build, warm up, count FLOPs and time one case."""
    base, ckpt = case.removesuffix("_ckpt"), case.endswith("_ckpt")
    shp = Shapes(args)
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device: building sd15 on the CPU takes long
        if base.startswith("yard"):
            step, module, items, unit = yardstick_steps(base, args.size, shp, device, ckpt, args.channels_last)
        else:
            step, module, items, unit = cyberhost_steps(base, args.size, shp, device, ckpt, args.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _time_steps(step, device, args.warmup, args.steps)
    profiled = None
    if args.profile:
        print_profile(case, step, device)
        profiled = breakdown(step, device, step_s=statistics.median(times))
        print(format_breakdown(case, profiled), flush=True)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    hw_flops = _count_flops(step)  # what ran, recomputation included
    if ckpt:
        _set_checkpointing(module, False)
        flops = _count_flops(step)
        _set_checkpointing(module, True)
    else:
        flops = hw_flops
    median = statistics.median(times)
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    note = f"{items} {unit}s/step, {shp.height}x{shp.width}" + (", grad ckpt" if ckpt else "")
    if base == "yard1":
        note += ", reference UNet (frozen, no grad) not in params"
    parts = params_by_part(module) if isinstance(module, CyberHost) else None
    return Result(case, median, items / median, flops / 1e12, flops / median / peak, mem, params / 1e6,
                  trainable / 1e6, note, hw_flops / median / peak, parts, profiled)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's arguments (also used by :mod:`benchmarks.train` for its yardstick rows)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="sd15", choices=sorted(SIZES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", default="", help=f"comma-separated cases of {','.join(CASES)}")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="stage-1 batch (default 12)")
    p.add_argument("--frames", type=int, default=0, help="stage-2 generated frames (default 12)")
    p.add_argument("--motion-frames", type=int, default=0, help="stage-2 motion frames (default 4)")
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for all cases")
    p.add_argument("--profile", action="store_true",
                   help="also profile each case: the top operators, and device time by kind of work (in the JSON)")
    p.add_argument("--json", default="", help="write the results here")
    args = p.parse_args(argv)
    cases = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    args.cases = cases
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    """Command line entry; prints a table and optionally writes JSON."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cases = args.cases
    peak = measure_peak(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, measured peak {peak / 1e12:.1f} TFLOP/s")
    results = []
    for case in cases:
        try:
            res = run_case(case, args, peak, device)
        except torch.OutOfMemoryError as err:
            res = Result(case, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0, 0,
                         f"OOM: {str(err)[:80]}")
        results.append(res)
        print(f"{res.case:12s} {res.time_s:8.4f} s  {res.items_per_s:7.1f}/s  {res.tflop_per_step:8.2f} TFLOP  "
              f"MFU {100 * res.mfu:5.1f} % (HFU {100 * res.hfu:5.1f} %)  peak {res.peak_mem_gib:6.1f} GiB  "
              f"params {res.params_m:8.1f} M (trainable {res.trainable_m:.1f} M)  {res.note}", flush=True)
        if res.params_by_part_m:
            print(f"{'':12s} params by part (M): {res.params_by_part_m}", flush=True)
        _free(device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "torch": torch.__version__, "peak_flops": peak, "args": vars(args),
                       "results": [asdict(r) for r in results]}, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
