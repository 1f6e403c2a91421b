"""Loading for generation from what real tiny training runs write: a .ckpt with EMA, an FSDP2 folder, exports.

Each run goes through the real CLI (``cyberhost fit``) once per module; the files are then read
the way ``cyberhost generate`` reads them (:func:`load_model`) and compared with the trained
module's own weights, EMA or raw.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmarks.synthetic import write_shards
from cyberhost import cli
from cyberhost.diffusion import ScheduleConfig
from cyberhost.inference import CheckpointMismatchError, GenerateConfig, GenerateError, generate_video, load_model
from cyberhost.models import CyberHostConfig
from tests.training.conftest import CONF, ROOT, tiny_args

from .conftest import FixedBackend, build_model, save_lightning_ckpt, write_wav

EMA = ("--model.init_args.optim.ema_decay", "0.5", "--model.init_args.optim.lr", "0.05")
"""A fast-moving EMA and a high learning rate: after 2 steps the EMA weights are far from the raw ones."""
SELF_CONTAINED = ("--trainer.callbacks.init_args.all_weights", "true")
"""The export callback (last in conf/stage2.yaml) also writes the frozen parts: tiny runs have no pretrained folders."""


def _fit_args(shards: Path, runs: Path, steps: int, *extra: str) -> list[str]:
    return tiny_args(2, shards, runs, steps, "--model.init_args.stage1_checkpoint", "random",
                     "--trainer.limit_val_batches", "0", *SELF_CONTAINED, *extra)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), num_clips=4, num_frames=24, size=(96, 80), clips_per_shard=4)


@pytest.fixture(scope="module")
def ema_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-step tiny stage-2 run with EMA, in-process: its files and the trained module's raw and EMA weights."""
    runs = tmp_path_factory.mktemp("ema_run")
    module = cli.main(_fit_args(shards, runs, 2, *EMA)).model
    raw = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    ema = {k: v.detach().clone() for k, v in module.ema.items()}
    run = runs / "stage2" / "tiny"
    return {"ckpt": run / "checkpoints" / "last.ckpt", "export": run / "export" / "last.safetensors", "raw": raw,
            "ema": {**raw, **ema}, "ema_keys": set(ema), "transform": asdict(module.trainer.datamodule.transform)}


@pytest.fixture(scope="module")
def fsdp_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-step tiny stage-2 run under FSDP2 on 2 CPU processes (gloo); its run folder."""
    runs = tmp_path_factory.mktemp("fsdp_run")
    args = _fit_args(shards, runs, 1, "--config", str(CONF / "trainer" / "fsdp.yaml"), "--trainer.devices", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cyberhost.cli", *args], cwd=runs, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "stage2" / "tiny"


def _assert_weights(model: torch.nn.Module, want: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:5]


@pytest.mark.parametrize("kind", ["ckpt", "export"])
def test_ema_by_default_raw_with_no_ema(ema_run: dict, kind: str) -> None:
    assert any(not torch.equal(ema_run["ema"][k], ema_run["raw"][k]) for k in ema_run["ema_keys"])
    model, settings = load_model(ema_run[kind])
    _assert_weights(model, ema_run["ema"])
    assert settings.ema and not model.training
    model, settings = load_model(ema_run[kind], prefer_ema=False)
    _assert_weights(model, ema_run["raw"])
    assert not settings.ema


@pytest.mark.parametrize("kind", ["ckpt", "export"])
def test_settings_come_from_the_checkpoint_record(ema_run: dict, kind: str) -> None:
    _, settings = load_model(ema_run[kind])
    assert settings.model == CyberHostConfig(size="tiny", stage=2, sd15_path=None, motion_adapter_path=None,
                                             wav2vec2_path=None, arcface_path=None, stage2_trainable="all")
    assert asdict(settings.transform) == ema_run["transform"] and settings.transform.num_frames == 8
    assert settings.buckets.area == 6144 and settings.buckets.multiple == 16  # conf/debug/tiny.yaml
    assert settings.conditions["transform"]["num_motion"] == 4 and "buckets" in settings.conditions
    assert settings.schedule == ScheduleConfig()


def test_hand_made_checkpoints_have_the_layout_training_writes(ema_run: dict, tiny_ckpt) -> None:
    """The ``tiny_ckpt`` / ``save_lightning_ckpt`` files other generation tests load are laid out like a real run's."""
    real = torch.load(ema_run["ckpt"], map_location="cpu", weights_only=False)
    made = torch.load(tiny_ckpt[0], map_location="cpu", weights_only=False)
    assert made.keys() <= real.keys(), sorted(made.keys() - real.keys())
    assert made["state_dict"].keys() == real["state_dict"].keys()  # "model." + the network's own names
    for name, tensor in made["state_dict"].items():
        assert tensor.shape == real["state_dict"][name].shape, name
    assert type(made["hyper_parameters"]["model"]) is type(real["hyper_parameters"]["model"])
    assert made["hyper_parameters"]["model"].keys() <= real["hyper_parameters"]["model"].keys()
    assert made["conditions"].keys() <= real["conditions"].keys()
    for part in ("transform", "buckets"):
        assert made["conditions"][part].keys() <= real["conditions"][part].keys(), part


def test_training_yaml_overrides_the_record(ema_run: dict, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  init_args:\n    transform:\n      num_frames: 6\n")
    _, settings = load_model(ema_run["ckpt"], [overlay], overrides={"orthonormalize": "gram_schmidt"})
    assert settings.transform.num_frames == 6 and settings.transform.num_motion == 4  # the rest: the record's
    assert settings.model.orthonormalize == "gram_schmidt" and settings.buckets.area == 6144


def test_generation_differs_between_ema_and_raw(ema_run: dict, photo: np.ndarray, photo_keypoints: np.ndarray,
                                                tmp_path: Path) -> None:
    audio = write_wav(tmp_path / "a.wav", 0.2)
    config = GenerateConfig(steps=1, max_frames=2)
    frames = []
    for prefer_ema in (True, False):
        model, settings = load_model(ema_run["ckpt"], prefer_ema=prefer_ema)
        result = generate_video(model, photo, audio, None, settings=settings, config=config,
                                backend=FixedBackend(photo_keypoints), progress=False)
        assert result.frames is not None and result.frames.shape[0] == 2
        frames.append(result.frames.astype(np.int16))
    assert np.abs(frames[0] - frames[1]).max() > 0


def test_fsdp2_folder_loads_like_its_export(fsdp_run: Path) -> None:
    folder = fsdp_run / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and (folder / ".metadata").is_file()
    exported = load_file(str(fsdp_run / "export" / "last.safetensors"))  # gathered by the run itself, all weights
    model, settings = load_model(folder)
    _assert_weights(model, exported)
    assert not settings.ema and settings.transform.num_frames == 8 and settings.buckets.area == 6144
    _assert_weights(load_model(folder, prefer_ema=False)[0], exported)


def test_generate_never_imports_lightning(ema_run: dict, fsdp_run: Path, photo_file: Path, tmp_path: Path) -> None:
    """``cyberhost generate`` end to end (MediaPipe, a .ckpt) and loading the other two kinds, in a fresh process."""
    audio = write_wav(tmp_path / "a.wav", 0.2)
    out = tmp_path / "out.mp4"
    script = (
        "import sys\n"
        "from cyberhost.cli import main\n"
        "from cyberhost.inference import load_model\n"
        f"assert main(['generate', '--image', {str(photo_file)!r}, '--audio', {str(audio)!r}, '--checkpoint', "
        f"{str(ema_run['ckpt'])!r}, '--output', {str(out)!r}, '--steps', '1', '--max-frames', '2', '--no-progress', "
        "'--device', 'cpu']) == 0\n"
        f"load_model({str(ema_run['export'])!r}); load_model({str(fsdp_run / 'checkpoints' / 'last.ckpt')!r})\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')"
        " or m.startswith('cyberhost.training')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-2000:]
    assert "EMA weights" in proc.stderr and out.is_file()


# ----------------------------------------------------------------------------- hand-made files


class Foreign:
    """An object a pickle-based checkpoint could carry (could be anything, with code)."""

    def __init__(self) -> None:
        self.x = 1


def test_python_built_module_checkpoint_with_dataclasses(tmp_path: Path) -> None:
    """A module built in Python pickles its dataclass arguments; the optimiser settings are read as a stand-in."""
    from cyberhost.training.module import OptimConfig

    model = build_model(seed=1)
    hparams = {"model": model.config, "optim": OptimConfig(lr=3e-4), "schedule": ScheduleConfig(zero_terminal_snr=True)}
    path = save_lightning_ckpt(model, tmp_path / "dc.ckpt", hparams, {"transform": {"num_frames": 8}})
    loaded, settings = load_model(path)
    assert settings.model == model.config and settings.schedule.zero_terminal_snr and settings.transform.num_frames == 8
    _assert_weights(loaded, model.state_dict())
    assert not settings.ema


def test_foreign_pickle_is_refused_unless_trusted(tmp_path: Path) -> None:
    model = build_model()
    hparams = {"model": asdict(model.config), "extra": Foreign()}  # not a tensor, not ours
    path = save_lightning_ckpt(model, tmp_path / "foreign.ckpt", hparams)
    with pytest.raises(GenerateError, match="Foreign.*--trust-checkpoint"):
        load_model(path)
    loaded, _ = load_model(path, trust_checkpoint=True)
    assert loaded.config.stage == 2


def test_mismatch_names_missing_and_unexpected_keys(tmp_path: Path, train_yaml: Path) -> None:
    talking_head = build_model(hand_rca_blocks=[])  # no hand RCA: the default tiny network has two
    path = save_lightning_ckpt(talking_head, tmp_path / "head.ckpt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(path, [train_yaml])
    err = info.value
    assert err.missing and all(k.startswith(("hand_rca.", "heatmap_heads.")) for k in err.missing)
    assert "hand_rca.up0." in str(err) and "missing" in str(err) and "--config" in str(err)
    state = {f"model.{k}": v for k, v in build_model().state_dict().items()}
    state["model.surplus.weight"] = torch.zeros(1)
    state["model.text_context"] = torch.zeros(1, 3, 32)
    torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(tmp_path / "bad.ckpt", [train_yaml])
    assert info.value.unexpected == ["surplus.weight"]
    assert "text_context: checkpoint (1, 3, 32) vs network (1, 1, 32)" in str(info.value)


def test_no_config_anywhere_and_stage1(tmp_path: Path) -> None:
    model = build_model()
    path = save_lightning_ckpt(model, tmp_path / "bare.ckpt")
    with pytest.raises(GenerateError, match="no network config"):
        load_model(path)
    stage1 = tmp_path / "s1.yaml"
    stage1.write_text("model:\n  init_args:\n    model:\n      size: tiny\n      stage: 1\n")
    with pytest.raises(GenerateError, match="stage-1"):
        load_model(path, [stage1])


def test_crafted_checkpoint_calling_our_code_is_refused(tmp_path: Path) -> None:
    """A pickled call of one of our own functions is not a config type: refused, and nothing runs."""
    from cyberhost.media.files import atomic_write_bytes

    marker = tmp_path / "pwned"

    class CallsOurCode:
        def __reduce__(self) -> tuple:
            return atomic_write_bytes, (str(marker), b"code ran while unpickling")

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": build_model().state_dict(), "hyper_parameters": {"x": CallsOurCode()}}, path)
    with pytest.raises(GenerateError, match="atomic_write_bytes.*--trust-checkpoint"):
        load_model(path)
    assert not marker.exists()


def test_hand_clarity_generate_feeds_stays_inside_what_training_saw(ema_run: dict, shards: Path, photo: np.ndarray,
                                                                    photo_keypoints: np.ndarray) -> None:
    """Training records the clarity scores of its batches; 'high' is their p90 and nothing outside them is fed."""
    import io

    from cyberhost.data.shards import iter_raw_samples, list_shards

    model, settings = load_model(ema_run["ckpt"])
    seen = settings.conditions["hand_clarity"]
    stored = np.concatenate([np.load(io.BytesIO(s["hand_clarity.npy"])).reshape(-1) for shard in list_shards(shards)
                             for s in iter_raw_samples(shard)])
    stored = stored[np.isfinite(stored)]
    assert seen["count"] > 0 and stored.min() - 1e-4 <= seen["min"] <= seen["p90"] <= seen["max"] <= stored.max() + 1e-4
    fed: list[torch.Tensor] = []
    model.clarity.register_forward_pre_hook(lambda _m, args: fed.append(args[0][args[1]]))  # (scores, valid)
    audio = np.zeros(3200, np.float32)
    generate_video(model, photo, audio, None, settings=settings, config=GenerateConfig(steps=1, max_frames=2),
                   backend=FixedBackend(photo_keypoints), progress=False)
    values = torch.cat(fed)
    assert values.numel() > 0 and torch.allclose(values, torch.tensor(seen["p90"]))
    assert bool(((values >= seen["min"]) & (values <= seen["max"])).all())
    with pytest.raises(GenerateError, match="outside the range training saw"):
        generate_video(model, photo, audio, None, settings=settings,
                       config=GenerateConfig(steps=1, max_frames=2, hand_clarity=seen["max"] * 2 + 1),
                       backend=FixedBackend(photo_keypoints), progress=False)
