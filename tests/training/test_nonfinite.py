"""The NaN/Inf guard's device-side skip: a non-finite step changes no weight, moment or step count."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.scaling import RepeatBatch, rank_batch, rank_bucket
from cyberhost.models import CyberHostConfig
from cyberhost.training.module import CyberHostModule, OptimConfig
from cyberhost.training.stages import Stage1Module


class Snapshots(L.Callback):
    """Trainable weights and AdamW state after every step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.state: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: object) -> None:
        self.weights.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})
        opt = trainer.optimizers[0]
        self.state.append([v.clone() for s in opt.state.values() for v in s.values()])


@pytest.mark.parametrize("poisoned", [[1], [1, 2, 3]])
def test_nonfinite_step_is_skipped_on_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 poisoned: list[int]) -> None:
    torch.manual_seed(0)
    module = Stage1Module(model=CyberHostConfig(size="tiny", stage=1), optim=OptimConfig(lr=1e-3, max_bad_steps=3))
    real = CyberHostModule.model_step

    def model_step(self, batch, generator=None):  # noqa: ANN001, ANN202
        loss, logs = real(self, batch, generator)
        return (loss * float("nan"), logs) if self.global_step in poisoned else (loss, logs)

    monkeypatch.setattr(CyberHostModule, "model_step", model_step)
    data = rank_batch(1, "tiny", 2, rank_bucket(1, "tiny", 0, "same"), tmp_path / "shards", seed=0)
    snaps = Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[snaps], gradient_clip_val=1.0)
    loader = DataLoader(RepeatBatch(data, 5), batch_size=None)
    if len(poisoned) == 3:  # three in a row: the error, one step later than the third
        with pytest.raises(FloatingPointError, match="3 consecutive non-finite losses \\(last at step 3\\)"):
            trainer.fit(module, train_dataloaders=loader)
        assert len(snaps.weights) == 4
    else:
        trainer.fit(module, train_dataloaders=loader)
        assert module._bad_steps == 0 and len(snaps.weights) == 5
    assert trainer.optimizers[0].defaults["fused"]  # the device path, not the host check
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    for step in range(1, len(snaps.weights)):
        unchanged = same(snaps.weights[step], snaps.weights[step - 1])
        moments = all(torch.equal(a, b) for a, b in zip(snaps.state[step], snaps.state[step - 1], strict=True))
        assert unchanged == moments == (step in poisoned), step
