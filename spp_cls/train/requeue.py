"""SLURM preemption: on SIGUSR1, save an HPC checkpoint at the next batch boundary and requeue the job.

NOTE: Lightning's own SLURM requeue saves the checkpoint inside the signal handler, and that save ends in a barrier:
under DDP a rank that is inside another collective at that moment never reaches it, and both ranks hang (seen in 2
of 28 real 2-rank trials). Here the handler only sets a flag; all ranks agree on it at a batch boundary, save
together, rank 0 runs `scontrol requeue`, and every rank exits.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info


class SlurmRequeue(pl.Callback):
    def __init__(self) -> None:
        self.requested = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True  # only a flag: no I/O and no collectives inside a signal handler

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        directory = Path(trainer.default_root_dir)
        number = 1 + max((int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("hpc_ckpt_*.ckpt")), default=0)
        path = directory / f"hpc_ckpt_{number}.ckpt"
        trainer.save_checkpoint(path)  # every rank at the same step
        rank_zero_info(f"spp-cls: SIGUSR1: saved {path}; requeueing")
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
