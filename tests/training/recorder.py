"""Callbacks for subprocess runs in tests: each rank's training batches to a JSON file; a rank that stops to be killed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L


class BatchRecorder(L.Callback):
    """Appends ``[global_step, fingerprint]`` of every training batch to ``$BATCH_LOG/batches_rank<R>.json``."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        path = Path(os.environ["BATCH_LOG"]) / f"batches_rank{trainer.global_rank}.json"
        seen = json.loads(path.read_text()) if path.exists() else []
        seen.append([trainer.global_step, float(batch["target"].float().sum() + batch["driving_map"].float().sum())])
        path.write_text(json.dumps(seen))


class StopForKill(L.Callback):
    """Rank ``$KILL_RANK`` writes its pid to ``$KILL_PIDFILE`` at step ``$KILL_AT_STEP`` and waits to be SIGKILLed.

    Stopping there makes the kill land at a known step (the test sends the signal from outside);
    without the variables set it does nothing.
    """

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if "KILL_AT_STEP" not in os.environ or trainer.global_step != int(os.environ["KILL_AT_STEP"]):
            return
        if trainer.global_rank != int(os.environ.get("KILL_RANK", "1")):
            return
        Path(os.environ["KILL_PIDFILE"]).write_text(str(os.getpid()))
        time.sleep(600)
