"""The SLURM job scripts on a real one-node SLURM cluster (localhost, brought up by jobs/slurm/local_cluster.sh):
the table1 array submitted with the SPP_CLS_* shape, a 2-task fit.sbatch preempted by SIGUSR1 -> HPC checkpoint ->
requeue -> resume -> done, the same signal after the last training batch, and the batch shell forwarding SIGUSR1 to
its step."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    CPU_OVERRIDES,
    REPO,
    job_records,
    local_slurm_cluster,
    offline_run_ids,
    probe_config,
    script_env,
    submit_fit_sbatch,
    tail_of_logs,
    wait_until_done,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A SLURM cluster that answers: one already running, or one brought up (and down afterwards) by the script."""
    with local_slurm_cluster(nodes=1):
        yield


def wait_while_running(job_id: str, reached: Callable[[], bool], what: str, timeout: float, logs: Path) -> None:
    """Poll until `reached()`; scancel the job and fail if it ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not reached():
        state = job_records(job_id)[0]["JobState"]
        if time.monotonic() > deadline or state not in {"PENDING", "CONFIGURING", "RUNNING"}:
            subprocess.run(["scancel", job_id], check=False, timeout=30)
            pytest.fail(f"job {job_id} ({state}) did not reach {what} in time:\n{tail_of_logs(logs)}")
        time.sleep(0.2)


def test_table1_array_submits_itself_with_the_shape_variables_and_fills_the_table(slurm, demo_shards, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    env = script_env(
        demo_shards, tmp_path, SPP_CLS_CELLS="zf5_nospp zf5_spp_single", SPP_CLS_EXPERIMENT="t",
        # two array tasks of 1 node x 1 task x 1 CPU, no GPU asked for: both fit on this 2-CPU node at once
        SPP_CLS_GPUS_PER_NODE="1", SPP_CLS_CPUS_PER_GPU="1", SPP_CLS_NO_GPU="1",
        SPP_CLS_SBATCH_ARGS=f"--time=10 --output={logs}/%x-%A_%a.out",
        SPP_CLS_EXTRA_ARGS=f"{CPU_OVERRIDES} --trainer.strategy auto --trainer.max_epochs 2 --wandb false",
    )
    # run directly (not through sbatch), from elsewhere than the checkout: it submits itself
    submitted = subprocess.run([str(REPO / "jobs/slurm/table1.sbatch")], check=False, capture_output=True, text=True,
                               env=env, cwd=tmp_path, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.fullmatch(r"Submitted batch job (\d+)\n", submitted.stdout).group(1)

    records = wait_until_done(job_id, timeout=240, logs=logs)
    assert sorted(r["ArrayTaskId"] for r in records) == ["0", "1"], records
    for record in records:
        assert record["JobState"] == "COMPLETED", tail_of_logs(logs)
        # the #SBATCH lines that preemption needs, and the shape from the variables (sbatch's options over them)
        assert record["Requeue"] == "1" and record["NumNodes"] == "1" and record["CPUs/Task"] == "1"
        assert record["NtasksPerN:B:S:C"].startswith("1:")
    for index, (cell, run_name) in enumerate((("zf5_nospp", "zf5-nospp"), ("zf5_spp_single", "zf5-spp_single"))):
        log = (logs / f"spp-cls-table1-{job_id}_{index}.out").read_text()
        assert f"configs/table1/{cell}.yaml on 1 node(s) x 1 task(s), 1 CPU(s) and 0 loader worker(s)" in log
        results = json.loads((tmp_path / "runs" / "t" / run_name / "results.json").read_text())
        assert results["epochs"] == 2 and results["num_test_images"] == 15 and results["experiment"] == "t"

    table = subprocess.run(["spp-cls", "table", str(tmp_path / "runs" / "t")], capture_output=True, text=True,
                           env=env, check=True, timeout=60).stdout
    for run_name in ("zf5-nospp", "zf5-spp_single"):
        measured = json.loads((tmp_path / "runs" / "t" / run_name / "results.json").read_text())["top1_err"]
        assert f"{measured:.2f}" in table


def test_fit_sbatch_preempted_by_sigusr1_requeues_and_resumes_from_its_hpc_checkpoint(slurm, demo_shards, tmp_path):
    epochs = 10
    env = script_env(demo_shards, tmp_path, SPP_CLS_EXPERIMENT="t")
    job_id = submit_fit_sbatch(env, tmp_path, "--trainer.max_epochs", str(epochs))
    log = tmp_path / f"fit-{job_id}.out"
    run = tmp_path / "runs" / "t" / "zf5-spp_multi"

    # preempt it once the first epoch is done (the time limit's SIGUSR1 goes to the step's tasks, as this does)
    summary = run / "summary.csv"
    wait_while_running(job_id, lambda: summary.is_file() and len(summary.read_text().splitlines()) >= 2,
                       "the end of its first epoch", timeout=120, logs=tmp_path)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while job_records(job_id)[0]["Restarts"] == "0":
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False, timeout=30)
            pytest.fail(f"job {job_id} was not requeued 30 s after SIGUSR1; cancelled:\n{tail_of_logs(tmp_path)}")
        time.sleep(0.2)

    record = wait_until_done(job_id, timeout=240, logs=tmp_path)[0]
    text = log.read_text()
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", text[-3000:]
    assert "spp-cls: SIGUSR1: saved" in text
    assert text.count("spp-cls: run directory") == 2  # two starts of fit, the second one resuming:
    assert re.search(rf"resuming from {re.escape(str(run))}/hpc_ckpt_1\.ckpt", text), text[-3000:]

    assert [p.name for p in (tmp_path / "runs" / "t").iterdir()] == ["zf5-spp_multi"]  # one run directory
    with (run / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))  # to the configured end, no epoch twice
    assert [int(row["train_size"]) for row in rows] == [224, 180] * (epochs // 2)
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == epochs and results["num_test_images"] == 15
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    assert offline_run_ids(run) == {wandb_id}  # one wandb run


@pytest.mark.parametrize(("hold", "requeue_note", "evaluations"), [
    ("test", "during test, nothing to save", 2),
    ("final_validation", "after the last training batch, nothing to save", 1),
])
def test_fit_sbatch_signalled_after_training_requeues_and_still_tests(slurm, demo_shards, tmp_path, hold,
                                                                      requeue_note, evaluations):
    """A time limit that falls after the last training batch (in the final validation of `fit`, or in the 10-view
    test) requeues the job too: the requeued `fit` finds training done and the test runs to the end."""
    marker = tmp_path / "held"
    config = probe_config(tmp_path / "probe.yaml", hold={"marker": marker, "seconds": 5, "where": hold})
    env = script_env(demo_shards, tmp_path, SPP_CLS_EXPERIMENT="t", PYTHONPATH=str(Path(__file__).parent))
    job_id = submit_fit_sbatch(env, tmp_path, "--trainer.max_epochs", "1", "--config", str(config))
    run = tmp_path / "runs" / "t" / "zf5-spp_multi"

    # signal it inside the batch that the probe holds for 5 s
    wait_while_running(job_id, marker.exists, f"the held {hold} batch", timeout=180, logs=tmp_path)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)

    record = wait_until_done(job_id, timeout=240, logs=tmp_path)[0]
    text = (tmp_path / f"fit-{job_id}.out").read_text()
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", text[-3000:]
    assert text.count(f"spp-cls: SIGUSR1: {requeue_note}") == 1
    # the second start: fit resumes from the final last.ckpt and trains nothing, then the test runs to the end
    assert text.count("spp-cls: run directory") == 2
    assert re.search(rf"resuming from {re.escape(str(run))}/last\.ckpt", text), text[-3000:]
    assert text.count("spp-cls: evaluating") == evaluations
    assert [row["epoch"] for row in csv.DictReader((run / "summary.csv").open())] == ["0"]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 1 and results["num_test_images"] == 15
    assert offline_run_ids(run) == {(run / "wandb_id.txt").read_text().strip()}  # one wandb run


def test_batch_shell_forwards_sigusr1_to_the_running_step(slurm, tmp_path):
    """`scancel --signal=USR1 --batch` (and --signal=B:USR1@90) signal only the batch shell: spp_step passes it on."""
    probe = tmp_path / "probe.sbatch"
    probe.write_text(
        "#!/bin/bash\nset -euo pipefail\n"
        f"source {REPO}/jobs/slurm/common.sh\nCPUS_PER_TASK=1\n"
        f"spp_step {sys.executable} -c \"import signal, time; signal.signal(signal.SIGUSR1, lambda *_: "
        "print('step got SIGUSR1', flush=True)); open('started', 'w').close(); time.sleep(4)\"\n"
        "echo 'batch shell went on'\n"
    )
    job_id = subprocess.run(["sbatch", "--parsable", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=2",
                             f"--output={tmp_path}/probe-%j.out", str(probe)], capture_output=True, text=True,
                            check=True, cwd=tmp_path, timeout=60).stdout.strip()
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, tail_of_logs(tmp_path)
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=30)
    record = wait_until_done(job_id, timeout=60, logs=tmp_path)[0]
    text = (tmp_path / f"probe-{job_id}.out").read_text()
    assert record["JobState"] == "COMPLETED", text  # without the trap, the batch shell dies of it: FAILED
    assert "step got SIGUSR1" in text and "batch shell went on" in text
