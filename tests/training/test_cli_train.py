"""In-process CLI runs of both tiny stages: hand-off, resume, NaN guard, bad configs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from cyberhost import cli
from tests.training.conftest import scalars, tiny_args


def _stage1_ckpt(runs: Path) -> Path:
    return runs / "stage1" / "tiny" / "checkpoints" / "last.ckpt"


def _gif_frames(run_dir: Path) -> int:
    """Frames of the last ``val/samples_video`` GIF in the event files under ``run_dir``."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run_dir.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    gif = Image.open(io.BytesIO(acc.Images("val/samples_video")[-1].encoded_image_string))
    return gif.n_frames if gif.format == "GIF" else 0


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
    stage1 = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    ref = out.model.model.reference_net.state_dict()
    tail = {k: v for k, v in ref.items() if k.startswith("conv_out.")}  # never trained: still the stage-1 weights
    assert tail and all(torch.equal(v, stage1[f"model.reference_net.{k}"]) for k, v in tail.items())
    trained = [k for k, v in ref.items() if not torch.equal(v, stage1[f"model.reference_net.{k}"])]
    assert trained  # stage 2 is end to end: the reference net trains on from its stage-1 weights
    assert (runs / "stage2" / "tiny" / "checkpoints" / "last.ckpt").is_file()
    assert scalars(runs / "stage2", "train/loss_heatmap")
    assert _gif_frames(runs / "stage2") == 8  # the tiny stage-2 clip's frames, as an animated GIF


def test_stage2_from_safetensors_export(shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cli.main(tiny_args(1, shards, runs, 2))
    export = runs / "stage1" / "tiny" / "export" / "last.safetensors"
    out = cli.main(tiny_args(2, shards, runs, 1, "--model.init_args.stage1_checkpoint", str(export)))
    assert out.trainer.global_step == 1


def test_resume_reproduces_losses_and_ema(shards: Path, tmp_path: Path) -> None:
    """Stop at step 4 (mid-epoch), resume from last.ckpt to step 8: the same losses and EMA weights as one
    run to step 8, bitwise (the EMA is restored exactly, not restarted)."""
    full, part = tmp_path / "full", tmp_path / "part"
    ema = ("--model.init_args.optim.ema_decay", "0.5")
    want_run = cli.main(tiny_args(1, shards, full, 8, "--trainer.val_check_interval", "4", *ema))
    cli.main(tiny_args(1, shards, part, 4, "--trainer.val_check_interval", "4", *ema))
    ckpt = _stage1_ckpt(part)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["ema"] and saved["nonfinite_streak"] == 0
    got_run = cli.main(tiny_args(1, shards, part, 8, "--trainer.val_check_interval", "4", "--ckpt_path", str(ckpt),
                                 *ema))
    want, got = scalars(full / "stage1", "train/loss"), scalars(part / "stage1", "train/loss")
    assert [s for s, _ in want] == list(range(8)) or len(want) == 8
    assert want == got
    want_ema, got_ema = want_run.model.ema, got_run.model.ema
    assert want_ema.keys() == got_ema.keys() and all(torch.equal(want_ema[k], got_ema[k]) for k in want_ema)
    moved = [k for k in want_ema if not torch.equal(want_ema[k], saved["ema"][k])]
    assert moved  # the EMA kept moving after the resume


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


@pytest.mark.parametrize("from_argv", [True, False])
def test_cli_passes_its_arguments_without_lightning_warning(monkeypatch: pytest.MonkeyPatch, from_argv: bool) -> None:
    import sys
    import warnings

    from tests.training.conftest import CONF

    args = ["fit", "--config", str(CONF / "stage1.yaml"), "--print_config"]
    monkeypatch.setattr(sys, "argv", ["cyberhost", *args] if from_argv else ["pytest", "-q", "tests"])
    before = list(sys.argv)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        cli.main(None if from_argv else args)
    assert not [w for w in caught if "sys.argv" in str(w.message)], [str(w.message) for w in caught]
    assert sys.argv == before  # restored
