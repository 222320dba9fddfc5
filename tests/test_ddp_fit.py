"""`spp-cls fit` and `spp-cls test` under real DDP: 2 gloo processes on the CPU, the alternate size schedule."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import cpu_args, errors_of, offline_run_ids, run_hard_timeout, shard_keys

from spp_cls.outcomes import read_outcomes

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
SPP_CLS = str(Path(sys.executable).with_name("spp-cls"))


def test_two_rank_fit_and_test_agree_on_steps_sizes_and_count_every_image_once(demo_shards, tmp_path):
    probe = tmp_path / "probe"
    probe_config = tmp_path / "probe.yaml"
    probe_config.write_text(
        "trainer:\n  callbacks:\n    - class_path: fit_probe.RankProbe\n"
        f"      init_args:\n        out_dir: {probe}\n"
    )
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).parent)}
    args = [*cpu_args(demo_shards, tmp_path / "runs"), "--config", str(probe_config),
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "2",
            "--data.num_workers", "1"]
    for command in ("fit", "test"):
        done = run_hard_timeout([SPP_CLS, command, *args], timeout=300, env=env)
        assert done.returncode == 0, done.stdout[-3000:]
        # no warnings that do not apply: the epoch metrics are reduced by the module, the run directory is shared
        for advice in ("It is recommended to use `self.log(", "exists and is not empty"):
            assert advice not in done.stdout, done.stdout[-3000:]

    records = [json.loads(line) for path in sorted(probe.glob("rank*.jsonl")) for line in path.read_text().splitlines()]
    fit = [r for r in records if r["stage"] == "fit"]
    assert {r["rank"] for r in fit} == {0, 1} and all(r["world"] == 2 for r in fit)
    for epoch, size in ((0, 224), (1, 180)):
        per_rank = [r for r in fit if r["epoch"] == epoch]
        assert len(per_rank) == 2
        # 60 train images, global batch 2 x 8: exactly 3 steps on each rank, the same size on each rank
        assert [r["steps"] for r in per_rank] == [3, 3]
        assert [r["train_size"] for r in per_rank] == [size, size]
        assert [r["val_images"] for r in per_rank] == [15.0, 15.0]  # reduced over ranks: every image once
        # torch's threads sized per rank: this process's usable cores shared by the node's 2 ranks
        assert [r["threads"] for r in per_rank] == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2
    assert sorted(r["test_images"] for r in records if r["stage"] == "test") == [15.0, 15.0]

    run = tmp_path / "runs" / "t" / "zf5-spp_multi"
    assert list((tmp_path / "runs").rglob("results.json")) == [run / "results.json"]
    results = json.loads((run / "results.json").read_text())
    assert results["num_test_images"] == 15 and results["epochs"] == 2
    # what each image got, gathered from both ranks by rank 0: every val image once, agreeing with the results
    outcomes = read_outcomes(run / "outcomes.csv.gz")
    assert sorted(o.key for o in outcomes) == sorted(shard_keys(demo_shards / "val"))
    assert errors_of(outcomes) == (results["top1_err"], results["top5_err"])
    # one wandb run for fit and test, written by rank 0 only
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    assert offline_run_ids(run) == {wandb_id}
