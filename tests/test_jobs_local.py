"""jobs/local/table1.sh at CPU scale: two cells in two parallel slots, Ctrl-C that leaves a resumable state, a rerun
that resumes and ends with the table, and a rerun that skips the finished cells."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "local" / "table1.sh"
CELLS = {"zf5_nospp": "zf5-nospp", "zf5_spp_single": "zf5-spp_single"}  # config name -> run directory name
EPOCHS = 10
# the table configs at CPU scale (one process per run: --trainer.devices comes from the script)
CPU_OVERRIDES = (
    "--trainer.accelerator cpu --trainer.strategy auto --trainer.precision 32-true "
    f"--trainer.max_epochs {EPOCHS} --trainer.enable_progress_bar false --trainer.enable_model_summary false "
    "--model.width 0.125 --model.init kaiming --model.channels_last false --model.reference_batch 8 "
    "--data.batch_size 8 --data.num_workers 0 --data.eval_workers 0 --wandb false"
)


def start(env: dict[str, str]) -> subprocess.Popen:
    """The script in its own session, as a terminal would run it in its own process group."""
    return subprocess.Popen([str(SCRIPT), "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def kill_session(session: int) -> None:
    """SIGKILL every process of the session: the script runs its cells in process groups of their own."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def finish(process: subprocess.Popen, timeout: float) -> str:
    """Its output once it exits; SIGKILL the whole session and fail the test if it runs past `timeout`."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"jobs/local/table1.sh ran past {timeout} s and was killed:\n{output[-3000:]}")
    return output


def epochs_in_summary(run: Path) -> list[int]:
    with (run / "summary.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_table1_sh_survives_ctrl_c_resumes_prints_the_table_and_skips_finished_cells(demo_shards, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "SPP_CLS_DATA": str(demo_shards), "SPP_CLS_RUNS": str(runs),
           "SPP_CLS_CELLS": " ".join(CELLS), "SPP_CLS_GPUS_PER_RUN": "1", "SPP_CLS_EXTRA_ARGS": CPU_OVERRIDES}
    run_dirs = [runs / "table1" / name for name in CELLS.values()]

    # 1. both cells train at once (2 "GPUs", 1 per run); Ctrl-C once each has finished an epoch
    process = start(env)
    deadline = time.monotonic() + 120
    while not all((run / "last.ckpt").is_file() for run in run_dirs):
        if time.monotonic() > deadline or process.poll() is not None:
            kill_session(process.pid)
            pytest.fail(f"no checkpoint of both cells in time:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to its foreground process group on Ctrl-C
    output = finish(process, timeout=60)
    assert process.returncode == 130, output
    assert "interrupted: run the same command again to resume" in output
    assert sorted(re.findall(r"zf5_\w+: fit on GPUs (\d)", output)) == ["0", "1"]  # one device each, disjoint
    for run in run_dirs:
        assert not (run / "results.json").exists()  # an interrupted fit is never tested
        assert "spp-cls test" not in (run / "table1.log").read_text()
        assert "Detected KeyboardInterrupt" in (run / "table1.log").read_text()
        assert 1 <= len(epochs_in_summary(run)) < EPOCHS

    # 2. the same command again: both cells resume from their last.ckpt, finish, are tested; then the table
    process = start(env)
    output = finish(process, timeout=240)
    assert process.returncode == 0, output
    for cell, run in zip(CELLS, run_dirs):
        log = (run / "table1.log").read_text()
        assert re.search(rf"resuming from {re.escape(str(run))}/last\.ckpt", log), log[-3000:]
        assert epochs_in_summary(run) == list(range(EPOCHS))  # no epoch lost, none repeated
        results = json.loads((run / "results.json").read_text())
        assert results["epochs"] == EPOCHS and results["num_test_images"] == 15
        assert f"{results['top1_err']:.2f}" in output.split(f"{cell}: done")[-1]  # in the table printed at the end
    assert "35.99" in output and "34.98" in output  # the paper's ZF-5 (a) and (b) beside the measured ones

    # 3. and again: nothing to run, the table all the same
    process = start(env)
    output = finish(process, timeout=120)
    assert process.returncode == 0, output
    assert sorted(re.findall(r"(zf5_\w+): done before \(results.json exists\), skipped", output)) == sorted(CELLS)
    assert " fit on GPUs" not in output and "35.99" in output


def test_the_job_scripts_run_every_cell_once_per_seed_and_skip_each_finished_seed(tmp_path):
    """SPP_CLS_SEEDS as table1.sbatch's array and table1.sh's slots read it: every cell with each seed, the seeds'
    cells one after another; a seed's run is done when its own run directory holds results.json."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SPP_CLS_CELLS": "zf5_nospp zf5_spp_multi", "SPP_CLS_RUNS": str(tmp_path), "SPP_CLS_EXPERIMENT": "t"}

    def bash(line: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"set -euo pipefail; source jobs/slurm/common.sh; {line}"], cwd=REPO,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False)

    assert bash("spp_table_runs").stdout.splitlines() == [
        "configs/table1/zf5_nospp.yaml 0", "configs/table1/zf5_spp_multi.yaml 0"]  # one seed, 0, by default
    assert bash("spp_table_runs", SPP_CLS_SEEDS="0,2").stdout.splitlines() == [
        "configs/table1/zf5_nospp.yaml 0", "configs/table1/zf5_spp_multi.yaml 0",
        "configs/table1/zf5_nospp.yaml 2", "configs/table1/zf5_spp_multi.yaml 2"]
    assert bash("spp_table_runs", SPP_CLS_TABLE="imagenette").stdout.splitlines() == [
        "configs/imagenette/zf5_nospp.yaml 0", "configs/imagenette/zf5_spp_multi.yaml 0"]
    bad = bash("spp_table_runs", SPP_CLS_SEEDS="0,one")
    assert bad.returncode == 2 and "SPP_CLS_SEEDS=0,one: 'one' is not a whole number" in bad.stderr

    (tmp_path / "t" / "zf5-nospp-seed2").mkdir(parents=True)
    (tmp_path / "t" / "zf5-nospp-seed2" / "results.json").write_text("{}")
    done = bash("for s in 0 2; do spp_cell_done configs/table1/zf5_nospp.yaml $s && echo $s done || echo $s todo; done")
    assert done.stdout.splitlines() == ["0 todo", "2 done"], done.stderr
