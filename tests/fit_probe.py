"""A callback the DDP test adds through the config: each rank appends what it did per epoch to its own JSON-lines
file, so the test can compare ranks after the processes have ended."""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class RankProbe(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps = 0

    def _write(self, trainer: pl.Trainer, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps({"rank": trainer.global_rank, "world": trainer.world_size, **record}) + "\n")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, {"stage": "fit", "epoch": trainer.current_epoch, "steps": self.steps,
                              "train_size": pl_module.current_train_size(),
                              "val_images": float(trainer.callback_metrics["val/images"])})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, {"stage": "test", "test_images": float(trainer.callback_metrics["test/images"])})
