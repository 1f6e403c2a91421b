"""Start-up cost per rank: peak host RAM (RSS) and time from process start to "ready for the first step".

Launches ``--ranks`` CPU processes (gloo). Each one does what ``cyberhost fit`` does before its
first step, with the module built by the code under ``--code`` (default: this checkout):

* ``single`` (one process): the LightningModule is constructed (network built and its weights
  loaded), the optimiser is built;
* ``fsdp2``: the process group is set up; the module is constructed as the CLI constructs it for
  ``conf/trainer/fsdp.yaml`` (on the meta device when the code supports it,
  ``cyberhost.training.module.build_on_meta``); ``configure_model`` shards it with ``fully_shard``
  (and, from meta, materialises each rank's shards and loads the weights); the optimiser is built.

The network is the stage-2 one of ``--size`` with random weights and ``stage1_checkpoint: random``
(``conf/debug/random_init*.yaml``): no weight files are needed. "Ready" is after a barrier that
follows the optimiser; AdamW allocates its state at the first step, which is not counted. Peak
RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` of each rank.

    python benchmarks/startup.py --size sd15 --ranks 2 --strategy fsdp2 --out result.json
    python benchmarks/startup.py --size sd15 --ranks 1 --strategy single --code /tmp/before  # another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def worker(args: argparse.Namespace) -> dict:
    """One rank: build, shard/load, optimiser; the phases' end times (seconds since process start) and memory."""
    t0 = float(os.environ["STARTUP_T0"])
    sys.path.insert(0, str(Path(args.code).resolve()))
    import contextlib

    import torch

    marks: dict[str, float] = {}
    import cyberhost.training.module as module_code
    from cyberhost.models import CyberHostConfig
    from cyberhost.training.stages import Stage2Module

    marks["imported"] = time.time() - t0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.strategy == "fsdp2":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("gloo")
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    meta = getattr(module_code, "build_on_meta", None)
    deferred = args.strategy == "fsdp2" and meta is not None
    config = CyberHostConfig(size=args.size, stage=2, stage2_trainable=args.trainable)
    torch.manual_seed(0)
    with meta() if deferred else contextlib.nullcontext():
        module = Stage2Module("random", model=config)
    marks["constructed"] = time.time() - t0
    rss_constructed = _rss_gib()
    if args.strategy == "fsdp2":
        module._device_mesh = mesh
        module.configure_model()
        marks["sharded_and_loaded"] = time.time() - t0
    module.configure_optimizers()
    if args.strategy == "fsdp2":
        dist.barrier()
    marks["ready"] = time.time() - t0
    params = list(module.model.parameters())
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    out = {
        "rank": rank, "seconds": marks, "built_on_meta": deferred,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_after_construction_gib": rss_constructed, "rss_ready_gib": _rss_gib(),
        "parameters_total": sum(p.numel() for p in params), "parameters_on_this_rank": local,
    }
    if args.strategy == "fsdp2":
        dist.destroy_process_group()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace) -> dict:
    """Start the ranks, wait, collect their reports."""
    if args.strategy == "single" and args.ranks != 1:
        raise SystemExit("--strategy single runs one process; use --strategy fsdp2 for several ranks")
    load_before = os.getloadavg()
    port = _free_port()
    reports = Path(args.tmp or f"/tmp/startup_{os.getpid()}")
    reports.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(args.ranks):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(args.ranks),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(args.threads),
               "STARTUP_T0": repr(time.time()), "PYTHONPATH": str(Path(args.code).resolve())}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--report", str(reports / f"rank{rank}.json"),
               *args.argv]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in range(args.ranks)
             if (reports / f"rank{r}.json").is_file()]
    return {
        "size": args.size, "stage": 2, "stage2_trainable": args.trainable, "ranks": args.ranks,
        "strategy": args.strategy, "code": str(Path(args.code).resolve()), "exit_codes": codes,
        "threads_per_rank": args.threads, "host": platform.node(), "cpus": os.cpu_count(),
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},  # other users of the machine
        "max_peak_rss_gib": max((r["peak_rss_gib"] for r in ranks), default=None),
        "sum_peak_rss_gib": sum(r["peak_rss_gib"] for r in ranks) if ranks else None,
        "max_seconds_to_ready": max((r["seconds"]["ready"] for r in ranks), default=None),
        "per_rank": ranks,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse, then launch the ranks (or be one of them with ``--worker``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="network size (cyberhost.models.config.SIZES)")
    parser.add_argument("--ranks", type=int, default=1, help="processes (CPU, gloo)")
    parser.add_argument("--strategy", choices=("single", "fsdp2"), default="single",
                        help="single: one process, no sharding; fsdp2: configure_model's fully_shard")
    parser.add_argument("--trainable", choices=("all", "added"), default="all", help="model.stage2_trainable")
    parser.add_argument("--code", default=str(ROOT), help="checkout whose cyberhost package is measured")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank")
    parser.add_argument("--out", help="write the JSON result here (also printed)")
    parser.add_argument("--tmp", help="folder for the per-rank reports (default /tmp/startup_<pid>)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a != "--worker"]
    if args.worker:
        Path(args.report).write_text(json.dumps(worker(args)))
        return 0
    result = launch(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if all(c == 0 for c in result["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
