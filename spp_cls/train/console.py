"""What a run prints: which cell runs, the progress bar, the run's own lines and real warnings; not the messages of
Lightning and wandb that say nothing to a user of spp-cls. They are silenced here, each by its text, in one place.

`SPP_CLS_VERBOSE=1` (or `spp-cls demo --verbose`) shows everything Lightning and wandb print.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

VERBOSE_VARIABLE = "SPP_CLS_VERBOSE"

QUIET_WARNINGS: tuple[str, ...] = (
    # LightningCLI run from Python (the demo, tests) while sys.argv holds the outer command
    r"LightningCLI's args parameter is intended to run from within Python",
    # a deprecation inside Lightning's own pytree helper, nothing a user can act on
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # the run directory holds the checkpoints beside the run's other files by design, and `fit` resumes from it
    r"Checkpoint directory .* exists and is not empty",
    # any machine with SLURM installed (every login node): outside an allocation a run is not meant for srun, and
    # the repo's job scripts launch with srun
    r"The `srun` command is available on your system but is not used",
    # `spp-cls bench` times training steps only, in a Trainer with validation off
    r"You defined a `validation_step` but have no `val_dataloader`",
)
"""Warnings (by the start of their message) that a user of spp-cls can do nothing about: the one list, which
`quiet_libraries` and `spp-cls bench`'s harness run install. Where a library has a switch for a message (the layer
table: `enable_model_summary`; the sync_dist advice: logging with `sync_dist`), the switch is used instead."""

QUIET_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "pytorch_lightning.utilities.rank_zero": (
        r"(GPU|TPU|HPU) available: ",  # the device line; the run's own line names the device it trains on
        r"💡 Tip: ",  # advertising for Lightning's cloud products
        r"`Trainer\.fit` stopped: `max_epochs=",  # the normal end of a run
        # the run's own line says which checkpoint it resumes from or evaluates
        r"Restoring states from the checkpoint path at ",
        r"(Restored all states|Loaded model weights) from the checkpoint at ",
    ),
    "lightning_fabric.utilities.seed": (r"Seed set to ",),
    "pytorch_lightning.accelerators.cuda": (r"LOCAL_RANK: ",),
    # the launcher's observer, before it kills the node's ranks: a rank that died said why, or the launcher's
    # ReportLostProcess names the one a signal killed
    "lightning_fabric.strategies.launchers.subprocess_script": (r"\[rank: \d+\] Child process with PID ",),
}
"""Lightning's log records to drop, by logger and by the start of their message."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_libraries() -> None:
    """Install the filters above for this process (its DDP ranks and loader workers inherit nothing: they print
    nothing of the kind), unless verbose output is asked for. Idempotent."""
    if verbose():
        return
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # wandb's banner, warnings and end-of-run summary (about 60 lines a run; DDP ranks inherit the variable);
    # `wandb_location` prints the one line a user needs instead
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb  # its settings apply to its terminal output only from wandb.setup(), which must come first

    wandb.setup()
    for name, patterns in QUIET_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropMessages) for existing in logger.filters):
            logger.addFilter(_DropMessages(patterns))


def wandb_location(run: Any) -> str:
    """One line saying where a wandb run lives: its URL, or its offline folder and how to upload it."""
    if getattr(run, "offline", False) or not getattr(run, "url", None):
        folder = Path(run.dir).parent
        return f"wandb: offline run in {folder} (`wandb sync` uploads it)"
    return f"wandb: {run.url}"
