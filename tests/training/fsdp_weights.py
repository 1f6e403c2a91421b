"""One rank of the FSDP2 start-up test (run by ``test_distributed.py`` as 2 gloo processes).

Builds a tiny stage-2 module on the meta device, shards it as ``configure_model`` does, lets it
materialise and load the stage-1 file given, gathers the full state dict and writes what rank 0
sees to ``OUT/rank0.json`` (which loaded tensors equal the file, whether initialised tensors look
drawn once and split, how many elements each rank holds) and the gathered weights to
``OUT/full.safetensors``.

    python -m tests.training.fsdp_weights STAGE1.safetensors OUT   (with RANK, WORLD_SIZE, MASTER_* set)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh

from cyberhost.models import CyberHostConfig
from cyberhost.training.module import build_on_meta
from cyberhost.training.stages import Stage2Module


def main(stage1: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with build_on_meta():
        module = Stage2Module(stage1, model=CyberHostConfig(size="tiny", stage=2, stage2_trainable="all"))
    on_meta = all(p.is_meta for n, p in module.model.named_parameters() if not n.endswith("masked_spec_embed"))
    module._device_mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    module.configure_model()
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in module.model.parameters())
    total = sum(p.numel() for p in module.model.parameters())
    full = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    locals_ = [None] * dist.get_world_size()
    dist.all_gather_object(locals_, local)
    if rank == 0:
        file = load_file(stage1)
        key = next(k for k in full if k.startswith("motion_layers.") and k.endswith("attn.to_q.weight"))
        weight = full[key]
        half = weight.shape[0] // 2
        report = {
            "built_on_meta": on_meta,
            "loaded_equal": all(torch.equal(full[k], v) for k, v in file.items()),
            "loaded": len(file),
            "finite": all(bool(torch.isfinite(v.float()).all()) for v in full.values()),
            "halves_differ": not torch.equal(weight[:half], weight[half: 2 * half]),
            "zero_outputs": all(bool((v == 0).all()) for k, v in full.items() if k.endswith("attn.to_out.0.weight")
                                and k.startswith(("motion_layers.", "audio_layers."))),
            "local": locals_, "total": total,
        }
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rank0.json").write_text(json.dumps(report))
        save_file({k: v.contiguous() for k, v in full.items()}, str(Path(out) / "full.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
