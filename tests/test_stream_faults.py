"""Faults met on real data, end to end through `spp-cls fit`: a truncated train shard (half of one of the eight demo
train shards cut off), and a val shard that holds one sample more than its manifest lists, under 2 DDP ranks in both
evaluation layouts (whole shards per rank; one shard split by sample range).

Data: the demo's layout (10 classes x 100 train images in 8 shards of 125, 20 val images per class), with the shard
that epoch 0 reads first cut to half its bytes; for the long shard, the test fixtures' 15 val images in 4 shards or 1.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import cpu_args, lengthen_shard, read_summary, run_hard_timeout

from spp_cls.cli import main
from spp_cls.data.manifest import Manifest
from spp_cls.data.shards.convert import convert
from spp_cls.data.stream.pipeline import shard_order
from spp_cls.data.synthetic import make_imagenet_folder

pytestmark = pytest.mark.slow
SPP_CLS = str(Path(sys.executable).with_name("spp-cls"))
DEMO_TRAIN_SHARDS = 8


def complete_samples(shard: Path) -> int:
    """Samples of a tar that hold both their jpg and cls, read with tarfile until the data ends."""
    members: dict[str, set[str]] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, extension = member.name.split(".", 1)
                members.setdefault(key, set()).add(extension)
    except tarfile.ReadError:
        pass
    return sum(1 for extensions in members.values() if {"jpg", "cls"} <= extensions)


@pytest.fixture(scope="module")
def cut_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """(root, name of the cut shard, samples it lost against its manifest count)."""
    work = tmp_path_factory.mktemp("demo")
    make_imagenet_folder(work / "images", num_classes=10, train_per_class=100, val_per_class=20, seed=0,
                         shorter_side_range=(64, 128))
    convert(work / "images", work / "shards", shard_size=125, workers=1)
    manifest = Manifest.load(work / "shards" / "train")
    assert len(manifest.shards) == DEMO_TRAIN_SHARDS
    first = manifest.shards[next(shard_order(DEMO_TRAIN_SHARDS, seed=0, epoch=0))]
    path = work / "shards" / "train" / first.name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    lost = first.count - complete_samples(path)
    assert 60 <= lost <= 70
    return work / "shards", first.name, lost


def demo_fit_args(root: Path, runs: Path, *extra: str) -> list[str]:
    return [*cpu_args(root, runs, "--data.batch_size", "50", "--data.num_workers", "2", "--data.shuffle_buffer", "64",
                      "--trainer.max_epochs", "1", "--wandb", "false"), *extra]


def test_a_truncated_train_shard_within_the_budget_is_named_with_what_it_lost_and_training_goes_on(
        cut_shards: tuple[Path, str, int], tmp_path: Path) -> None:
    """In its own process, as a user runs it: the loader workers write to the stderr of the process that started
    their forkserver, which inside a pytest process is whichever test ran first."""
    root, name, lost = cut_shards
    args = demo_fit_args(root, tmp_path, "--data.max_corrupt_fraction", "0.1", "--trainer.limit_train_batches", "8")
    done = run_hard_timeout([SPP_CLS, "fit", *args], timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert [row["epoch"] for row in read_summary(tmp_path / "t" / "zf5-spp_multi")] == ["0"]
    # the loader worker that read the shard named it once, with what it lost (a sample cut in two counts on its own)
    err = done.stdout
    named = [line for line in err.splitlines() if name in line]
    assert len(named) == 1 and "of the 125 samples its manifest lists here were not read (ReadError: " in named[0]
    assert int(named[0].split(": ")[1].split()[0]) in (lost, lost - 1)
    assert "Traceback" not in err


def test_past_the_budget_a_fit_stops_with_one_error_line_naming_the_shard_and_exit_2(
        cut_shards: tuple[Path, str, int], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    root, name, lost = cut_shards
    assert main(["fit", *demo_fit_args(root, tmp_path)]) == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("spp-cls: error:")]
    expected = (f"spp-cls: error: {lost} corrupt or missing samples in training epoch 0 (train shards), more than the "
                f"1 that max_corrupt_fraction 0.001 allows of its 1000: {name} ({lost}); check the shards with "
                f"`spp-cls shards --verify {root}` (SPP_CLS_DEBUG=1 shows the traceback)")
    assert errors == [expected]
    assert "Traceback" not in err


@pytest.mark.ddp
def test_past_the_budget_every_ddp_rank_stops_at_the_same_step_and_one_line_says_why(
        cut_shards: tuple[Path, str, int], tmp_path: Path) -> None:
    root, name, _ = cut_shards
    env = {**os.environ, "WANDB_MODE": "offline"}
    args = demo_fit_args(root, tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                         "--data.num_workers", "1")
    done = run_hard_timeout([SPP_CLS, "fit", *args], timeout=300, env=env)
    assert done.returncode == 2, done.stdout[-3000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("spp-cls: error:")]
    assert len(errors) == 1 and name in errors[0] and "spp-cls shards --verify" in errors[0], done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-3000:]



def with_a_long_val_shard(root: Path, tmp_path: Path, shard: str) -> Path:
    """A copy of the shards ``root`` whose val shard ``shard`` holds one sample more than its manifest lists."""
    copy = tmp_path / "shards"
    shutil.copytree(root, copy)
    lengthen_shard(copy / "val" / shard)
    return copy


@pytest.mark.ddp
@pytest.mark.parametrize(("layout", "shard"), [("several", "val-000001.tar"), ("one", "val-000000.tar")])
def test_a_val_shard_longer_than_its_manifest_stops_every_rank_together_with_one_line_naming_it(
        demo_shards: Path, one_val_shard: Path, tmp_path: Path, layout: str, shard: str) -> None:
    """Several val shards: each rank reads whole shards, and the one that reads the long shard would run a batch past
    the others; one val shard: each rank reads a range, and the samples past the last one would go unseen."""
    root = with_a_long_val_shard(demo_shards if layout == "several" else one_val_shard, tmp_path, shard)
    args = cpu_args(root, tmp_path / "runs", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--wandb", "false")
    done = run_hard_timeout([SPP_CLS, "fit", *args], timeout=240, env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 2, done.stdout[-3000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("spp-cls: error:")]
    assert errors == [
        "spp-cls: error: 1 unlisted samples in the validate pass (val shards), more than the 0 that "
        f"max_corrupt_fraction 0.001 allows of its 15: {shard} (1); check the shards with `spp-cls shards --verify "
        f"{root}` (SPP_CLS_DEBUG=1 shows the traceback)"], done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-3000:]


def test_within_the_budget_a_long_val_shard_is_named_and_counted_and_every_listed_image_is_evaluated(
        one_val_shard: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = with_a_long_val_shard(one_val_shard, tmp_path, "val-000000.tar")
    args = cpu_args(root, tmp_path / "runs", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                    "--data.max_corrupt_fraction", "0.1", "--wandb", "false")
    with caplog.at_level(logging.WARNING, logger="spp_cls"):
        assert main(["fit", *args]) == 0  # the module checks it counted the manifest's 15 images, no more, no fewer
    messages = [record.getMessage() for record in caplog.records]
    assert f"{root}/val/val-000000.tar: 1 samples past the 15 its manifest lists were not read" in "\n".join(messages)
    assert ("1 unlisted samples in the validate pass (val shards) (1 allowed): val-000000.tar (1)"
            in messages), messages
