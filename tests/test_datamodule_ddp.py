"""ShardDataModule under real 2-process gloo DDP (Lightning Trainer, CPU): tests/datamodule_probe.py runs fit
(2 epochs), validate and test on 2 ranks and each rank dumps what it was fed.

Data: ``demo_shards`` (60 train samples in 15 shards; an odd 15 val samples in 4 shards of 4, 4, 4, 3). With
2 ranks x 2 workers and batches of 3, rank 1 has one batch fewer than rank 0 and must be padded; with 3 workers the
4 val shards feed 2 of them per rank. ``one_val_shard``: the same 15 val images in a single shard, fewer than ranks.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from datamodule_probe import train_digests, val_digests
from helpers import run_hard_timeout

from spp_cls.data.stream.datamodule import ShardDataModule

PROBE = Path(__file__).with_name("datamodule_probe.py")
pytestmark = [pytest.mark.slow, pytest.mark.ddp]


def run_probe(root: Path, out: Path, *args: str, timeout: float) -> None:
    """Runs the probe in its own process group and SIGKILLs the whole group on timeout (a hung rank ignores TERM)."""
    out.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = run_hard_timeout([sys.executable, str(PROBE), str(root), str(out), *args], timeout, env)
    assert done.returncode == 0, done.stdout[-3000:]


def load(out: Path, tag: str, stage: str) -> list[dict]:
    ranks = []
    for rank in (0, 1):
        record = json.loads((out / f"{tag}-{stage}-rank{rank}.json").read_text())
        assert record["world_size"] == 2
        ranks.append(record["batches"])
    return ranks


def assert_exact_evaluation(ranks: list[list[dict]], expected: Counter[str], batches_per_rank: int) -> None:
    assert [len(batches) for batches in ranks] == [batches_per_rank, batches_per_rank]
    seen = Counter(digest for batches in ranks for batch in batches for digest in batch["digests"])
    assert seen == expected and sum(seen.values()) == 15


@pytest.fixture(scope="module")
def ddp_run(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "out"
    run_probe(demo_shards, out, "--strategy", "ddp", "--workers", "0", "2", "3", timeout=360)
    return out


def probe_datamodule(root: Path, workers: int, test_views: str = "tenview") -> ShardDataModule:
    """The datamodule exactly as the probe builds it."""
    return ShardDataModule(str(root), batch_size=4, num_workers=workers, shuffle_buffer=8, eval_batch_size=3,
                           test_views=test_views, seed=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_ddp_training_gives_both_ranks_equal_full_batches_of_different_reproducible_samples(
        ddp_run: Path, demo_shards: Path, workers: int) -> None:
    ranks = load(ddp_run, f"ddp-w{workers}", "train")
    for batches in ranks:
        assert Counter(batch["epoch"] for batch in batches) == {0: 7, 1: 7}  # floor(60 / (4 x 2)) per epoch
        assert all(batch["shape"] == [4, 3, 224, 224] for batch in batches)
        assert all(batch["dtypes"][:2] == ["torch.uint8", "torch.int64"] for batch in batches)
    per_epoch = [{epoch: [b["digests"] for b in batches if b["epoch"] == epoch] for epoch in (0, 1)}
                 for batches in ranks]
    assert per_epoch[0][0] != per_epoch[1][0]
    assert per_epoch[0][0] != per_epoch[0][1]
    datamodule = probe_datamodule(demo_shards, workers)
    for rank in (0, 1):
        assert per_epoch[rank][1] == train_digests(datamodule, epoch=1, rank=rank, world_size=2)


@pytest.mark.parametrize("workers", [0, 2, 3])  # 3: more ranks x eval workers than val shards
def test_ddp_validation_counts_each_image_exactly_once(ddp_run: Path, demo_shards: Path, workers: int) -> None:
    ranks = load(ddp_run, f"ddp-w{workers}", "validate")
    batches = probe_datamodule(demo_shards, workers).eval_batches_per_rank("validate", world_size=2)
    assert_exact_evaluation(ranks, val_digests(demo_shards), batches)
    if workers == 2:  # rank 1 reads 7 images in 3 real batches, then one masked batch
        assert [batch["size"] for batch in ranks[1]][-1] == 1 and ranks[1][-1]["digests"] == []


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_ddp_tenview_test_counts_each_image_exactly_once(ddp_run: Path, demo_shards: Path, workers: int) -> None:
    ranks = load(ddp_run, f"ddp-w{workers}", "test")
    assert all(batch["shape"][1:] == [10, 3, 224, 224] for batches in ranks for batch in batches)
    batches = probe_datamodule(demo_shards, workers).eval_batches_per_rank("test", world_size=2)
    assert_exact_evaluation(ranks, val_digests(demo_shards, "tenview"), batches)


def test_ddp_spawn_validation_with_workers_counts_each_image_exactly_once(
        demo_shards: Path, tmp_path: Path) -> None:
    # the launcher under which webdataset's splitters, reading rank and world size from environment variables that
    # ddp_spawn does not set, would give every rank all the data
    out = tmp_path / "out"
    run_probe(demo_shards, out, "--strategy", "ddp_spawn", "--workers", "2", "--stages", "validate", timeout=240)
    batches = probe_datamodule(demo_shards, 2).eval_batches_per_rank("validate", world_size=2)
    assert_exact_evaluation(load(out, "ddp_spawn-w2", "validate"), val_digests(demo_shards), batches)


def test_ddp_evaluation_of_fewer_val_shards_than_ranks_splits_the_shard_and_counts_each_image_once(
        one_val_shard: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_probe(one_val_shard, out, "--strategy", "ddp", "--workers", "2", "--stages", "validate", "test", timeout=240)
    datamodule = probe_datamodule(one_val_shard, 2)
    for stage, protocol in (("validate", "center"), ("test", "tenview")):
        ranks = load(out, "ddp-w2", stage)
        assert_exact_evaluation(ranks, val_digests(one_val_shard, protocol),
                                datamodule.eval_batches_per_rank(stage, world_size=2))
        assert [sum(len(batch["digests"]) for batch in batches) for batches in ranks] == [7, 8]  # a range each
