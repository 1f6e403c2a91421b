"""In-process CLI runs of both tiny stages: hand-off, resume, NaN guard, bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cyberhost import cli
from tests.training.conftest import scalars, tiny_args


def _stage1_ckpt(runs: Path) -> Path:
    return runs / "stage1" / "tiny" / "checkpoints" / "last.ckpt"


def test_stage1_then_stage2_hand_off(shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cli.main(tiny_args(1, shards, runs, 4))
    ckpt = _stage1_ckpt(runs)
    assert ckpt.is_file()
    assert (runs / "stage1" / "tiny" / "config.yaml").is_file()
    assert (runs / "stage1" / "tiny" / "export" / "last.safetensors").is_file()
    assert list((runs / "stage1" / "tiny" / "samples").glob("*.mp4"))
    losses = scalars(runs / "stage1", "train/loss")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(v)) for _, v in losses)
    out = cli.main(tiny_args(2, shards, runs, 2, "--model.init_args.stage1_checkpoint", str(ckpt)))
    stage1 = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    ref = out.model.model.reference_net.state_dict()  # frozen in stage 2: still the stage-1 weights
    assert all(torch.equal(v, stage1[f"model.reference_net.{k}"]) for k, v in ref.items())
    assert (runs / "stage2" / "tiny" / "checkpoints" / "last.ckpt").is_file()
    assert scalars(runs / "stage2", "train/loss_heatmap")


def test_stage2_from_safetensors_export(shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cli.main(tiny_args(1, shards, runs, 2))
    export = runs / "stage1" / "tiny" / "export" / "last.safetensors"
    out = cli.main(tiny_args(2, shards, runs, 1, "--model.init_args.stage1_checkpoint", str(export)))
    assert out.trainer.global_step == 1


def test_resume_reproduces_losses(shards: Path, tmp_path: Path) -> None:
    """Stop at step 4 (mid-epoch), resume from last.ckpt to step 8: same losses as one run to step 8, bitwise."""
    full, part = tmp_path / "full", tmp_path / "part"
    cli.main(tiny_args(1, shards, full, 8, "--trainer.val_check_interval", "4"))
    cli.main(tiny_args(1, shards, part, 4, "--trainer.val_check_interval", "4"))
    ckpt = _stage1_ckpt(part)
    cli.main(tiny_args(1, shards, part, 8, "--trainer.val_check_interval", "4", "--ckpt_path", str(ckpt)))
    want, got = scalars(full / "stage1", "train/loss"), scalars(part / "stage1", "train/loss")
    assert [s for s, _ in want] == list(range(8)) or len(want) == 8
    assert want == got


def test_nan_guard_stops_with_clear_error(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cyberhost.training.module import CyberHostModule

    real = CyberHostModule.model_step

    def poisoned(self, batch, generator=None):  # noqa: ANN001, ANN202
        loss, logs = real(self, batch, generator)
        return loss * float("nan"), logs

    monkeypatch.setattr(CyberHostModule, "model_step", poisoned)
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite losses"):
        cli.main(tiny_args(1, shards, tmp_path, 6, "--model.init_args.optim.max_bad_steps", "3"))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--model.init_args.optim.lrr", "1"], "lrr"),
        (["--data.init_args.batch_size", "many"], "batch_size"),
        (["--model.init_args.model.sd15_path", "/nonexistent/sd15"], "sd15_path"),
        (["--model.init_args.stage1_checkpoint", "/nonexistent/last.ckpt"], "stage1_checkpoint"),
    ],
)
def test_bad_config_fails_early_naming_the_key(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], key: str
) -> None:
    stage = 2 if key == "stage1_checkpoint" else 1
    with pytest.raises((SystemExit, FileNotFoundError, ValueError)) as err:
        cli.main(tiny_args(stage, shards, tmp_path / "runs", 2, *extra))
    assert key in capsys.readouterr().err + str(err.value)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))
