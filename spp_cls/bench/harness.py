"""What Lightning costs: SppClassifier in a real Trainer against a bare loop over the same batches."""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..train.console import QUIET_WARNINGS
from ..train.module import SppClassifier
from .device import autocast, synchronize
from .settings import NUM_CLASSES, PRECISIONS, Batch, BenchSettings
from .timing import Timing, random_batches, timed_steps

HARNESS_TARGET = 0.95


class _InMemoryData(pl.LightningDataModule):
    """The datamodule interface `SppClassifier` reads during fit, over a fixed list of batches."""

    def __init__(self, batches: list[Batch], batch_size: int) -> None:
        super().__init__()
        self.batches = batches
        self.batch_size = batch_size

    def train_dataloader(self) -> _BatchList:
        return _BatchList(self.batches)


class _BatchList:
    """An iterable over fixed batches (a plain list would be read by Lightning as a list of dataloaders)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _StepClock(pl.Callback):
    """Clock reads at the same points as `timed_steps`: before timed batch 0 runs, after the last one finished."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.started = self.finished = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            synchronize(self.device)
            self.finished = time.perf_counter()


def bare_train_step(module: SppClassifier, size: int, batch_size: int, precision: str,
                    device: torch.device) -> Callable[[Batch], int]:
    """Forward + cross-entropy + backward + SGD step of `module` without Lightning, from its own `train_loss` and
    `sgd` (the linearly scaled learning rate), under autocast for bf16. Returns the images each call trained."""
    optimizer = module.sgd(batch_size)

    def step(batch: Batch) -> int:
        images, labels = (tensor.to(device, non_blocking=True) for tensor in batch)
        with autocast(device, precision):
            loss = module.train_loss(images, labels, size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return labels.numel()

    return step


def lightning_timing(module: SppClassifier, batches: list[Batch], settings: BenchSettings, device: torch.device,
                     work: Path) -> Timing:
    """Train `module` on `batches` with `SppClassifier.training_step` in a real Trainer; time the post-warm-up steps."""
    clock = _StepClock(settings.warmup, settings.steps, device)
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the accelerator lines and tips Lightning prints on every run
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            trainer = pl.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                precision=PRECISIONS[settings.precision], max_epochs=1, limit_train_batches=len(batches),
                limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, benchmark=device.type == "cuda",
                use_distributed_sampler=False, callbacks=[clock], default_root_dir=str(work),
                log_every_n_steps=len(batches),  # Lightning warns of fewer batches than its logging interval
            )
            trainer.fit(module, datamodule=_InMemoryData(batches, settings.batch_size))
    finally:
        lightning_log.setLevel(level)
    module.to(device)  # Lightning's teardown moves the module back to the CPU
    if clock.finished <= clock.started:
        raise RuntimeError(f"the Lightning run did not train the {len(batches)} batches it was given")
    return Timing(settings.steps * settings.batch_size, clock.finished - clock.started)


def harness_overhead(module: SppClassifier, size: int, settings: BenchSettings, device: torch.device,
                     work: Path) -> dict[str, Any]:
    """Lightning / bare loop on identical batches, best of two alternating rounds each (bare, L, L, bare)."""
    distinct = random_batches(settings.batch_size, NUM_CLASSES, device, seed=1)
    batches = [distinct[i % len(distinct)] for i in range(settings.warmup + settings.steps)]
    bare: list[float] = []
    lightning: list[float] = []
    for runner in ("bare", "lightning", "lightning", "bare"):
        if runner == "bare":
            step = bare_train_step(module, size, settings.batch_size, settings.precision, device)
            bare.append(timed_steps(step, iter(batches), settings.warmup, settings.steps, device).images_per_s)
        else:
            lightning.append(lightning_timing(module, batches, settings, device, work).images_per_s)
    return {"bare_images_per_s": max(bare), "lightning_images_per_s": max(lightning),
            "ratio": max(lightning) / max(bare), "target": HARNESS_TARGET, "bare_rounds": bare,
            "lightning_rounds": lightning}
