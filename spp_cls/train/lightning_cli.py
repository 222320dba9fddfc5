"""`spp-cls fit|validate|test`: LightningCLI over SppClassifier + ShardDataModule, with the run directory, the
checkpoints, wandb, SLURM requeue and the results file wired in.

Only `spp-cls fit|validate|test` (and the demo) import this module, so Lightning is imported at its top; `spp-cls`
imports it lazily and listens for SLURM's SIGUSR1 before (see `requeue_signal`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
from argparse import ArgumentError
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..data.stream.datamodule import ShardDataModule
from ..protocol import MONITOR, WANDB_PROJECT, run_seed
from . import console
from .lost_process import REPORTED, RERUN, ReportLostProcess, about_lost_process, exit_status, first_line
from .module import SppClassifier
from .rank_threads import RankThreads
from .recorder import RunRecorder
from .requeue import SlurmRequeue
from .rundir import named_checkpoint, resume_checkpoint, run_dir, wandb_run_id


def run_lightning(argv: list[str]) -> int:
    """`spp-cls fit|validate|test ARGS`: the exit status (143 when stopped by SIGTERM)."""
    console.quiet_libraries()

    try:
        build_cli(argv)
    except SIGTERMException:
        # Lightning stops cleanly on SIGTERM but would exit 0: a `fit && test` script must not test a half-trained run
        print("spp-cls: stopped by SIGTERM; run the same command again to resume", file=sys.stderr)
        return 143
    except RuntimeError as error:
        if not about_lost_process(error):
            raise
        if not getattr(error, REPORTED, False):  # met outside the trainer, where ReportLostProcess did not see it
            print(f"spp-cls: error: another process of the run died ({first_line(error)}); {RERUN}", file=sys.stderr)
        return exit_status(error)
    finally:
        _finish_wandb_run()
    return 0


def _finish_wandb_run() -> None:
    """Close this process's wandb run, so a later run in the same process (the demo, tests) starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


# ---- LightningCLI ------------------------------------------------------------------------------------------------
def build_cli(argv: list[str], run: bool = True) -> SppCLI:
    """Parse `fit|validate|test` arguments and run them."""
    return SppCLI(
        SppClassifier,
        ShardDataModule,
        args=None if argv == sys.argv[1:] else argv,  # LightningCLI warns when given the process's own argv
        run=run,
        # a parse error raises (parse_arguments makes it one line) instead of printing the usage text and exiting
        parser_kwargs={"exit_on_error": False, **dict.fromkeys(("fit", "validate", "test"), {"exit_on_error": False})},
        save_config_callback=SaveConfigToRunAndWandb,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        auto_configure_optimizers=False,
    )


PROGRESS_BAR_REFRESH_STEPS = 50
"""Training steps between progress-bar refreshes on a GPU (as log_every_n_steps), unless trainer.callbacks has one."""
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 90,
    # the datamodule builds each epoch's train stream for that epoch (shard order keyed on (seed, epoch))
    "reload_dataloaders_every_n_epochs": 1,
    # the datamodule splits shards over ranks itself; a DistributedSampler cannot wrap an iterable dataset
    "use_distributed_sampler": False,
    "num_sanity_val_steps": 0,
    "benchmark": True,  # cuDNN autotuning; off when trainer.deterministic is true
    "log_every_n_steps": 50,
    "enable_model_summary": False,  # the layer table; `spp-cls models` lists the networks
}


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of what defines the experiment: the model and data sections of the resolved config."""
    relevant = {key: config.get(key) for key in ("model", "data")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def wandb_mode() -> str:
    """The wandb mode of a run: WANDB_MODE when set, else online when the user is logged in (an API key in the
    environment or in ~/.netrc), else offline.

    The mode goes to `wandb.init` itself: WandbLogger's `offline=True` only sets WANDB_MODE in the environment, which
    wandb reads once, at `wandb.setup()` (`console.quiet_libraries` calls it before any logger exists), so a user
    without a login would be asked to log in.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    host = os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1].split("/")[0]
    logged_in = netrc.is_file() and host in netrc.read_text(errors="ignore")
    return "online" if logged_in else "offline"


@contextlib.contextmanager
def _checkpoints_as_data(path: Path | str | None) -> Iterator[None]:
    """Checkpoints are loaded with `weights_only=True`: a shared checkpoint holding anything but tensors and plain
    data (a pickled object could run code when loaded) is refused, in one line, before anything of it runs."""
    try:
        yield
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0] if str(error) else "not a plain-data checkpoint"
        raise CheckpointRefused(f"refused to load checkpoint {path}: it holds more than tensors and plain data "
                                f"({reason})") from None


class CheckpointRefused(ValueError):
    """A checkpoint that torch's `weights_only` loader refuses: one `spp-cls: error:` line, exit status 2."""


class SaveConfigToRunAndWandb(SaveConfigCallback):
    """Writes config.yaml into the run directory and uploads the whole resolved config to wandb."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
                if stage == "fit":  # the run's one line about wandb (test resumes the same run)
                    print(console.wandb_location(logger.experiment), flush=True)


class SppCLI(LightningCLI):
    """LightningCLI with the run directory: where checkpoints, config, summary, results and the wandb run live."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """As LightningCLI, but a bad option or config key is one `error:` line, not the whole usage text (the
        parsers raise instead of printing it: `exit_on_error=False` in `build_cli`)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            print(f"spp-cls: error: {' '.join(line.strip() for line in str(error).splitlines())}", file=sys.stderr)
            raise SystemExit(2) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", default="default",
                            help="experiment name: the wandb group and the folder under runs_dir")
        parser.add_argument("--runs_dir", default="runs", help="where run directories are made")
        parser.add_argument("--wandb", type=bool, default=True,
                            help="log to wandb (offline unless logged in or WANDB_MODE says otherwise)")
        # One seed per run: `--seed_everything N` seeds the weights (Lightning), the data order and crops
        # (data.seed) and the size schedule and augmentation (model.seed), and names the run's directory.
        parser.link_arguments("seed_everything", "model.seed", compute_fn=run_seed, apply_on="parse")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=run_seed, apply_on="parse")
        parser.link_arguments("data", "model.num_classes", compute_fn=lambda data: data.num_classes,
                              apply_on="instantiate")
        parser.link_arguments("data", "model.pixel_statistics", compute_fn=lambda data: data.pixel_statistics,
                              apply_on="instantiate")
        parser.link_arguments("data.test_views", "model.test_views")  # the module scores what the data yields

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the hyperparameters of a `--ckpt_path` file before anything else runs."""
        subcommand = self.config.get("subcommand")
        with _checkpoints_as_data(self.config[subcommand].get("ckpt_path") if subcommand else None):
            super()._parse_ckpt_path()

    @property
    def run_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand

    @property
    def run_dir(self) -> Path:
        return run_dir(self.run_config.runs_dir, self.run_config.experiment, self.model.run_name)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        directory = self.run_dir
        directory.mkdir(parents=True, exist_ok=True)
        trainer_config = self.run_config.as_dict().get("trainer", {})
        kwargs["default_root_dir"] = str(directory)
        if trainer_config.get("deterministic") is True and trainer_config.get("benchmark"):
            # cuDNN autotuning (on by default here) picks kernels by timing, so it would undo the determinism asked
            kwargs["benchmark"] = False
        if SLURMEnvironment.detect() and not trainer_config.get("plugins"):
            kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]  # its requeue can hang DDP
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = self.run_logger(directory)
        kwargs["callbacks"] = self.run_callbacks(directory, trainer_config)
        return super().instantiate_trainer(**kwargs)

    def run_callbacks(self, directory: Path, trainer_config: dict[str, Any]) -> list[Callback]:
        """trainer.callbacks from the config, then the run's: recorder, checkpoints, threads per rank, the line
        about a dead process, requeue, progress bar."""
        extra = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        extra = extra if isinstance(extra, list) else [extra]
        callbacks: list[Callback] = [
            # The epoch's summary.csv row is written before its checkpoints (Lightning keeps the order of
            # checkpoint-like callbacks): a run stopped between the two then repeats that epoch and replaces its
            # row, where the other order would resume past an epoch whose row was never written.
            RunRecorder(directory, self.run_config.experiment, config_hash(self.run_config.as_dict())),
            # best.ckpt by val top-1 error, and last.ckpt after every epoch (the file `fit` resumes from)
            ModelCheckpoint(dirpath=directory, filename="best", monitor=MONITOR, mode="min", save_top_k=1,
                            auto_insert_metric_name=False, enable_version_counter=False,
                            save_on_train_epoch_end=True),
            ModelCheckpoint(dirpath=directory, filename="last", save_top_k=1, enable_version_counter=False,
                            save_on_train_epoch_end=True),
            RankThreads(),
            ReportLostProcess(),
        ]
        if SLURMEnvironment.detect():
            callbacks.append(SlurmRequeue())  # SIGUSR1 in fit, validate or test requeues the job
        on_accelerator = trainer_config.get("accelerator") != "cpu" and torch.cuda.is_available()
        if on_accelerator and trainer_config.get("enable_progress_bar") is not False and not any(
                isinstance(callback, ProgressBar) for callback in extra):
            # Each refresh of the bar reads the logged loss with .item(): a device sync that keeps the CPU from
            # queuing the next step while the GPU works. Lightning's default refreshes every step (kept on CPU).
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        return [*extra, *callbacks]

    def run_logger(self, directory: Path) -> Logger | bool:
        """The run's wandb logger (its id kept in the run directory, so a requeued job continues the same run), or
        False without wandb: then no default logger folders in the run directory either."""
        if not self.run_config.wandb:
            return False
        return WandbLogger(
            project=WANDB_PROJECT,
            group=self.run_config.experiment,
            name=self.model.run_name,
            id=wandb_run_id(directory),
            resume="allow",
            save_dir=str(directory),
            mode=wandb_mode(),
            tags=[self.model.hparams.backbone, self.model.variant, self.run_config.experiment,
                  f"seed{self.model.hparams.seed}"],
            job_type=self.subcommand,
        )

    def fit(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **kwargs: Any) -> None:
        path = named_checkpoint(self.run_dir, ckpt_path) if ckpt_path else resume_checkpoint(self.run_dir)
        rank_zero_info(f"spp-cls: run directory {self.run_dir}; " +
                       (f"resuming from {path}" if path else "starting fresh"))
        with _checkpoints_as_data(path):
            self.trainer.fit(model, datamodule=datamodule, ckpt_path=path, **{**kwargs, "weights_only": True})

    def validate(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **kwargs: Any) -> None:
        path = self._eval_checkpoint(ckpt_path)
        with _checkpoints_as_data(path):
            self.trainer.validate(model, datamodule=datamodule, ckpt_path=path, **{**kwargs, "weights_only": True})

    def test(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **kwargs: Any) -> None:
        path = self._eval_checkpoint(ckpt_path)
        with _checkpoints_as_data(path):
            self.trainer.test(model, datamodule=datamodule, ckpt_path=path, **{**kwargs, "weights_only": True})

    def _eval_checkpoint(self, ckpt_path: str | None) -> Path:
        path = named_checkpoint(self.run_dir, ckpt_path or "last")
        assert path is not None
        rank_zero_info(f"spp-cls: evaluating {path}")
        return path
