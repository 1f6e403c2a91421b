"""Trainable/frozen groups from conf/stage{1,2}.yaml, and every trainable parameter in every step's graph
(what lets conf/trainer/ddp.yaml run without find_unused_parameters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cyberhost.cli import build_cli
from cyberhost.models import CyberHostConfig
from cyberhost.training.module import ParamGroups
from cyberhost.training.stages import Stage1Module
from tests.training.conftest import CONF, tiny_args

STAGE2_ADDED = ("motion_modules", "motion_layers.", "audio_layers.", "audio.proj.", "face_rca.", "hand_rca.",
                "heatmap_heads.", "face_encoder.", "face_proj.", "face_norm.", "hand_encoder.", "clarity.")
"""Names of what stage 2 adds (paper Sec. 4.1), written out independently of the YAML's regexes."""
_LAST = "reference_net.up_blocks.1.attentions.1."  # tiny size: the last attention of the last up block
REFERENCE_TAIL = ("reference_net.conv_out.", "reference_net.conv_norm_out.", f"{_LAST}proj_out.",
                  *(f"{_LAST}transformer_blocks.0.{k}." for k in ("attn1", "norm2", "attn2", "norm3", "ff")))
"""The tiny reference net's output side that the denoiser never reads (it reads attn1's input only)."""


@pytest.fixture(scope="module")
def clis(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, object]:
    runs = tmp_path_factory.mktemp("runs")
    extra = {1: [], 2: ["--model.init_args.stage1_checkpoint", "random"]}
    return {s: build_cli(tiny_args(s, shards, runs, 2, *extra[s]), run=False) for s in (1, 2)}


def test_stage_configs_name_the_trainable_groups(clis: dict[int, object]) -> None:
    """No YAML lists part names: the network's declaration decides, and matches names written out here."""
    m1, m2 = clis[1].model, clis[2].model
    assert m1.params.trainable is None and m2.params.trainable is None and m2.params.frozen is None
    for stage in ("stage1.yaml", "stage2.yaml", "stage2_added.yaml"):
        text = (CONF / stage).read_text()
        assert not any(f"'^{name.rstrip('.')}" in text for name in STAGE2_ADDED), stage
    for name, p in m1.model.named_parameters():
        tail = name.startswith(REFERENCE_TAIL)
        assert p.requires_grad == (not name.startswith("vae.") and not tail), name
    for name, p in m2.model.named_parameters():  # stage 2 end to end (Sec. 4.1): stage-1 parts train on
        pretrained = name.startswith(("vae.", "audio.wav2vec2."))
        assert p.requires_grad == (not pretrained and not name.startswith(REFERENCE_TAIL)), name
    table = m2.param_table()
    assert "trainable patterns" in table and "reference_net" in table and "hand_rca" in table
    assert any(line.split()[:2] == ["unet.motion_modules", "stage2"] for line in table.splitlines())
    assert any(line.split()[:2] == ["vae", "pretrained"] for line in table.splitlines())
    total = sum(p.numel() for p in m2.model.parameters() if p.requires_grad)
    assert f"{total:,}" in table.splitlines()[-1]


def test_added_overlay_trains_only_what_stage2_adds(shards: Path, tmp_path: Path) -> None:
    args = tiny_args(2, shards, tmp_path, 2, "--model.init_args.stage1_checkpoint", "random")
    args = [*args[:7], "--config", str(CONF / "stage2_added.yaml"), *args[7:]]  # after the stage and tiny configs
    module = build_cli(args, run=False).model
    assert module.model_config.stage2_trainable == "added"
    for name, p in module.model.named_parameters():
        pretrained = name.startswith(("vae.", "audio.wav2vec2."))
        assert p.requires_grad == (not pretrained and any(a in name for a in STAGE2_ADDED)), name


@pytest.mark.parametrize(("stage", "drop_ref", "drop_audio"), [(1, False, False), (1, True, False), (2, False, False),
                                                             (2, True, True)])
def test_every_trainable_parameter_gets_a_gradient(clis: dict[int, object], stage: int, drop_ref: bool,
                                                   drop_audio: bool) -> None:
    module, dm = clis[stage].model, clis[stage].datamodule
    batch = next(iter(dm.train_dataloader()))
    batch["drop_reference"] = torch.full_like(batch["drop_reference"], drop_ref)
    batch["drop_audio"] = torch.full_like(batch["drop_audio"], drop_audio)
    module.zero_grad(set_to_none=True)
    loss, _ = module.model_step(batch)
    loss.backward()
    unused = [n for n, p in module.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused[:8]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (ParamGroups(trainable=["^unett\\."]), "matches no parameter"),
        (ParamGroups(frozen=["^no_such_part"]), "matches no parameter"),
        (ParamGroups(trainable=["^vae\\."]), "no trainable parameters"),
    ],
)
def test_bad_param_patterns_fail_naming_the_pattern(params: ParamGroups, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stage1Module(model=CyberHostConfig(size="tiny", stage=1), params=params)


def test_stage2_pattern_on_stage1_parts_needs_stage2_trainable_all() -> None:
    from cyberhost.training.stages import RANDOM_STAGE1, Stage2Module

    with pytest.raises(ValueError, match="stage2_trainable: all"):
        Stage2Module(RANDOM_STAGE1, model=CyberHostConfig(size="tiny", stage=2),
                     params=ParamGroups(trainable=["^reference_net\\."]))
