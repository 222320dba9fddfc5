"""Callbacks the process tests add through a config: RankProbe (the DDP, multi-node and SLURM tests) has each rank
append what it did per epoch, and where it ran, to its own JSON-lines file, so the test can compare ranks after the
processes have ended; HoldOnce (the SLURM and killed-process tests) holds a step open long enough to be signalled or
killed in the middle of it."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch


class RankProbe(pl.Callback):
    """Per rank and epoch: steps, train size, a digest of every training image, the reduced val count, torch's
    threads; per test: the reduced test count. Each rank also writes its pid to ``rank{R}.pid`` when a run starts."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps = 0
        self.digests: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.pid").write_text(str(os.getpid()))

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
        self.digests = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        self.digests += [hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest()[:16] for image in batch[0]]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, {"stage": "fit", "epoch": trainer.current_epoch, "steps": self.steps,
                              "train_size": pl_module.current_train_size(),
                              "val_images": float(trainer.callback_metrics["val/images"]),
                              "threads": torch.get_num_threads(), "digests": self.digests})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, {"stage": "test", "test_images": float(trainer.callback_metrics["test/images"])})


class HoldOnce(pl.Callback):
    """Rank 0 holds the first batch of `where` for `seconds`, once per test (the marker file says it has): "test" is
    the test step, "final_validation" the validation that ends the last training epoch of `fit`, "train" and
    "validation" the training and validation of epoch `epoch`."""

    def __init__(self, marker: str, seconds: float, where: str, epoch: int = 0) -> None:
        self.marker = Path(marker)
        self.seconds = seconds
        self.where = where
        self.epoch = epoch

    def _hold(self, trainer: pl.Trainer, batch_idx: int) -> None:
        if trainer.is_global_zero and batch_idx == 0 and not self.marker.exists():
            self.marker.touch()
            time.sleep(self.seconds)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.where == "test":
            self._hold(trainer, batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.where == "train" and trainer.current_epoch == self.epoch:
            self._hold(trainer, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        final = trainer.state.fn == "fit" and trainer.current_epoch == trainer.max_epochs - 1
        if self.where == "final_validation" and final and not trainer.sanity_checking:
            self._hold(trainer, batch_idx)
        if self.where == "validation" and trainer.state.fn == "fit" and trainer.current_epoch == self.epoch:
            self._hold(trainer, batch_idx)
