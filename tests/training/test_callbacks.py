"""Callbacks without a training run: GPU syncs of the throughput monitor, the TensorBoard GIF, EMA/guard state."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cyberhost.training.callbacks import ThroughputMonitor, ValidationSamples


def test_throughput_monitor_syncs_only_on_logging_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    syncs, logged = [], []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2**30)
    module = SimpleNamespace(device=torch.device("cuda", 0), log_dict=lambda logs, **_: logged.append(logs))
    trainer = SimpleNamespace(global_step=0)
    monitor = ThroughputMonitor(log_every_n_steps=5)
    batch = {"target": torch.zeros(3, 4, 1, 1, 1)}
    for step in range(21):
        monitor.on_train_batch_start(trainer, module, batch, step)
        trainer.global_step = step + 1
        monitor.on_train_batch_end(trainer, module, None, batch, step)
    assert len(syncs) == 1 + 4  # the first (unmeasured) step, then steps 5, 10, 15, 20
    assert len(logged) == 4 and logged[-1]["perf/gpu_mem_gib"] == 1.0
    assert all(set(logs) >= {"perf/samples_per_s", "perf/frames_per_s", "perf/data_wait_fraction"} for logs in logged)
    assert logged[1]["perf/frames_per_s"] == pytest.approx(4 * logged[1]["perf/samples_per_s"])


def test_validation_video_is_an_animated_gif_in_tensorboard(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="stage2", version="tiny")
    trainer = SimpleNamespace(logger=logger, default_root_dir=str(tmp_path))
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)  # (F, H, W, 3)
    ValidationSamples(fps=10)._write(trainer, video, step=7)
    logger.experiment.flush()
    assert (tmp_path / "stage2" / "tiny" / "samples" / "step_0000007.mp4").is_file()
    (events,) = (tmp_path / "stage2" / "tiny").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    (still,) = acc.Images("val/samples")
    (gif,) = acc.Images("val/samples_video")
    assert gif.step == 7 and (gif.width, gif.height) == (48, 32) and still.step == 7
    image = Image.open(io.BytesIO(gif.encoded_image_string))
    assert image.format == "GIF" and image.is_animated and image.n_frames == 6
    image.seek(3)
    assert np.abs(np.asarray(image.convert("RGB"), np.int16) - video[3]).mean() < 40  # palette-quantised frame 3


def test_ema_and_nonfinite_streak_survive_a_checkpoint() -> None:
    from cyberhost.models import CyberHostConfig
    from cyberhost.training.module import OptimConfig
    from cyberhost.training.stages import Stage1Module

    def make() -> Stage1Module:
        return Stage1Module(model=CyberHostConfig(size="tiny", stage=1), optim=OptimConfig(ema_decay=0.9))

    a, b = make(), make()
    a.ema = {n: torch.randn_like(p) for n, p in a.model.named_parameters() if p.requires_grad}
    a._bad_steps = 2
    ckpt: dict = {}
    a.on_save_checkpoint(ckpt)
    b.on_load_checkpoint(ckpt)
    assert b._bad_steps == 2 and b.ema.keys() == a.ema.keys()
    assert all(torch.equal(b.ema[k], a.ema[k]) for k in a.ema)
    b.model.to("meta")  # stands in for the GPU: Lightning moves the module after restoring the checkpoint
    b._ema_follow_parameters()
    assert {v.device.type for v in b.ema.values()} == {"meta"}
