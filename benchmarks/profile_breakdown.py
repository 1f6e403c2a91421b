"""Where one training step spends its device time, by kind of work (issue 12's profile table).

:func:`breakdown` runs a step under ``torch.profiler`` and sums the device time of its kernels into
:data:`CATEGORIES` by kernel name (:func:`category`); the step's wall time minus the time at least
one kernel ran (the union of the kernels' intervals) is ``idle``: the device waiting for the host
to launch work. ``copy_ops`` counts the copy operators the host issued per step (``aten::copy_``,
``_to_copy``, ``clone``, ``contiguous``: autocast's weight casts, permute-then-contiguous, ...).

On a CPU there are no kernels: the self time of each top-level operator is categorised by its
name instead, and ``idle`` is the wall time outside operators (Python). Only the GPU numbers mean
anything for speed; the CPU path exists so that the tests can run the code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

CATEGORIES = ("copy", "layout", "attention", "matmul", "convolution", "norm/element-wise", "fused (compiled)", "other")

COPY_OPS = ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")

# first match wins, on the lower-cased kernel (or operator) name
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("layout", ("nchwtonhwc", "nhwctonchw", "nchw_to_nhwc", "nhwc_to_nchw", "transpose_readwrite")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "mha_", "_efficient_attention", "cudnn_attn")),
    ("fused (compiled)", ("triton_",)),
    ("copy", ("copy", "memcpy", "aten::_to_copy", "aten::clone", "aten::contiguous", "cat_", "catarray")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "winograd", "implicit_gemm", "cudnn")),
    ("matmul", ("gemm", "xmma", "cutlass", "cublas", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear",
                "nvjet", "sm90_", "sm80_")),
    ("norm/element-wise", ("norm", "elementwise", "reduce", "softmax", "silu", "gelu", "mul", "add", "vectorized",
                           "aten::", "fill", "memset", "index", "scatter", "gather", "adam", "foreach")),
)


def category(name: str) -> str:
    """The :data:`CATEGORIES` entry of a kernel or operator name."""
    low = name.lower()
    for cat, keys in _RULES:
        if any(k in low for k in keys):
            return cat
    return "other"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def breakdown(step: Callable[[], None], device: torch.device, steps: int = 2,
              step_s: float | None = None, top: int = 0) -> dict[str, Any]:
    """Per-step device time by category (ms and share of the wall time), idle time and copy count.

    Args:
        step: one training step (already warmed up: compiled, allocator and cuDNN plans ready).
        device: where it runs.
        steps: steps profiled (the numbers are per step).
        step_s: the step's time measured without the profiler, which slows the host down (on the H200
            a 0.21 s step took 0.35 s profiled): ``idle_vs_step_ms`` is that time minus the busy time,
            the idle time of an unprofiled step.
        top: also list the ``top`` kernels (operators on a CPU) by device time: ``top_kernels``,
            ``[name, category, ms per step, launches per step]``.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    per_cat = dict.fromkeys(CATEGORIES, 0.0)
    kernels = dict.fromkeys(CATEGORIES, 0)
    intervals: list[tuple[float, float]] = []
    copy_ops = 0
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        if e.name in COPY_OPS and e.device_type == torch.autograd.DeviceType.CPU:
            copy_ops += 1
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            dur = e.time_range.end - e.time_range.start
            intervals.append((e.time_range.start, e.time_range.end))
        else:
            if e.cpu_parent is not None or not e.name.startswith("aten::"):
                continue  # top-level operators only: their self time would double-count children
            dur = e.cpu_time_total
            intervals.append((e.time_range.start, e.time_range.end))
        cat = category(e.name)
        per_cat[cat] += dur
        kernels[cat] += 1
        acc = by_name.setdefault(e.name, [0.0, 0])
        acc[0] += dur
        acc[1] += 1
    busy = _union(intervals)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "steps": steps,
        "wall_ms": wall_us / steps / 1e3,
        "busy_ms": busy / steps / 1e3,
        "idle_ms": max(0.0, wall_us - busy) / steps / 1e3,
        "copy_ops_per_step": copy_ops / steps,
        "kernels_per_step": sum(kernels.values()) / steps,
        "ms": {c: v / steps / 1e3 for c, v in per_cat.items()},
        "count_per_step": {c: v / steps for c, v in kernels.items()},
    }
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    out["top_kernels"] = [[name, category(name), us / steps / 1e3, n / steps] for name, (us, n) in ranked]
    out["share_of_wall"] = {c: v / out["wall_ms"] for c, v in out["ms"].items()}
    out["share_of_wall"]["idle"] = out["idle_ms"] / out["wall_ms"]
    if step_s is not None:
        out["step_ms"] = step_s * 1e3
        out["idle_vs_step_ms"] = max(0.0, out["step_ms"] - out["busy_ms"])
        out["share_of_step"] = {c: v / out["step_ms"] for c, v in out["ms"].items()}
        out["share_of_step"]["idle"] = out["idle_vs_step_ms"] / out["step_ms"]
    return out


def format_breakdown(case: str, b: dict[str, Any]) -> str:
    """One printable block: a line per category (ms per step, share of the wall time, kernels)."""
    lines = [f"--- {case}: {b['wall_ms']:.1f} ms/step wall, device busy {b['busy_ms']:.1f} ms, idle {b['idle_ms']:.1f} ms "
             f"({b['share_of_wall']['idle']:.1%}); {b['kernels_per_step']:.0f} kernels and {b['copy_ops_per_step']:.0f} "
             f"copy ops per step ({b['device']})"]
    if "step_ms" in b:
        lines.append(f"    unprofiled step {b['step_ms']:.1f} ms: idle {b['idle_vs_step_ms']:.1f} ms "
                     f"({b['share_of_step']['idle']:.1%})")
    for c in CATEGORIES:
        lines.append(f"    {c:<20} {b['ms'][c]:9.2f} ms  {b['share_of_wall'][c]:6.1%}  {b['count_per_step'][c]:7.0f} kernels")
    for name, cat, ms, n in b.get("top_kernels", []):
        lines.append(f"      {ms:8.2f} ms {n:6.0f}x  [{cat}] {name[:150]}")
    return "\n".join(lines)
