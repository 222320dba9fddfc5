"""jobs/slurm/fit.sbatch on a real one-node SLURM cluster (localhost, started by jobs/slurm/local_cluster.sh):
a 2-task DDP run to results.json, and a preemption: SIGUSR1 -> HPC checkpoint -> requeue -> resume -> done."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/table1/zf5_spp_multi.yaml"
# the table config at CPU scale; the script adds data root, runs dir, num_nodes, devices and workers itself
CPU_OVERRIDES = (
    "--trainer.accelerator cpu --trainer.strategy ddp --trainer.precision 32-true --trainer.enable_progress_bar false "
    "--trainer.enable_model_summary false --model.width 0.125 --model.init kaiming --model.channels_last false "
    "--model.reference_batch 8 --model.lr 0.005 --data.batch_size 8 --data.eval_workers 1 --experiment t"
)


@pytest.fixture(scope="module")
def slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (CI runs as root)")
    subprocess.run([str(REPO / "jobs/slurm/local_cluster.sh"), "up"], check=True, timeout=600,
                   stdout=subprocess.DEVNULL)


def job_state(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def submit(tmp_path: Path, demo_shards: Path, *overrides: str) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "SPP_CLS_REPO": str(REPO), "SPP_CLS_DATA": str(demo_shards),
           "SPP_CLS_RUNS": str(tmp_path / "runs"), "SPP_CLS_EXTRA_ARGS": CPU_OVERRIDES}
    command = ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
               "--time=15", f"--output={tmp_path}/job-%j.out", str(REPO / "jobs/slurm/fit.sbatch"), CONFIG, *overrides]
    return subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=REPO).stdout.strip()


def wait_for(job_id: str, states: set[str], timeout: float, log: Path) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state["JobState"] in states:
            return state
        if state["JobState"] == "PENDING" and state.get("Reason") == "BeginTime":
            # a requeued job is held for about two minutes before it may start again; don't wait for that here
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
        time.sleep(0.5)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id} not in {states} after {timeout} s:\n{log.read_text()[-3000:] if log.exists() else ''}")


def test_fit_sbatch_trains_with_two_tasks_and_writes_results(slurm, demo_shards, tmp_path):
    job_id = submit(tmp_path, demo_shards, "--trainer.max_epochs", "2")
    log = tmp_path / f"job-{job_id}.out"
    state = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 240, log)
    assert state["JobState"] == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert "on 1 x 2 tasks, 1 workers each" in text
    assert "Starting with 2 processes" in text or "distributed_backend=gloo" in text
    results = json.loads((tmp_path / "runs" / "t" / "zf5-spp_multi" / "results.json").read_text())
    assert results["num_test_images"] == 15 and results["epochs"] == 2 and results["test_protocol"] == "tenview"


def test_preempted_job_is_requeued_and_resumes_from_its_hpc_checkpoint(slurm, demo_shards, tmp_path):
    epochs = 8
    job_id = submit(tmp_path, demo_shards, "--trainer.max_epochs", str(epochs))
    log = tmp_path / f"job-{job_id}.out"
    run = tmp_path / "runs" / "t" / "zf5-spp_multi"
    deadline = time.monotonic() + 180
    while not ((run / "summary.csv").exists() and len((run / "summary.csv").read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else "no log"
        assert job_state(job_id)["JobState"] in {"PENDING", "RUNNING"}, log.read_text()[-3000:]
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # what --signal=SIGUSR1@90 sends at the limit

    state = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300, log)
    text = log.read_text()
    assert state["JobState"] == "COMPLETED", text[-3000:]
    assert state["Restarts"] == "1"
    assert "Handling auto-requeue signal" in text
    assert re.search(r"resuming from \S+/hpc_ckpt_1\.ckpt", text), text[-3000:]

    assert [p.name for p in (tmp_path / "runs" / "t").iterdir()] == ["zf5-spp_multi"]  # one run directory
    with (run / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))
    assert [int(row["train_size"]) for row in rows] == [224, 180] * (epochs // 2)
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == epochs and results["num_test_images"] == 15
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    assert {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")} == {wandb_id}
