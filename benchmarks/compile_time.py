"""Where regional compilation spends its time: compile cost and step time, block class by block class.

``python -m benchmarks.compile_time --size sd15 --device cuda --json OUT/compile.json`` builds the
stage-2 network of :mod:`benchmarks.model_step` (12 + 4 frames, 640x384, the ``added`` trainable
set, bf16 autocast; ``--frozen-bf16`` stores the frozen weights in bf16), times the plain eager
step, then compiles the region classes one after another (``--classes``, cumulative: after the
last one every class is compiled) and records for each:

* ``first_step_s``: wall time of the first step after compiling that class (tracing, inductor and
  Triton compilation of its graphs, forward and backward, plus one step);
* ``graphs``: new dynamo graphs of that step, and of the next two (``recompiled_after``: must be 0,
  a bucket compiles once);
* ``step_s`` / ``peak_mem_gib``: median step (CUDA events) and peak memory with the classes so far.

``--together`` compiles all the listed classes at once instead (one first step: the whole network's
compile time). Run it twice with the same ``TORCHINDUCTOR_CACHE_DIR`` to measure the warm-cache
compile of a second run. The JSON is rewritten after every row, so a run stopped by a time limit
keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

from benchmarks.model_step import (
    COMPILE_DYNAMIC,
    Shapes,
    _count_flops,
    _sync,
    _time_steps,
    cyberhost_steps,
    measure_peak,
)
from benchmarks.profile_breakdown import breakdown, format_breakdown
from cyberhost.models.blocks import REGION_CLASSES, CompileConfig, compile_regions


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _wall(step: Any, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def _measure(step: Any, device: torch.device, steps: int) -> dict[str, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _time_steps(step, device, 0, steps)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": statistics.median(times), "peak_mem_gib": mem}


def _profiled(case: str, step: Any, device: torch.device, enabled: bool, step_s: float) -> dict[str, Any]:
    if not enabled:
        return {}
    b = breakdown(step, device, step_s=step_s)
    print(format_breakdown(case, b), flush=True)
    return {"profile": b}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command line entry: prints one line per row and writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="sd15")
    p.add_argument("--device", default="cuda")
    p.add_argument("--classes", nargs="+", default=list(REGION_CLASSES), choices=REGION_CLASSES)
    p.add_argument("--together", action="store_true", help="compile all --classes at once (one row)")
    p.add_argument("--dynamic", choices=sorted(COMPILE_DYNAMIC), default="auto")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (the test uses eager: no C++ compiler needed)")
    p.add_argument("--frozen-bf16", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--profile", action="store_true",
                   help="device time by kind of work of the eager step and of the last compiled one (in the rows)")
    p.add_argument("--json", type=Path, required=True)
    for name in ("batch", "frames", "motion_frames", "height", "width"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    peak = measure_peak(device)
    shp = Shapes(args)
    torch.manual_seed(0)
    with torch.device(device):
        step, model, items, _ = cyberhost_steps("stage2", args.size, shp, device, False, False)
    if args.frozen_bf16:
        model.cast_frozen()
    flops = _count_flops(step)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "peak_tflops": peak / 1e12, "tflop_per_step": flops / 1e12,
            "frames": items, "size": args.size, "frozen_bf16": args.frozen_bf16, "dynamic": args.dynamic, "backend": args.backend,
            "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"), "together": args.together}
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        row["mfu"] = flops / row["step_s"] / peak
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=1))

    _wall(step, device)  # warm the eager kernels and the allocator
    eager = {"compiled": [], **_measure(step, device, args.steps)}
    record({**eager, **_profiled("eager", step, device, args.profile, eager["step_s"])})
    dynamic = COMPILE_DYNAMIC[args.dynamic]
    groups = [tuple(args.classes)] if args.together else [(c,) for c in args.classes]
    done: list[str] = []
    for group in groups:
        blocks = compile_regions(model, CompileConfig(enabled=True, vae=False, classes=group, dynamic=dynamic,
                                                      backend=args.backend))
        before = _graphs()
        first = _wall(step, device)
        graphs = _graphs() - before
        second = _graphs()
        _wall(step, device)
        _wall(step, device)
        done += group
        last = group == groups[-1]
        timed = _measure(step, device, args.steps)
        record({"compiled": list(done), "blocks": len(blocks), "first_step_s": first, "graphs": graphs,
                "recompiled_after": _graphs() - second, **timed,
                **_profiled("compiled " + "+".join(done), step, device, args.profile and last, timed["step_s"])})
    print(torch._dynamo.utils.compile_times(repr="str"), flush=True)
    return rows


if __name__ == "__main__":
    main()
