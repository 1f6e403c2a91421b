"""A callback for subprocess runs in tests: appends each rank's training batches to a JSON file."""

from __future__ import annotations

import json
import os
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
