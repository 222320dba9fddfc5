"""Running real processes from tests with a hard timeout: a hung DDP rank ignores SIGTERM, so kill the group."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest


def run_hard_timeout(command: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run in a new process group, output captured; SIGKILL the whole group and fail the test on timeout."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command[:2])} hung for {timeout} s and was killed:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)
