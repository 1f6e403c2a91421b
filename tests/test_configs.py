"""Every YAML under conf/ (but data prep's) parses with the LightningCLI schema and instantiates: model,
DataModule, trainer and strategy, stacked on the tiny overlay so no pretrained weights are needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyberhost import cli

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAINING = sorted(p for p in CONF.rglob("*.yaml") if p.parent.name != "data")
TINY = {1: [CONF / "debug" / "tiny.yaml"], 2: [CONF / "debug" / "tiny.yaml", CONF / "debug" / "tiny_stage2.yaml"]}
GPU_ONLY = {"fsdp1.yaml"}
"""Overlays whose strategy Lightning refuses on CPU: their trainer is only built on a GPU."""


def _stage(path: Path) -> int:
    return 2 if "stage2" in path.name else 1


def _args(configs: list[Path]) -> list[str]:
    out: list[str] = []
    for c in dict.fromkeys(configs):  # once each, in order
        out += ["--config", str(c)]
    return out


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(CONF)))
def test_yaml_parses_on_its_stage(path: Path) -> None:
    """The file on top of its stage config as a real run uses it (sd15 size; weights are not opened)."""
    base = CONF / f"stage{_stage(path)}.yaml"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", *_args([base, path]), "--print_config"])
    assert exit_.value.code in (0, None)


@pytest.mark.parametrize("path", [p for p in TRAINING if p.name not in GPU_ONLY], ids=lambda p: p.name)
def test_yaml_instantiates(path: Path, tmp_path: Path) -> None:
    stage = _stage(path)
    configs = [CONF / f"stage{stage}.yaml", *TINY[stage], path]
    extra = ["--model.init_args.stage1_checkpoint", "random"] if stage == 2 else []
    out = cli.build_cli(["fit", *_args(configs), *extra, "--trainer.logger.init_args.save_dir", str(tmp_path)],
                        run=False)
    assert out.model.stage == stage and out.datamodule.stage == stage
    if path.parent.name == "trainer":
        import yaml

        want = yaml.safe_load(path.read_text())["trainer"]["strategy"]["class_path"].rsplit(".", 1)[-1]
        assert type(out.trainer.strategy).__name__ == want


@pytest.mark.parametrize("name", sorted(GPU_ONLY))
def test_gpu_only_strategy_instantiates(name: str) -> None:
    import yaml
    from lightning.pytorch.cli import instantiate_class

    spec = yaml.safe_load((CONF / "trainer" / name).read_text())["trainer"]["strategy"]
    strategy = instantiate_class((), spec)
    from cyberhost.training.strategies import unet_block_types

    assert strategy.kwargs["use_orig_params"] is True and strategy.sharding_strategy.name == "FULL_SHARD"
    assert set(strategy.kwargs["auto_wrap_policy"]._module_classes) == unet_block_types()
