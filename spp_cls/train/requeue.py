"""SLURM time limits and preemption: once SIGUSR1 has arrived, requeue the job at the next batch boundary.

- `fit`: at the next training batch end, after saving an HPC checkpoint that the requeued job's `fit` resumes from;
  a signal that comes after the last training batch requeues at the end of training (last.ckpt then holds it all).
- `validate` / `test`: at the next evaluation batch end, with nothing to save: the requeued job's `fit` returns at
  once (its last.ckpt is final) and the evaluation runs again from the start.

NOTE: Lightning's own SLURM requeue saves the checkpoint inside the signal handler, and that save ends in a barrier:
under DDP a rank that is inside another collective at that moment never reaches it, and both ranks hang (seen in 2
of 28 real 2-rank trials). Here the handler only sets a flag (requeue_signal.py); all ranks agree on it at a batch
boundary, save together, rank 0 runs `scontrol requeue`, and every rank exits.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from . import requeue_signal


class SlurmRequeue(pl.Callback):
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        requeue_signal.listen()  # the CLI listens from its start already; this covers a Trainer built elsewhere

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._asked(trainer):
            directory = Path(trainer.default_root_dir)
            number = 1 + max((int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("hpc_ckpt_*.ckpt")), default=0)
            path = directory / f"hpc_ckpt_{number}.ckpt"
            trainer.save_checkpoint(path)  # every rank at the same step
            self._requeue(trainer, f"saved {path}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._asked(trainer):
            self._requeue(trainer, "after the last training batch, nothing to save (last.ckpt holds the whole run)")

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # inside `fit`, the next training batch or the end of training acts on the signal
        if trainer.state.fn == "validate" and self._asked(trainer):
            self._requeue(trainer, "during validate, nothing to save (the requeued job validates again)")

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._asked(trainer):
            self._requeue(trainer, "during test, nothing to save (the requeued job tests again)")

    @staticmethod
    def _asked(trainer: pl.Trainer) -> bool:
        """Whether any rank got the signal; every rank calls this at the same batch boundaries."""
        return trainer.strategy.reduce_boolean_decision(requeue_signal.received(), all=False)

    @staticmethod
    def _requeue(trainer: pl.Trainer, what_was_done: str) -> None:
        rank_zero_info(f"spp-cls: SIGUSR1: {what_was_done}; requeueing")
        if trainer.is_global_zero:
            # close the wandb run before SLURM kills this process: the requeued job resumes the same run id, which
            # a still-open run of the killed process would hold ("run ID ... is in use")
            for logger in trainer.loggers:
                logger.finalize("requeued")
            wandb = sys.modules.get("wandb")
            if wandb is not None and wandb.run is not None:
                wandb.finish()
            array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
            subprocess.run(["scontrol", "requeue", job], check=False)
        trainer.strategy.barrier("spp-cls-requeue")  # rank 0 finishes the requeue before any rank exits
        raise SystemExit("spp-cls: requeued")  # non-zero: the job script must not go on to the test
