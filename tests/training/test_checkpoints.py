"""Checkpoint files: the unpickling allowlist, atomic streaming saves, FSDP2 folders, exports, EMA, stage-1 mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cyberhost import weights
from cyberhost.diffusion import LossConfig
from cyberhost.models import CyberHostConfig
from cyberhost.training import checkpoints
from cyberhost.training.checkpoints import (
    AtomicCheckpointIO,
    UnsafeCheckpointError,
    atomic_write_bytes,
    load_network_weights,
    safe_torch_load,
)
from cyberhost.training.module import OptimConfig


class _CallsOurCode:
    """Unpickles as a call of one of our own functions: writes ``marker`` when it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return atomic_write_bytes, (str(self.marker), b"code ran while unpickling")


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "payload": _CallsOurCode(marker)}, path)
    assert "cyberhost.weights.files.atomic_write_bytes" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    for load in (lambda: load_network_weights(path, "model.init_args.stage1_checkpoint"),
                 lambda: AtomicCheckpointIO().load_checkpoint(path)):  # stage-1 hand-off and --ckpt_path resume
        with pytest.raises(UnsafeCheckpointError, match=r"atomic_write_bytes.*refusing"):
            load()
    assert not marker.exists()


def test_checkpoint_with_our_config_dataclasses_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    hparams = {"model": CyberHostConfig(size="tiny", stage=1), "optim": OptimConfig(lr=3e-4), "loss": LossConfig()}
    torch.save({"state_dict": {"model.w": torch.arange(3.0)}, "hyper_parameters": hparams}, path)
    assert safe_torch_load(path)["hyper_parameters"] == hparams
    assert torch.equal(load_network_weights(path, "x")["w"], torch.arange(3.0))
    plain = weights.safe_torch_load(path)["hyper_parameters"]  # what generate reads: no training classes
    assert plain["model"] == hparams["model"] and plain["loss"] == hparams["loss"]
    assert isinstance(plain["optim"], weights.SavedRecord) and plain["optim"].lr == 3e-4


def test_atomic_checkpoint_io_streams_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpts" / "last.ckpt"
    real_save = torch.save
    seen = []

    def recording_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", recording_save)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(4)}, target)
    (f,) = seen
    assert hasattr(f, "fileno") and Path(f.name).parent == target.parent  # a real file in the target folder
    assert io.load_checkpoint(target)["step"] == 1

    def failing_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    assert io.load_checkpoint(target)["step"] == 1  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_distributed_checkpoint_folder_loads_and_other_folders_say_what_to_use(tmp_path: Path) -> None:
    from torch.distributed.checkpoint import save

    folder = tmp_path / "last.ckpt"
    weights = {"model.a": torch.randn(3, 2), "model.b.c": torch.arange(4.0)}
    save({"state_dict": weights, "optimizer_0": {"state": {"x": torch.ones(2)}}}, checkpoint_id=str(folder),
         no_dist=True)
    got = load_network_weights(folder, "model.init_args.stage1_checkpoint")
    assert got.keys() == {"a", "b.c"} and all(torch.equal(got[k.removeprefix("model.")], v) for k, v in weights.items())
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match=r"stage1_checkpoint: .*export/last.safetensors"):
        load_network_weights(plain, "model.init_args.stage1_checkpoint")
    with pytest.raises(FileNotFoundError, match=r"stage1_checkpoint: no checkpoint at .*export/last.safetensors"):
        load_network_weights(tmp_path / "missing.ckpt", "model.init_args.stage1_checkpoint")


def test_export_round_trip_keeps_raw_ema_and_metadata(tmp_path: Path) -> None:
    raw = {"a": torch.zeros(2), "b.c": torch.ones(3)}
    ema = {"b.c": torch.full((3,), 0.5)}
    path = weights.export_safetensors(raw, tmp_path / "x.safetensors", {"model": {"size": "tiny"}},
                                      {"transform": {"num_frames": 8}, "hand_clarity": {"p95": 30.0}}, ema)
    assert sorted(load_file(str(path))) == ["a", "b.c", "ema.b.c"]  # plain safetensors: raw names + ema.*
    ckpt = weights.read_checkpoint(path)
    assert ckpt.kind == "safetensors" and ckpt.config == {"model": {"size": "tiny"}}
    assert ckpt.conditions == {"transform": {"num_frames": 8}, "hand_clarity": {"p95": 30.0}}
    assert torch.equal(ckpt.weights()["b.c"], ema["b.c"]) and torch.equal(ckpt.weights()["a"], raw["a"])
    assert torch.equal(ckpt.weights(ema=False)["b.c"], raw["b.c"])
    assert torch.equal(load_network_weights(path, "x")["b.c"], ema["b.c"])  # the stage-1 hand-off takes EMA too
    assert torch.equal(load_network_weights(path, "x", ema=False)["b.c"], raw["b.c"])
    with pytest.raises(ValueError, match=r"EMA weights \['d'\] have no raw weight"):
        weights.with_ema(raw, {"d": torch.zeros(1)})


def test_lightning_ckpt_ema_overlays_the_module_state(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model.a": torch.zeros(2), "model.b": torch.ones(2)}, "ema": {"b": torch.full((2,), 3.0)},
                "conditions": {"buckets": {"area": 4096}}, "hyper_parameters": {"model": {"stage": 2}}}, path)
    ckpt = weights.read_checkpoint(path)
    assert ckpt.kind == "lightning" and ckpt.conditions == {"buckets": {"area": 4096}}
    assert ckpt.state.keys() == {"a", "b"} and ckpt.config == {"model": {"stage": 2}}
    assert ckpt.weights()["b"].tolist() == [3.0, 3.0] and ckpt.weights(ema=False)["b"].tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def stage1_state() -> dict[str, torch.Tensor]:
    from cyberhost.models import CyberHost

    return CyberHost(CyberHostConfig(size="tiny", stage=1)).state_dict()


@pytest.mark.parametrize("case", ["shape", "unexpected", "missing"])
def test_mismatched_stage1_checkpoint_names_the_keys(tmp_path: Path, stage1_state: dict, case: str) -> None:
    from cyberhost.training.stages import RANDOM_STAGE1, Stage2Module

    state = {k: v.clone() for k, v in stage1_state.items() if not k.startswith("vae.")}
    key = "unet.conv_in.weight"
    if case == "shape":
        state[key] = torch.zeros(3, 3)
    elif case == "unexpected":
        state["bogus_head.weight"] = torch.zeros(1)
        key = "bogus_head.weight"
    else:
        del state[key]
    path = tmp_path / "stage1.safetensors"
    save_file(state, str(path))
    module = Stage2Module(RANDOM_STAGE1, model=CyberHostConfig(size="tiny", stage=2))
    with pytest.raises(ValueError, match=rf"stage1_checkpoint {path}: .*{key}"):
        module.load_stage1(str(path))
