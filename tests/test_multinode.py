"""`spp-cls fit` and `test` as 2 nodes x 2 ranks on one machine (gloo on the CPU), through the two launchers that
multi-node users have besides SLURM: torchrun (`--nnodes 2 --node_rank N`) and Lightning's own environment variables
(NODE_RANK, MASTER_ADDR, MASTER_PORT; Lightning starts the node's other rank). Both "nodes" share the run directory,
as on a cluster's shared filesystem.

Data: the test fixtures' 60 train images in 15 shards of 4 and 15 val images in 4 shards; 4 images per rank, so a
global batch of 16 and 3 steps per epoch on every rank.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datamodule_probe import train_digests
from helpers import (
    Launched,
    cpu_args,
    error_lines,
    free_port,
    offline_run_ids,
    probe_config,
    probe_records,
    read_summary,
    shard_keys,
    wait_for,
)

from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.outcomes import read_outcomes

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
SPP_CLS = str(Path(sys.executable).with_name("spp-cls"))
NODES, RANKS_PER_NODE = 2, 2
WORLD = NODES * RANKS_PER_NODE
RUN_TIMEOUT_S = 300
ENDED_WITHIN_S = 60
"""After one rank is killed, every node has ended within this (Lightning's launcher checks its children every 5 s;
gloo errors at once)."""


def node_args(shards: Path, tmp_path: Path, hold: dict[str, object] | None = None, workers: int = 1) -> list[str]:
    """The test config at CPU scale as 2 nodes x 2 ranks, with fit_probe.RankProbe and, given ``hold``, HoldOnce."""
    config = probe_config(tmp_path / "probe.yaml", tmp_path / "probe", hold)
    return cpu_args(shards, tmp_path / "runs", "--config", str(config), "--trainer.num_nodes",
                    str(NODES), "--trainer.devices", str(RANKS_PER_NODE), "--trainer.strategy", "ddp",
                    "--data.batch_size", "4", "--data.num_workers", str(workers), "--trainer.max_epochs", "2")


def base_env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).parent)}


def torchrun_nodes(command: str, args: list[str], port: int) -> list[tuple[list[str], dict[str, str]]]:
    return [([sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--node_rank", str(node),
              "--nproc_per_node", str(RANKS_PER_NODE), "--master_addr", "127.0.0.1", "--master_port", str(port),
              "-m", "spp_cls", command, *args], base_env()) for node in range(NODES)]


def lightning_nodes(command: str, args: list[str], port: int) -> list[tuple[list[str], dict[str, str]]]:
    return [([SPP_CLS, command, *args], {**base_env(), "NODE_RANK": str(node), "MASTER_ADDR": "127.0.0.1",
                                         "MASTER_PORT": str(port)}) for node in range(NODES)]


@pytest.fixture(scope="module")
def torchrun_run(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fit` (2 epochs) then `test`, each as 2 torchrun nodes, loading in the ranks (the other test has loader
    workers); returns the test's folder."""
    tmp_path = tmp_path_factory.mktemp("torchrun")
    for command in ("fit", "test"):
        launched = Launched(torchrun_nodes(command, node_args(demo_shards, tmp_path, workers=0), free_port()),
                            tmp_path / f"logs-{command}")
        assert launched.wait(RUN_TIMEOUT_S) == [0, 0], launched.outputs()
    return tmp_path


def test_torchrun_nodes_split_every_epoch_over_four_ranks_count_each_image_once_and_write_once(
        torchrun_run: Path, demo_shards: Path) -> None:
    seen = probe_records(torchrun_run / "probe")
    fit = [r for r in seen if r["stage"] == "fit"]
    run = torchrun_run / "runs" / "t" / "zf5-spp_multi"
    config = yaml.safe_load((run / "config.yaml").read_text())
    datamodule = ShardDataModule(**{**config["data"], "num_workers": 0}, seed=config["seed_everything"])
    cores = len(os.sched_getaffinity(0))
    for epoch, size in ((0, 224), (1, 180)):
        per_rank = sorted((r for r in fit if r["epoch"] == epoch), key=lambda r: r["rank"])
        assert [r["rank"] for r in per_rank] == list(range(WORLD)) and {r["world"] for r in per_rank} == {WORLD}
        assert [r["steps"] for r in per_rank] == [3] * WORLD  # floor(60 / (4 x 4)) on every rank
        assert {r["train_size"] for r in per_rank} == {size}
        # each rank trained on the images of its own global rank's stream (a rank of node 1 that took its local
        # rank for its place would repeat node 0's images); the streams resample shards, so two ranks may share an
        # image within an epoch, but no two ranks trained on the same set of 12
        for record in per_rank:
            expected = train_digests(datamodule, epoch=epoch, rank=record["rank"], world_size=WORLD)
            assert record["digests"] == [digest for batch in expected for digest in batch]
        assert len({tuple(sorted(r["digests"])) for r in per_rank}) == WORLD
        assert {r["val_images"] for r in per_rank} == {15.0}  # reduced over the 4 ranks: every val image once
        assert {r["threads"] for r in per_rank} == {max(1, cores // RANKS_PER_NODE)}  # sized per rank, not cores
    assert sorted(r["test_images"] for r in seen if r["stage"] == "test") == [15.0] * WORLD

    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["best.ckpt", "last.ckpt", "config.yaml", "summary.csv", "wandb_id.txt", "wandb", "results.json",
         "outcomes.csv.gz"])  # one writer: no second copy of a checkpoint or a results file from the other node
    assert [row["epoch"] for row in read_summary(run)] == ["0", "1"]
    results = json.loads((run / "results.json").read_text())
    assert results["num_test_images"] == 15 and results["epochs"] == 2
    assert sorted(o.key for o in read_outcomes(run / "outcomes.csv.gz")) == sorted(shard_keys(demo_shards / "val"))
    # one wandb run, started by global rank 0 once for fit and once for test; node 1 never starts one
    assert offline_run_ids(run) == {(run / "wandb_id.txt").read_text().strip()}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2
    node1 = "\n".join(log.read_text() for log in torchrun_run.glob("logs-*/node1.log"))
    assert "wandb: offline run" not in node1 and "spp-cls: run directory" not in node1
    logs = "\n".join(log.read_text() for log in torchrun_run.glob("logs-*/node*.log"))
    assert "Traceback" not in logs


def test_a_rank_killed_mid_epoch_ends_every_node_with_one_line_each_and_the_rerun_equals_an_uninterrupted_run(
        torchrun_run: Path, demo_shards: Path, tmp_path: Path) -> None:
    marker = tmp_path / "held"
    args = node_args(demo_shards, tmp_path, {"marker": marker, "seconds": 4, "where": "train", "epoch": 1})
    nodes = lightning_nodes("fit", args, free_port())
    launched = Launched(nodes, tmp_path / "logs-killed")
    # rank 0 holds the first step of epoch 1 (epoch 0 is checkpointed); the others wait in its gradient all-reduce
    wait_for(marker.exists, RUN_TIMEOUT_S, "the held step of epoch 1", launched)
    victim = int((tmp_path / "probe" / "rank3.pid").read_text())  # node 1's second rank, started by Lightning
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    statuses = launched.wait(ENDED_WITHIN_S)
    ended_after = time.monotonic() - killed_at
    assert ended_after < ENDED_WITHIN_S and all(status != 0 for status in statuses), launched.outputs()
    node0, node1 = (log.read_text() for log in launched.logs)
    assert error_lines(node1) == [f"spp-cls: error: rank 3 (pid {victim}, on this node) was killed by SIGKILL; run the "
                                  "same command again to resume from the last checkpoint"], launched.outputs()
    assert len(error_lines(node0)) == 1 and error_lines(node0)[0].startswith(
        "spp-cls: error: rank 0 lost contact with the other processes of the run ("), launched.outputs()
    assert "Traceback" not in node0 + node1
    deadline = time.monotonic() + 15  # loader workers notice their rank is gone within 5 s
    while launched.left_behind() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert launched.left_behind() == [], "\n".join(launched.left_behind())

    rerun = Launched(nodes, tmp_path / "logs-rerun")  # the same command, as a requeued job runs it
    assert rerun.wait(RUN_TIMEOUT_S) == [0, 0], rerun.outputs()
    run = tmp_path / "runs" / "t" / "zf5-spp_multi"
    assert f"resuming from {run}/last.ckpt" in rerun.logs[0].read_text()
    assert [row["epoch"] for row in read_summary(run)] == ["0", "1"]
    reference = torchrun_run / "runs" / "t" / "zf5-spp_multi"
    assert read_summary(run) == [{**row, "train_images_per_s": resumed["train_images_per_s"]}
                                 for row, resumed in zip(read_summary(reference), read_summary(run))]
    resumed, uninterrupted = (torch.load(d / "last.ckpt", weights_only=True) for d in (run, reference))
    assert (resumed["epoch"], resumed["global_step"]) == (uninterrupted["epoch"], uninterrupted["global_step"])
    # equal to float32 rounding (1e-7 relative seen): each start of a process lays out DDP's gradient buckets anew,
    # and gloo's all-reduce adds each element's four values in an order that follows its place in a bucket
    for key, tensor in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], tensor, rtol=1e-5, atol=1e-8,
                                   msg=lambda message, key=key: f"{key}: {message}")
    assert offline_run_ids(run) == {(run / "wandb_id.txt").read_text().strip()}
