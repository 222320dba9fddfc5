"""The SIGUSR1 that SLURM sends before a time limit (`--signal=SIGUSR1@90`) or that `scancel --signal=USR1` sends.

Kept apart from the requeue callback (and free of heavy imports) so that the CLI can listen before it spends seconds
importing Lightning and setting up: SIGUSR1's default action would kill the task, and with it the job, unrequeued.
"""
from __future__ import annotations

import os
import signal
from typing import Any

_received = False


def under_slurm() -> bool:
    """Running as a SLURM task that Lightning treats as one (as SLURMEnvironment.detect(): no interactive shell)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def listen() -> None:
    """From now on SIGUSR1 only marks a requeue as asked for; SlurmRequeue acts on it at a batch boundary."""
    signal.signal(signal.SIGUSR1, _on_signal)


def received() -> bool:
    return _received


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    _received = True  # only a flag: no I/O and no collectives inside a signal handler
