"""ShardDataModule in one process: manifests, batch counts, seeds, exact evaluation for simulated ranks, test views,
and a real Trainer feeding each epoch its own stream. The 2-process runs are in test_datamodule_ddp.py.

Data: the ``demo_shards`` fixture (60 train samples in 15 shards of 4; 15 val samples in 4 shards of 4, 4, 4, 3).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from datamodule_probe import RecordingModule, make_trainer, sample_digest, train_digests, val_digests

from spp_cls.data.stream.corrupt import TooManyCorruptSamples
from spp_cls.data.stream.datamodule import ShardDataModule


def test_a_missing_root_fails_naming_the_path_and_the_shards_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nowhere' / 'train'}.*spp-cls shards --src .* --out"):
        ShardDataModule(str(tmp_path / "nowhere"))


def test_classes_statistics_and_expected_count_come_from_the_manifests(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), num_workers=0)
    assert datamodule.num_classes == 5
    statistics = datamodule.pixel_statistics
    assert len(statistics.mean_rgb) == 3 and all(0 < value < 255 for value in statistics.mean_rgb)
    assert list(statistics.pca_eigval) == sorted(statistics.pca_eigval, reverse=True)
    assert len(statistics.pca_eigvec) == 3 and all(len(row) == 3 for row in statistics.pca_eigvec)
    assert datamodule.expected_count("validate") == datamodule.expected_count("test") == 15


@pytest.mark.parametrize(("world_size", "batch_size", "expected"), [(1, 4, 15), (2, 4, 7), (8, 2, 3), (8, 7, 1)])
def test_train_batches_per_rank_is_total_over_global_batch(demo_shards: Path, world_size: int, batch_size: int,
                                                           expected: int) -> None:
    for workers in (0, 4, 8):
        datamodule = ShardDataModule(str(demo_shards), batch_size=batch_size, num_workers=workers)
        assert datamodule.train_batches_per_rank(world_size) == expected


def test_a_global_batch_larger_than_the_train_set_is_refused(demo_shards: Path) -> None:
    with pytest.raises(ValueError, match="60 training samples .* no full global batch of 64"):
        ShardDataModule(str(demo_shards), batch_size=32).train_batches_per_rank(world_size=2)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.parametrize(("world_size", "workers"), [(1, 0), (2, 2), (8, 4)])  # 8 x 4 streams over 15 shards
def test_every_rank_yields_exactly_its_len_of_full_batches(demo_shards: Path, world_size: int, workers: int) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=2, num_workers=workers, shuffle_buffer=8)
    for rank in sorted({0, world_size - 1}):
        loader = datamodule.train_loader(epoch=0, rank=rank, world_size=world_size)
        assert len(train_digests(datamodule, 0, rank, world_size)) == len(loader) == 60 // (2 * world_size)


def test_train_order_is_reproducible_per_seed_and_epoch_and_differs_across_ranks(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=4, num_workers=2, shuffle_buffer=8, seed=1)
    epoch0_rank0 = train_digests(datamodule, 0, 0, 2)
    assert epoch0_rank0 == train_digests(datamodule, 0, 0, 2)
    assert epoch0_rank0 != train_digests(datamodule, 0, 1, 2)
    assert epoch0_rank0 != train_digests(datamodule, 1, 0, 2)
    other_seed = ShardDataModule(str(demo_shards), batch_size=4, num_workers=2, shuffle_buffer=8, seed=2)
    assert epoch0_rank0 != train_digests(other_seed, 0, 0, 2)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.parametrize(("world_size", "workers", "eval_batch_size"), [
    (1, 0, 4), (2, 0, 4), (2, 2, 3), (3, 0, 2),
    (1, 6, 4),  # 4 val shards feed 4 of 6 eval workers
    (6, 2, 2), (16, 0, 1),  # fewer val shards than ranks: ranges of samples, some ranks only padding
])
def test_validation_counts_every_image_once_over_ranks_with_equal_batch_counts(
        demo_shards: Path, world_size: int, workers: int, eval_batch_size: int) -> None:
    datamodule = ShardDataModule(str(demo_shards), num_workers=workers, eval_batch_size=eval_batch_size)
    seen: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    batch_counts = []
    for rank in range(world_size):
        loader = datamodule.eval_loader("validate", rank=rank, world_size=world_size)
        batches = list(loader)
        batch_counts.append((len(batches), len(loader)))
        for images, labels, valid, batch_keys in batches:
            assert images.shape[1:] == (3, 224, 224) and images.dtype == torch.uint8
            assert labels.dtype == torch.int64 and valid.dtype == torch.bool and len(valid) == len(images)
            assert len(batch_keys) == len(images)
            seen.update(sample_digest(image) for image, keep in zip(images, valid) if keep)
            keys.update(key for key, keep in zip(batch_keys, valid) if keep)
    expected_batches = datamodule.eval_batches_per_rank("validate", world_size)
    assert batch_counts == [(expected_batches, expected_batches)] * world_size
    assert seen == val_digests(demo_shards)
    assert sum(seen.values()) == datamodule.expected_count("validate") == 15
    assert set(keys.values()) == {1} and len(keys) == 15  # each image's key once: what its outcome is filed under


def test_short_ranks_are_padded_with_masked_samples(demo_shards: Path) -> None:
    # 2 ranks x 2 workers, batches of 3: rank 0 reads 4 + 4 images (4 batches), rank 1 reads 4 + 3 (3 batches)
    datamodule = ShardDataModule(str(demo_shards), num_workers=2, eval_batch_size=3)
    rank1 = list(datamodule.eval_loader("validate", rank=1, world_size=2))
    assert len(rank1) == 4
    images, labels, valid, keys = rank1[-1]
    assert images.shape == (1, 3, 224, 224) and not valid.any() and labels.tolist() == [0] and keys == [""]


def test_a_truncated_val_shard_within_the_budget_lowers_the_exact_count_by_what_it_lost(
        demo_shards: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(demo_shards, root)
    shard = root / "val" / "val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    datamodule = ShardDataModule(str(root), num_workers=0, eval_batch_size=4, max_corrupt_fraction=0.3)
    evaluated = sum(int(batch.valid.sum()) for batch in datamodule.eval_loader("validate", 0, 1))
    assert evaluated < 15 and evaluated == datamodule.expected_count("validate")  # what the module checks
    with pytest.raises(TooManyCorruptSamples, match=r"in the validate pass \(val shards\), more than the 0 that .* "
                                                    r"val-000001.tar \(\d\); check the shards with `spp-cls shards"):
        list(ShardDataModule(str(root), num_workers=0).eval_loader("validate", 0, 1))


@pytest.mark.parametrize(("protocol", "batch_size", "shape"), [
    ("center", 8, (8, 1, 3, 224, 224)),
    ("tenview", 20, (2, 10, 3, 224, 224)),
    ("full", 8, (1, 1, 3)),
    ("multiscale", 8, (1, 96, 3, 224, 224)),
])
def test_test_batches_stack_the_views_of_each_protocol(demo_shards: Path, protocol: str, batch_size: int,
                                                       shape: tuple[int, ...]) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=batch_size, num_workers=0, test_views=protocol)
    views, labels, valid, _keys = next(iter(datamodule.eval_loader("test", rank=0, world_size=1)))
    assert tuple(views.shape[: len(shape)]) == shape and views.dtype == torch.uint8
    assert min(views.shape[-2:]) == (256 if protocol == "full" else 224)
    assert labels.shape == valid.shape == (shape[0],) and bool(valid.all())


def test_tenview_test_pass_sees_every_image_once(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), num_workers=2, eval_batch_size=3, test_views="tenview")
    seen = Counter(sample_digest(views) for rank in range(2)
                   for batch in datamodule.eval_loader("test", rank=rank, world_size=2)
                   for views, keep in zip(batch.views, batch.valid) if keep)
    assert seen == val_digests(demo_shards, "tenview")


def test_a_real_trainer_feeds_each_epoch_its_own_reproducible_stream(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=4, num_workers=2, shuffle_buffer=8, seed=7)
    module = RecordingModule()
    make_trainer(max_epochs=2).fit(module, datamodule=datamodule)
    recorded = {epoch: [batch["digests"] for batch in module.records["train"] if batch["epoch"] == epoch]
                for epoch in (0, 1)}
    assert len(recorded[0]) == len(recorded[1]) == 15
    assert recorded[0] == train_digests(datamodule, 0, 0, 1)
    assert recorded[1] == train_digests(datamodule, 1, 0, 1)
    assert recorded[0] != recorded[1]


def test_a_trainer_that_does_not_reload_every_epoch_is_refused(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=4, num_workers=0)
    with pytest.raises(RuntimeError, match=r"reload_dataloaders_every_n_epochs=1 \(it is 0\)"):
        make_trainer(max_epochs=1, reload_every=0).fit(RecordingModule(), datamodule=datamodule)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_a_validation_with_more_eval_workers_than_val_shards_runs_and_says_how_many_it_uses(
        demo_shards: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = ShardDataModule(str(demo_shards), num_workers=5, eval_batch_size=4)
    module = RecordingModule()
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        make_trainer().validate(module, datamodule=datamodule)
    notes = [record.getMessage() for record in caplog.records if "val shards" in record.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("spp-cls: 4 val shards feed 4 of the 5 eval loader workers per rank")
    seen = Counter(digest for batch in module.records["validate"] for digest in batch["digests"])
    assert seen == val_digests(demo_shards)


def test_fewer_val_shards_than_ranks_are_read_in_one_range_per_rank_and_said_so(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), num_workers=2)
    datamodule.world_size = 6
    assert datamodule.eval_streams_note() == ("spp-cls: 4 val shards for 6 ranks: each rank reads one range of "
                                              "about 2 val samples in one loader stream")
    assert [len(streams) for streams in datamodule.eval_assignment()] == [1] * 6


class ParentPidStream(torch.utils.data.IterableDataset):
    """Each loader worker yields the pid of the process that started it."""

    def __iter__(self):
        yield torch.tensor(os.getppid())


def test_loader_workers_do_not_start_by_a_fork_of_the_training_process():
    """A fork() of a process that runs other threads (DDP, Lightning's observer, pin memory) can leave the worker
    deadlocked inside fork() and the rank waiting for it forever; the workers start from a forkserver instead."""
    parents = [int(pid) for pid in ShardDataModule._loader(ParentPidStream(), workers=2)]
    assert len(parents) == 2 and len(set(parents)) == 1 and parents[0] != os.getpid()
