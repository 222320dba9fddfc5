"""Callbacks the process tests add through a config: RankProbe (the DDP tests) has each rank append what it did per
epoch, and where it ran, to its own JSON-lines file, so the test can compare ranks after the processes have ended;
HoldOnce (the SLURM tests) holds a step open long enough to be signalled in the middle of it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl


class RankProbe(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps = 0

    def _write(self, trainer: pl.Trainer, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            # the node: Lightning's node rank and count, and SLURM's name for it (None outside SLURM)
            where = {"node_rank": trainer.node_rank, "num_nodes": trainer.num_nodes,
                     "node": os.environ.get("SLURMD_NODENAME")}
            handle.write(json.dumps({"rank": trainer.global_rank, "world": trainer.world_size, **where, **record})
                         + "\n")

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


class HoldOnce(pl.Callback):
    """Rank 0 holds the first batch of `where` for `seconds`, once per test (the marker file says it has): "test" is
    the test step, "final_validation" the validation that ends the last training epoch of `fit`."""

    def __init__(self, marker: str, seconds: float, where: str) -> None:
        self.marker = Path(marker)
        self.seconds = seconds
        self.where = where

    def _hold(self, trainer: pl.Trainer, batch_idx: int) -> None:
        if trainer.is_global_zero and batch_idx == 0 and not self.marker.exists():
            self.marker.touch()
            time.sleep(self.seconds)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.where == "test":
            self._hold(trainer, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        final = trainer.state.fn == "fit" and trainer.current_epoch == trainer.max_epochs - 1
        if self.where == "final_validation" and final and not trainer.sanity_checking:
            self._hold(trainer, batch_idx)
