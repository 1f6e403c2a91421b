"""Every YAML under conf/ parses (LightningCLI schema) and the training ones instantiate (tiny overlay)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyberhost import cli

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAINING = sorted(p for p in CONF.rglob("*.yaml") if p.parent.name != "data")
STAGE = {"stage1.yaml": 1, "stage2.yaml": 2}


def _stack(path: Path) -> list[Path]:
    """The configs a file is used with: a stage file alone or an overlay on top of stage 1/2."""
    if path.name in STAGE:
        return [path]
    base = CONF / ("stage2.yaml" if "stage2" in path.name else "stage1.yaml")
    return [base, path]


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(CONF)))
def test_yaml_parses(path: Path) -> None:
    args = ["fit"] + [a for c in _stack(path) for a in ("--config", str(c))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code in (0, None)


@pytest.mark.parametrize("stage", [1, 2])
def test_tiny_stage_instantiates(stage: int, tmp_path: Path) -> None:
    from cyberhost.training.synthetic import write_shards

    shards = write_shards(tmp_path / "shards", num_clips=2, num_frames=20, size=(96, 80))
    configs = [CONF / f"stage{stage}.yaml", CONF / "debug" / "tiny.yaml"]
    args = [a for c in configs for a in ("--config", str(c))]
    extra = ["--model.init_args.stage1_checkpoint", "random"] if stage == 2 else []
    from lightning.pytorch.cli import LightningCLI  # noqa: F401

    out = cli.main(["fit", *args, *extra, "--data.init_args.train_shards", str(shards),
                    "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.max_steps", "0"])
    assert out.model.stage == stage and out.datamodule.stage == stage
