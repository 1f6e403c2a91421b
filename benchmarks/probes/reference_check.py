"""Why a stage-1 probe network does or does not read the reference (PROBES.md, "Reference").

Trains the stage-1 probe network (tiny, CPU) and every ``--every`` steps measures, on one held-out
batch: the reference probe's relative gap, how much the prediction moves when the reference is
shuffled across the batch, and per reference-attention layer of the denoiser the attention mass on
the reference tokens, its entropy over them (1 = uniform), how much the reference values vary
between samples (relative to their norm), and how much the reference part of the attention output
changes under the shuffle::

    python -m benchmarks.probes.reference_check --seed 2 --steps 600
    python -m benchmarks.probes.reference_check --seed 2 --warmup 100        # the variants PROBES.md lists
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import cyberhost.models.attention as attention
from benchmarks.probes import clips, run


@contextlib.contextmanager
def watching(stats: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Record, per reference-attention layer, what :func:`attention._attend_with_reference` attends to."""
    plain = attention._attend_with_reference

    def spy(attn: Any, hidden_states: Tensor, ref: Tensor) -> Tensor:
        frames = hidden_states.shape[0] // ref.shape[0]
        q = attention._heads(attn.to_q(hidden_states), attn.heads)
        k_self, v_self = (attention._heads(f(hidden_states), attn.heads) for f in (attn.to_k, attn.to_v))
        k_ref, v_ref = (attention._heads(f(ref), attn.heads).repeat_interleave(frames, 0) for f in (attn.to_k, attn.to_v))
        w = torch.softmax(q @ torch.cat([k_self, k_ref], 2).transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        on_ref = w[..., hidden_states.shape[1]:]
        share = on_ref / on_ref.sum(-1, keepdim=True)
        stats[attn.probe_name] = {
            "mass": float(on_ref.sum(-1).mean()),
            "entropy": float(-(share * share.clamp_min(1e-12).log()).sum(-1).mean() / math.log(share.shape[-1])),
            "value_spread": float((v_ref - v_ref.mean(0, keepdim=True)).norm() / v_ref.norm()),
            "ref_out": on_ref @ v_ref,
        }
        return plain(attn, hidden_states, ref)

    attention._attend_with_reference = spy
    try:
        yield
    finally:
        attention._attend_with_reference = plain


@torch.no_grad()
def measure(module: Any, batch: dict[str, Tensor], probe: run.Probe) -> dict[str, Any]:
    """The probe's gap, the prediction's change under the shuffle and the per-layer attention numbers."""
    seen: list[dict[str, Any]] = []
    preds: list[Tensor] = []
    handle = module.model.register_forward_hook(lambda _m, _a, out: preds.append(out.sample))
    try:
        errors = []
        for b in (batch, run.altered(batch, probe)):
            stats: dict[str, dict[str, Any]] = {}
            with watching(stats):
                errors.append(run.step_errors(module, b, 7)[1].mean())
            seen.append(stats)
    finally:
        handle.remove()
        module.train()
    layers = {name: {k: v for k, v in s.items() if k != "ref_out"} | {
        "ref_out_change": float((s["ref_out"] - seen[1][name]["ref_out"]).norm() / s["ref_out"].norm())}
        for name, s in seen[0].items()}
    return {"rel_gap": float((errors[1] - errors[0]) / errors[0]),
            "prediction_change": float((preds[0] - preds[1]).norm() / preds[0].norm()), "layers": layers}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100, help="measure every N steps")
    p.add_argument("--lr", type=float, default=run.PRESETS["tiny"].lr)
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--batch", type=int, default=run.PRESETS["tiny"].batch[0])
    p.add_argument("--p-drop-reference", type=float, default=None, help="reference dropout (default: the probes')")
    p.add_argument("--t-low", type=int, default=run.T_RANGE[0], help="train and measure on t in [T_LOW, 1000)")
    p.add_argument("--pretrain", type=int, default=0,
                   help="first train N steps with the reference dropped, then copy the denoiser into the reference net")
    p.add_argument("--freeze-reference-net", action="store_true", help="keep the reference net at its random init")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = run.PRESETS["tiny"]
    net = run.NETWORKS["stage1"]
    tcfg = run.transform(net)
    if args.p_drop_reference is not None:
        tcfg = dataclasses.replace(tcfg, p_drop_reference=args.p_drop_reference)
    probe = next(x for x in run.PROBES if x.name == "reference")
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = clips.write_probe_shards(Path(tmp) / "train", net.clips, s.train_clips, seed=0)
        held_dir = clips.write_probe_shards(Path(tmp) / "held_out", net.clips, s.eval_clips, seed=100_000)
        dm = run.datamodule(net, train_dir, held_dir, s, args.batch, args.seed, tcfg)
        module = run.build_module(1, s, args.seed, "cpu")
        module.optim = dataclasses.replace(module.optim, lr=args.lr, warmup_steps=args.warmup)
        if args.freeze_reference_net:
            module.model.reference_net.requires_grad_(False)
        run.restrict_timesteps(module, args.t_low, 1000)
        for name, mod in module.model.unet.named_modules():
            if hasattr(mod, "to_q"):
                mod.probe_name = name
        held = next(iter(dm.val_dataloader()))
        loader = iter(dm.train_dataloader())

        def report(step: int, loss: float | None) -> None:
            m = measure(module, held, probe)
            head = f"step {step}" + ("" if loss is None else f", train loss {loss:.3f}")
            print(f"{head}: reference gap {m['rel_gap']:+.3%}, prediction change under a shuffle "
                  f"{m['prediction_change']:.4f}", flush=True)
            for name, layer in m["layers"].items():
                print(f"  {name:<55} mass {layer['mass']:.3f}  entropy {layer['entropy']:.3f}  value spread "
                      f"{layer['value_spread']:.3f}  reference-output change {layer['ref_out_change']:.3f}")

        module.train()
        report(0, None)
        opt, sched = None, None
        params = [q for q in module.parameters() if q.requires_grad]
        losses: list[float] = []
        for step in range(args.steps):
            if step in (0, args.pretrain):
                if step and args.pretrain:
                    module.model.reference_net.load_state_dict(module.model.unet.state_dict())
                    print(f"step {step}: copied the denoiser into the reference net", flush=True)
                conf = module.configure_optimizers()
                opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
            batch = next(loader)
            if step < args.pretrain:
                batch = dict(batch, drop_reference=torch.ones_like(batch["drop_reference"]))
            loss, logs = module.model_step(batch, torch.Generator().manual_seed(args.seed * 100_003 + step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(logs["loss_diffusion"]))
            if (step + 1) % args.every == 0:
                report(step + 1, float(np.mean(losses[-20:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
