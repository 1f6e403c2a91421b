"""Synthetic shards and CLI argument helpers for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.synthetic import write_shards

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic clips of 24 frames in 2 committed shards."""
    return write_shards(tmp_path_factory.mktemp("shards"), num_clips=8, num_frames=24, size=(96, 80), clips_per_shard=4)


def tiny_args(stage: int, shards: Path, runs: Path, steps: int = 4, *extra: str) -> list[str]:
    """``cyberhost fit`` arguments of a tiny CPU run on ``shards`` writing under ``runs``."""
    configs = [CONF / f"stage{stage}.yaml", CONF / "debug" / "tiny.yaml"]
    if stage == 2:
        configs.append(CONF / "debug" / "tiny_stage2.yaml")
    args = ["fit"]
    for c in configs:
        args += ["--config", str(c)]
    return args + [
        "--data.init_args.train_shards", str(shards), "--data.init_args.num_workers", "0",
        "--data.init_args.samples_per_epoch", "400", "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(max(1, steps // 2)), "--trainer.log_every_n_steps", "1",
        "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar in the event files under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return sorted(out.items())
