"""When another process of a run dies (a rank killed by the OOM killer or a node failure, a loader worker), the ranks
still alive meet an error in their next collective or batch: one line per node says what died, instead of a
traceback on every rank, and the command exits non-zero so that a job script stops; the same command then resumes
from the last checkpoint.

Which process prints it:
- a rank whose own loader worker died says so, and exits 1;
- a rank that launched others on its node (Lightning's `ddp` launcher, local rank 0) names the one killed by a signal,
  and says nothing when one of them failed on its own (an exit status other than ``LOST_CONTACT``: that rank printed
  why);
- otherwise local rank 0 of each node says it lost contact with the others, so that every node's log has one line.
Every rank that lost contact with a dead process exits ``LOST_CONTACT``. Under `torchrun` and `srun` the launcher's
own report also names the process that died.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from pytorch_lightning import Callback
from pytorch_lightning.plugins.environments import LightningEnvironment

PEER_LOST = (
    "Connection closed by peer",  # gloo
    "Connection reset by peer",  # gloo, the TCP store
    "Broken pipe",
    "NCCL communicator was aborted",
    "remote process exited",  # NCCL
)
"""Phrases of the errors that torch.distributed raises when a peer process is gone."""
WORKER_LOST = "DataLoader worker (pid"
RERUN = "run the same command again to resume from the last checkpoint"
LOST_CONTACT = 75
"""Exit status of a rank that only lost contact with a dead process (sysexits' EX_TEMPFAIL: run it again)."""
CHILD_EXIT_WAIT_S = 2.0
"""How long a launcher waits for a child whose connection just closed to finish exiting, to read its status."""
LAUNCHER_WAIT_S = 60.0
"""How long a rank started by Lightning's launcher waits for it to end (see :class:`ReportLostProcess`)."""


REPORTED = "spp_cls_reported"
"""Set on an error once its line was printed (or left to another process of the node)."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def about_lost_process(error: BaseException) -> bool:
    """Whether ``error`` is what a rank meets when another process of the run died."""
    message = first_line(error)
    return isinstance(error, RuntimeError) and (WORKER_LOST in message or any(p in message for p in PEER_LOST))


def lost_process(error: BaseException, trainer: Any) -> str | None:
    """The line to print about the process whose death raised ``error`` in this rank, "" when another process of this
    node prints it, or None when ``error`` is not about a dead process."""
    if not about_lost_process(error):
        return None
    message = first_line(error)
    if WORKER_LOST in message:
        return f"a loader worker of rank {trainer.global_rank} died ({message}); {RERUN}"
    children = ended_children(trainer)
    killed = [phrase for status, phrase in children if status < 0]
    if killed:
        return f"{', '.join(killed)}; {RERUN}"
    if any(status != LOST_CONTACT for status, _ in children) or trainer.local_rank != 0:
        return ""  # a rank of this node that failed on its own said why; or this node's local rank 0 says it
    reason = message.split("]", 1)[-1].split(". This is typically")[0].strip()
    return (f"rank {trainer.global_rank} lost contact with the other processes of the run ({reason}): a rank of this "
            f"or another node died; {RERUN}")


def ended_children(trainer: Any) -> list[tuple[int, str]]:
    """The ranks this process launched on its node (Lightning's `ddp`) that have ended with a non-zero status: the
    status (negative: the signal that killed it) and a phrase naming the rank."""
    children = getattr(trainer.strategy.launcher, "procs", None) or []
    deadline = time.monotonic() + CHILD_EXIT_WAIT_S
    ended = []
    for local_rank, child in enumerate(children, start=1):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(max(0.0, deadline - time.monotonic()))
        status = child.returncode
        if status:
            rank = trainer.node_rank * trainer.num_devices + local_rank
            how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
            ended.append((status, f"rank {rank} (pid {child.pid}, on this node) {how}"))
    return ended


def wait_for_launcher(timeout: float = LAUNCHER_WAIT_S) -> None:
    """Waits until the process that launched this one has ended (its pid is no longer our parent), at most
    ``timeout``."""
    launcher, deadline = os.getppid(), time.monotonic() + timeout
    while os.getppid() == launcher and time.monotonic() < deadline:
        time.sleep(0.1)


class ReportLostProcess(Callback):
    """Prints the line of :func:`lost_process` as soon as the error reaches the trainer, before its teardown (which
    may wait for wandb).

    A rank that Lightning's `ddp` launcher started, and that only lost contact, waits for its launcher to end before
    it exits: the launcher's process observer SIGKILLs the launcher within seconds of a child's exit, which would stop
    it before it could say what died (it may be in the middle of a step that has not reached a collective yet).
    """

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        line = lost_process(exception, trainer)
        if line is None:
            return
        if line:
            print(f"spp-cls: error: {line}", file=sys.stderr, flush=True)
        elif trainer.local_rank != 0 and type(trainer.strategy.cluster_environment) is LightningEnvironment:
            wait_for_launcher()
        setattr(exception, REPORTED, True)
