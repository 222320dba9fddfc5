"""Running real processes from tests with a hard timeout: a hung DDP rank ignores SIGTERM, so kill the group."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

# what a hung run shows of itself: the end of its output, which holds the stacks of all its Python processes
HUNG_OUTPUT_CHARS = 20_000


def run_hard_timeout(command: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run in a new process group, output captured; on timeout fail the test with every process's Python stacks.

    The processes (ranks, loader workers: all inherit the environment) run with PYTHONFAULTHANDLER=1, so the SIGABRT
    sent to the group on timeout makes each of them print the traceback of every thread; SIGKILL follows.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**env, "PYTHONFAULTHANDLER": "1"}, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        with_stacks = output[-HUNG_OUTPUT_CHARS:]
        pytest.fail(f"{' '.join(command[:2])} hung for {timeout} s; its stacks, then killed:\n{with_stacks}")
    return subprocess.CompletedProcess(command, process.returncode, output)
