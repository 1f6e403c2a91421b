"""Pure construction (no file, meta device), the part declaration, and initialising a meta-built network."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from cyberhost.models import CyberHost, CyberHostConfig
from cyberhost.models.cyberhost import network_parts, part_of
from cyberhost.weights import materialize

CASES = [("tiny", 1, {}), ("tiny", 2, {}), ("tiny", 2, {"face_encoder": "arcface"}), ("tiny", 2, {"hand_rca_blocks": []}),
         ("sd15", 1, {}), ("sd15", 2, {})]
PATHS = {"sd15_path": "/nonexistent/sd15", "motion_adapter_path": "/nonexistent/adapter",
         "wav2vec2_path": "/nonexistent/w2v", "arcface_path": "/nonexistent/arcface.pth"}


def _meta(size: str, stage: int, **kwargs: object) -> CyberHost:
    with torch.device("meta"):
        return CyberHost(CyberHostConfig(size=size, stage=stage, **kwargs))


def test_construction_opens_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pretrained path set (and absent): building still works, and nothing is opened or looked up."""
    touched: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        touched.append(args[:1])
        raise OSError("construction must not touch files")

    models = []
    for stage in (1, 2):
        with monkeypatch.context() as patch:  # only around construction: pytest itself needs files
            patch.setattr(builtins, "open", refuse)
            for name in ("is_dir", "is_file", "exists", "stat", "open"):
                patch.setattr(Path, name, refuse)
            models.append(CyberHost(CyberHostConfig(size="tiny", stage=stage, face_encoder="arcface", **PATHS)))
            models.append(_meta("sd15", stage, **PATHS))
    assert not touched and models[0].config.sd15_path == PATHS["sd15_path"]
    # transformers makes wav2vec2's masked_spec_embed with the legacy torch.Tensor(n), which ignores the device
    # context: a real 768-float tensor; everything else is on meta
    real = [n for n, p in models[-1].named_parameters() if not p.is_meta]
    assert real == ["audio.wav2vec2.masked_spec_embed"]


@pytest.mark.parametrize(("size", "stage", "kwargs"), CASES)
def test_every_tensor_belongs_to_one_declared_part(size: str, stage: int, kwargs: dict) -> None:
    model = _meta(size, stage, **kwargs)
    keys = [*model.state_dict(), *(n for n, _ in model.named_buffers())]
    hits = {part.name: 0 for part in model.parts}
    for key in keys:
        hits[part_of(model.parts, key).name] += 1
    empty = {name for name, n in hits.items() if n == 0}
    assert empty <= ({"hand_rca", "heatmap_heads"} if kwargs.get("hand_rca_blocks") == [] else set())
    assert network_parts(model.config) == model.parts
    groups = {p.name: p.group for p in model.parts}
    assert groups["vae"] == "pretrained" and groups["unet"] == "stage1" and groups["reference_net"] == "stage1"
    if stage == 2:
        assert groups["unet.motion_modules"] == "stage2" and groups["audio.wav2vec2"] == "pretrained"
        arcface = model.config.resolved_face_encoder == "arcface"
        assert groups["face_encoder"] == ("pretrained" if arcface else "stage2")
    else:
        assert not any(p.stage == 2 for p in model.parts)


def test_freezing_follows_the_declaration() -> None:
    for trainable in ("added", "all"):
        model = _meta("tiny", 2, stage2_trainable=trainable)
        for name, p in model.named_parameters():
            part = part_of(model.parts, name)
            if not part.trained:
                assert not p.requires_grad, name
            elif part.stage == 1 and trainable == "added":
                assert not p.requires_grad, name
        frozen = {id(m) for m in model.frozen_modules()}
        assert frozen == {id(model.vae), id(model.audio.wav2vec2)}  # tiny's face encoder is the trainable conv one


@pytest.mark.parametrize(("stage", "kwargs"), [(1, {}), (2, {}), (2, {"face_encoder": "arcface"})])
def test_materialised_init_matches_eager_construction(stage: int, kwargs: dict) -> None:
    """Zeros stay zeros, constants constants, and each tensor's spread is the eager build's (an independent build)."""
    torch.manual_seed(0)
    eager = CyberHost(CyberHostConfig(size="tiny", stage=stage, **kwargs))
    meta = _meta("tiny", stage, **kwargs)
    materialize(meta, "cpu", seed=3)
    want, got = eager.state_dict(), meta.state_dict()
    assert want.keys() == got.keys()
    assert [n for n, p in eager.named_parameters() if p.requires_grad] == [
        n for n, p in meta.named_parameters() if p.requires_grad]
    for key, a in want.items():
        a, b = a.double(), got[key].double()
        assert torch.isfinite(b).all(), key
        assert bool((a == 0).all()) == bool((b == 0).all()), key
        if a.numel() > 1 and a.std() == 0:
            assert torch.equal(a, b), key
        elif a.numel() >= 64:
            assert 0.5 < float(b.std() / a.std()) < 2, key
    for name, buf in eager.named_buffers():  # the temporal modules' sinusoid tables: exactly
        if name.endswith(".pe"):
            assert torch.equal(buf, dict(meta.named_buffers())[name]), name


def test_every_sd15_module_has_an_init_rule() -> None:
    """Materialising on the meta device runs every rule without allocating (a missing rule raises)."""
    for stage in (1, 2):
        materialize(_meta("sd15", stage), "meta")
        materialize(_meta("sd15", stage, face_encoder="conv"), "meta")
