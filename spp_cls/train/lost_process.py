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
import threading
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


def exit_status(error: BaseException) -> int:
    """The exit status of a rank that met ``error`` (:func:`about_lost_process`): 1 when its own loader worker died,
    ``LOST_CONTACT`` when another process of the run did."""
    return 1 if WORKER_LOST in first_line(error) else LOST_CONTACT


def lost_process(error: BaseException, trainer: Any) -> str | None:
    """The line to print about the process whose death raised ``error`` in this rank, "" when another process of this
    node prints it, or None when ``error`` is not about a dead process."""
    if not about_lost_process(error):
        return None
    message = first_line(error)
    if WORKER_LOST in message:
        return f"a loader worker of rank {trainer.global_rank} died ({message}); {RERUN}"
    ended = ended_children(trainer)
    killed = [phrase for status, phrase in ended if status < 0]
    if killed:
        return f"{', '.join(killed)}; {RERUN}"
    if any(status != LOST_CONTACT for status, _ in ended) or trainer.local_rank != 0:
        return ""  # a rank of this node that failed on its own said why; or this node's local rank 0 says it
    reason = message.split("]", 1)[-1].split(". This is typically")[0].strip()
    return (f"rank {trainer.global_rank} lost contact with the other processes of the run ({reason}): a rank of this "
            f"or another node died; {RERUN}")


def launched_ranks(trainer: Any) -> list[tuple[int, subprocess.Popen]]:
    """The ranks this process launched on its node (Lightning's `ddp` launcher), with their global rank."""
    children = getattr(trainer.strategy.launcher, "procs", None) or []
    first = trainer.node_rank * trainer.num_devices
    return [(first + local_rank, child) for local_rank, child in enumerate(children, start=1)]


def rank_ended(rank: int, pid: int, status: int) -> str:
    """A phrase naming a rank of this node that ended with ``status`` (negative: the signal that killed it)."""
    how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
    return f"rank {rank} (pid {pid}, on this node) {how}"


def ended_children(trainer: Any) -> list[tuple[int, str]]:
    """The launched ranks (:func:`launched_ranks`) that have ended with a non-zero status, as (status, phrase)."""
    deadline = time.monotonic() + CHILD_EXIT_WAIT_S
    ended = []
    for rank, child in launched_ranks(trainer):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(max(0.0, deadline - time.monotonic()))
        if child.returncode:
            ended.append((child.returncode, rank_ended(rank, child.pid, child.returncode)))
    return ended


def wait_for_launcher(timeout: float = LAUNCHER_WAIT_S) -> None:
    """Waits until the process that launched this one has ended (its pid is no longer our parent), at most
    ``timeout``."""
    launcher, deadline = os.getppid(), time.monotonic() + timeout
    while os.getppid() == launcher and time.monotonic() < deadline:
        time.sleep(0.1)


class ReportLostProcess(Callback):
    """Prints the line of :func:`lost_process`, once per process, as soon as this process learns of the death.

    Lightning's `ddp` launcher runs an observer that SIGKILLs the launcher and its ranks within 5 s of a launched
    rank's non-zero exit, which can stop the launcher before its own next collective fails (in a long step or
    validation). So the launcher watches each rank it launched and names one killed by a signal the moment it dies;
    and a launched rank that only lost contact waits for its launcher to end before it exits, so that its exit does
    not set off the observer before the launcher has said what it knows.
    """

    def __init__(self) -> None:
        self._said = False
        self._lock = threading.Lock()
        self._watched: set[int] = set()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for rank, child in launched_ranks(trainer):
            if child.pid not in self._watched:
                self._watched.add(child.pid)
                threading.Thread(target=self._watch, args=(rank, child.pid), name=f"watch-rank-{rank}",
                                 daemon=True).start()

    def _watch(self, rank: int, pid: int) -> None:
        try:  # WNOWAIT: leaves the child to be reaped by its Popen (Lightning's observer polls it)
            ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return  # already reaped: the run is over
        if ended is not None and ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            self._say(f"{rank_ended(rank, pid, -ended.si_status)}; {RERUN}")

    def _say(self, line: str) -> None:
        with self._lock:
            if not self._said:
                self._said = True
                print(f"spp-cls: error: {line}", file=sys.stderr, flush=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        line = lost_process(exception, trainer)
        if line is None:
            return
        if line:
            self._say(line)
        elif trainer.local_rank != 0 and type(trainer.strategy.cluster_environment) is LightningEnvironment:
            wait_for_launcher()
        setattr(exception, REPORTED, True)
