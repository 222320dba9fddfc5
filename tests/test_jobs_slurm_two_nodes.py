"""fit.sbatch on a real two-node allocation: a SLURM cluster of two slurmd on localhost (jobs/slurm/local_cluster.sh
up --nodes 2), 2 nodes x 2 tasks, DDP over the 4 ranks, then the 10-view test."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    local_slurm_cluster,
    offline_run_ids,
    probe_config,
    probe_records,
    script_env,
    submit_fit_sbatch,
    wait_until_done,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm_two_nodes() -> Iterator[None]:
    """A SLURM cluster of two nodes that answers: one already running, or one brought up (and down afterwards)."""
    with local_slurm_cluster(nodes=2):
        yield


def test_fit_sbatch_on_two_nodes_trains_one_ddp_run_of_four_ranks(slurm_two_nodes, demo_shards, tmp_path):
    probe = tmp_path / "probe"
    config = probe_config(tmp_path / "probe.yaml", probe)
    # the local nodes' names mean nothing outside SLURM: point Lightning at the first node's address itself
    env = script_env(demo_shards, tmp_path, SPP_CLS_EXPERIMENT="t", PYTHONPATH=str(Path(__file__).parent),
                     MASTER_ADDR="127.0.0.1")
    job_id = submit_fit_sbatch(env, tmp_path, "--trainer.max_epochs", "2", "--config", str(config), nodes=2)

    record = wait_until_done(job_id, timeout=180, logs=tmp_path)[0]
    text = (tmp_path / f"fit-{job_id}.out").read_text()
    assert record["JobState"] == "COMPLETED", text[-3000:]
    assert record["NumNodes"] == "2" and record["NumTasks"] == "4" and record["NodeList"] == "node[1-2]"
    assert "zf5_spp_multi.yaml on 2 node(s) x 2 task(s), 1 CPU(s) and 0 loader worker(s) per task, nodes node[1-2]" \
        in text

    records = probe_records(probe)
    # Lightning saw one world of 4 ranks on 2 nodes, ranks 0-1 on node1 and 2-3 on node2, in fit and in test
    assert {(r["rank"], r["world"], r["num_nodes"], r["node_rank"], r["node"]) for r in records} == {
        (0, 4, 2, 0, "node1"), (1, 4, 2, 0, "node1"), (2, 4, 2, 1, "node2"), (3, 4, 2, 1, "node2")}
    fit = [r for r in records if r["stage"] == "fit"]
    for epoch, size in ((0, 224), (1, 180)):
        per_rank = sorted((r for r in fit if r["epoch"] == epoch), key=lambda r: r["rank"])
        # 60 train images, global batch 4 x 8: exactly 1 step on each rank, the same size on each rank
        assert [r["steps"] for r in per_rank] == [1, 1, 1, 1]
        assert [r["train_size"] for r in per_rank] == [size] * 4
        assert [r["val_images"] for r in per_rank] == [15.0] * 4  # reduced over ranks: every image once
        assert [r["threads"] for r in per_rank] == [1] * 4  # torch's threads: the task's --cpus-per-task
    assert [r["test_images"] for r in records if r["stage"] == "test"] == [15.0] * 4

    run = tmp_path / "runs" / "t" / "zf5-spp_multi"
    assert list((tmp_path / "runs" / "t").iterdir()) == [run]  # one run directory
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and results["num_test_images"] == 15
    assert offline_run_ids(run) == {(run / "wandb_id.txt").read_text().strip()}  # one wandb run
