"""`spp-cls fit` stopped by SIGTERM exits non-zero (143), so a `fit && test` script never tests a half-trained run,
and the run resumes from its last checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cpu_args

pytestmark = pytest.mark.slow
SPP_CLS = str(Path(sys.executable).with_name("spp-cls"))


def test_sigterm_stops_fit_with_exit_143_and_a_resumable_run(demo_shards, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = [SPP_CLS, "fit", *cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "200", "--wandb", "false")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    run = tmp_path / "t" / "zf5-spp_multi"
    deadline = time.monotonic() + 120
    while not (run / "last.ckpt").is_file():
        if time.monotonic() > deadline or process.poll() is not None:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint in time:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("fit did not stop after SIGTERM")
    assert process.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM" in output
    assert not (run / "results.json").exists() and (run / "last.ckpt").is_file()
