"""A process of a 2-rank `spp-cls fit` (Lightning's `ddp` launcher, gloo on the CPU) killed with SIGKILL: a rank in
the middle of a validation pass, or a loader worker in the middle of an epoch. The run must end in bounded time, exit
non-zero with one line saying what died and leave no process behind. (A rank killed mid-epoch on another node, and the
same command resuming the run: tests/test_multinode.py.)"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import Launched, cpu_args, error_lines, loader_workers_of, probe_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
SPP_CLS = str(Path(sys.executable).with_name("spp-cls"))
RUN_TIMEOUT_S = 240
ENDED_WITHIN_S = 45
RERUN = "run the same command again to resume from the last checkpoint"


def fit_command(shards: Path, tmp_path: Path, hold: dict[str, object], *extra: str) -> list[str]:
    """`spp-cls fit` on 2 ranks with fit_probe.RankProbe (each rank's pid) and fit_probe.HoldOnce(marker `held`,
    ``hold``)."""
    config = probe_config(tmp_path / "probe.yaml", tmp_path / "probe", {"marker": tmp_path / "held", **hold})
    return [SPP_CLS, "fit", *cpu_args(shards, tmp_path / "runs", "--config", str(config), "--trainer.devices", "2",
                                      "--trainer.strategy", "ddp", "--data.num_workers", "1", "--wandb", "false",
                                      *extra)]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).parent)}


def end_of(launched: Launched, killed_at: float) -> tuple[int, str]:
    """The run's exit status and output, once it has ended and left no process behind."""
    [status] = launched.wait(ENDED_WITHIN_S)
    assert time.monotonic() - killed_at < ENDED_WITHIN_S
    deadline = time.monotonic() + 15  # loader workers follow their rank within moments
    while launched.left_behind() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert launched.left_behind() == [], "\n".join(launched.left_behind())
    return status, launched.logs[0].read_text()


def test_a_rank_killed_mid_validation_ends_the_run_with_one_line_and_leaves_its_checkpoint(
        demo_shards: Path, tmp_path: Path) -> None:
    # rank 0 holds the first batch of epoch 1's validation (epoch 0 is checkpointed); rank 1 is validating too
    command = fit_command(demo_shards, tmp_path, {"seconds": 4, "where": "validation", "epoch": 1},
                          "--trainer.max_epochs", "2")
    launched = Launched([(command, env())], tmp_path / "logs-killed")
    wait_for((tmp_path / "held").exists, RUN_TIMEOUT_S, "the held validation batch", launched)
    victim = int((tmp_path / "probe" / "rank1.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    status, output = end_of(launched, time.monotonic())
    assert status != 0 and error_lines(output) == [
        f"spp-cls: error: rank 1 (pid {victim}, on this node) was killed by SIGKILL; {RERUN}"], output[-3000:]
    assert "Traceback" not in output and "Child process with PID" not in output, output[-3000:]
    # what the same command resumes from (it does: tests/test_multinode.py runs it again)
    assert (tmp_path / "runs" / "t" / "zf5-spp_multi" / "last.ckpt").is_file()


def test_a_killed_loader_worker_ends_the_run_with_one_line_naming_it(demo_shards: Path, tmp_path: Path) -> None:
    # batches of 2: 15 steps an epoch, so rank 1 asks its worker for more than it had made before it was killed
    command = fit_command(demo_shards, tmp_path, {"seconds": 6, "where": "train", "epoch": 0},
                          "--trainer.max_epochs", "1", "--data.batch_size", "2")
    launched = Launched([(command, env())], tmp_path / "logs")
    wait_for((tmp_path / "held").exists, RUN_TIMEOUT_S, "the held first step", launched)
    rank1 = int((tmp_path / "probe" / "rank1.pid").read_text())
    wait_for(lambda: bool(loader_workers_of(rank1)), 8, "rank 1's loader worker", launched)  # it may start later
    [worker] = loader_workers_of(rank1)
    os.kill(worker, signal.SIGKILL)
    status, output = end_of(launched, time.monotonic())
    assert status != 0 and error_lines(output) == [
        f"spp-cls: error: a loader worker of rank 1 died (DataLoader worker (pid(s) {worker}) exited unexpectedly); "
        f"{RERUN}"], output[-3000:]
    assert "Traceback" not in output, output[-3000:]
