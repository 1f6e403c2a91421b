"""Checkpoint and config loading: weights_only, EMA/prefixes, config found by shape, clear mismatch errors."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cyberhost.data.transforms import TransformConfig
from cyberhost.inference import CheckpointMismatchError, GenerateError, load_model
from cyberhost.inference.loading import strip_prefix
from cyberhost.models import CyberHostConfig

from .conftest import TRAIN_TREE, build_model, save_lightning_ckpt


class Foreign:
    """An object a pickle-based checkpoint could carry (could be anything, with code)."""

    def __init__(self) -> None:
        self.x = 1


def test_ckpt_with_saved_dataclasses_loads_weights_only(tmp_path: Path) -> None:
    model = build_model(seed=1)
    hparams = {"model": model.config, "transform": TransformConfig(num_frames=8)}
    path = save_lightning_ckpt(model, tmp_path / "dc.ckpt", hparams)
    loaded, settings = load_model(path)
    assert settings.transform.num_frames == 8 and settings.model == model.config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not loaded.training


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
    stage1.write_text("model:\n  model:\n    size: tiny\n    stage: 1\n")
    with pytest.raises(GenerateError, match="stage-1"):
        load_model(path, [stage1])


def test_yaml_composition_and_overrides(tmp_path: Path, train_yaml: Path) -> None:
    model = build_model()
    path = save_lightning_ckpt(model, tmp_path / "m.ckpt")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  init_args:\n    transform:\n      num_frames: 6\n")
    _, settings = load_model(path, [train_yaml, overlay], overrides={"orthonormalize": "gram_schmidt"})
    assert settings.transform.num_frames == 6 and settings.transform.num_motion == 4
    assert settings.model.orthonormalize == "gram_schmidt"
    assert settings.buckets.buckets() == [(64, 64)]
    assert TRAIN_TREE["model"]["init_args"]["model"]["size"] == settings.model.size


def test_strip_prefix_prefers_ema() -> None:
    t = torch.zeros(1)
    state = {"model.text_context": t, "model.a": t, "ema.model.text_context": t + 1, "ema.model.a": t + 1}
    assert strip_prefix(state)["a"].item() == 1
    assert strip_prefix(state, prefer_ema=False)["a"].item() == 0
    assert set(strip_prefix({"text_context": t, "b": t})) == {"text_context", "b"}
    assert CyberHostConfig().size == "tiny"


def test_crafted_checkpoint_calling_our_code_is_refused(tmp_path: Path) -> None:
    """A pickled call of one of our own functions is not a config type: refused, and nothing runs."""
    from cyberhost.training.checkpoints import atomic_write_bytes

    marker = tmp_path / "pwned"

    class CallsOurCode:
        def __reduce__(self) -> tuple:
            return atomic_write_bytes, (str(marker), b"code ran while unpickling")

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": build_model().state_dict(), "hyper_parameters": {"x": CallsOurCode()}}, path)
    with pytest.raises(GenerateError, match="atomic_write_bytes.*--trust-checkpoint"):
        load_model(path)
    assert not marker.exists()
