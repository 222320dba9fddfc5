"""What a run leaves in its directory besides checkpoints: summary.csv (one row per epoch), and after a test
results.json with the per-image outcomes beside it."""
from __future__ import annotations

import csv
import json
import math
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from ..outcomes import outcomes_filename, write_outcomes
from ..protocol import (
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    TRAIN_EPOCH_LOSS,
    TRAIN_IMAGES_PER_S,
    ResultsRecord,
    images_metric,
    results_filename,
    top1_metric,
    top5_metric,
)


def git_commit() -> str | None:
    """The commit of the code that ran, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


class RunRecorder(Checkpoint):
    """Writes summary.csv at every epoch end and the results file after a test, on global rank 0 only.

    NOTE: it derives from Checkpoint only so that Lightning calls its on_train_epoch_end after the LightningModule's
    (Lightning runs checkpoint-like callbacks last), when the epoch's loss and throughput have been logged.
    """

    def __init__(self, directory: Path, experiment: str, config_hash: str) -> None:
        self.directory = Path(directory)
        self.experiment = experiment
        self.config_hash = config_hash

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Drop rows of epochs that a resumed run is about to repeat."""
        path = self.directory / SUMMARY_FILE
        if not trainer.is_global_zero or not path.exists():
            return
        with path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) < trainer.current_epoch]
        self._write_rows(path, rows)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics

        def value(key: str) -> float | str:
            return float(metrics[key]) if key in metrics else ""

        row = {
            "epoch": trainer.current_epoch,
            "train_size": pl_module.current_train_size(),
            "lr": pl_module.epoch_lr,
            "train_loss": value(TRAIN_EPOCH_LOSS),
            "val_top1_err": value(top1_metric("val")),
            "val_top5_err": value(top5_metric("val")),
            "train_images_per_s": value(TRAIN_IMAGES_PER_S),
        }
        path = self.directory / SUMMARY_FILE
        rows = []
        if path.exists():
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        self._write_rows(path, [*rows, row])

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        results = asdict(ResultsRecord(
            backbone=pl_module.hparams.backbone,
            variant=pl_module.variant,
            experiment=self.experiment,
            test_protocol=trainer.datamodule.test_views,
            top1_err=round(float(metrics[top1_metric("test")]), 4),
            top5_err=round(float(metrics[top5_metric("test")]), 4),
            num_test_images=int(metrics[images_metric("test")]),
            epochs=pl_module.epochs_completed,
            train_images_per_s=round(pl_module.train_images / pl_module.train_time_s, 2)
            if pl_module.train_time_s > 0 else 0.0,
            wall_time_s=round(pl_module.train_time_s, 1),
            git_commit=git_commit(),
            config_hash=self.config_hash,
            run_dir=str(self.directory),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seed=pl_module.hparams.seed,
        ))
        if any(isinstance(v, float) and math.isnan(v) for v in results.values()):
            raise RuntimeError(f"test produced no numbers ({results}); is the val split empty?")
        outcomes = pl_module.test_outcomes
        if outcomes is None or len(outcomes) != results["num_test_images"]:
            raise RuntimeError(f"the test counted {results['num_test_images']} images but kept outcomes for "
                               f"{'none' if outcomes is None else len(outcomes)} of them")
        # the outcomes first: a results file always has the outcomes of the same test beside it
        write_outcomes(self.directory / outcomes_filename(results["test_protocol"]), outcomes)
        path = self.directory / results_filename(results["test_protocol"])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(path)
        for logger in trainer.loggers:
            experiment: Any = getattr(logger, "experiment", None)
            if hasattr(experiment, "summary"):
                experiment.summary.update(results)

    @staticmethod
    def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
