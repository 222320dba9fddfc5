"""Shared fixtures: a small synthetic ImageNet folder of real JPEG files and the shards `spp-cls shards` makes of it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spp_cls.data.manifest import Manifest
from spp_cls.data.shards.convert import convert
from spp_cls.data.synthetic import make_imagenet_folder

NUM_CLASSES = 5
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 3
SHARD_SIZE = 4


@pytest.fixture(scope="session")
def imagenet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic ImageNet folder (read-only for tests): 5 classes, 12 train and 3 val images per class.

    Layout: `train/<wnid>/<wnid>_<k>.JPEG` (60 files), `val/<wnid>/ILSVRC2012_val_<k>.JPEG` (15 files),
    `LOC_synset_mapping.txt`. Real baseline RGB JPEGs with the shorter side in 64..128 and aspect 0.6..1.8.
    Wnids are random 8-digit numbers; class index = position in the sorted wnids. Seed 0.
    """
    root = tmp_path_factory.mktemp("imagenet") / "ILSVRC2012"
    return make_imagenet_folder(root, num_classes=NUM_CLASSES, train_per_class=TRAIN_PER_CLASS,
                                val_per_class=VAL_PER_CLASS, seed=0, shorter_side_range=(64, 128))


@pytest.fixture(scope="session")
def demo_shards(imagenet_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`imagenet_folder` converted by `convert(shard_size=4)` (read-only for tests); returns the output root.

    - `train/`: 60 samples in 15 shards of 4 (`train-000000.tar` .. `train-000014.tar`), shorter side exactly 256,
      classes shuffled across shards (seed 0), 12 per class; manifest with mean_rgb and PCA.
    - `val/`: 15 samples (odd) in 4 shards of 4, 4, 4, 3 (`val-000000.tar` .. `val-000003.tar`), full size (shorter
      side 64..128), 3 per class.
    - Each split has `manifest.json` (load with `Manifest.load(demo_shards / "train")`); nothing was skipped.
    """
    out = tmp_path_factory.mktemp("shards")
    convert(imagenet_folder, out, shard_size=SHARD_SIZE, workers=1, seed=0)
    return out


@pytest.fixture(scope="session")
def one_val_shard(demo_shards: Path, imagenet_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo_shards train split beside its 15 val images written into a single val shard (fewer than ranks)."""
    out = tmp_path_factory.mktemp("one-val-shard")
    shutil.copytree(demo_shards / "train", out / "train")
    convert(imagenet_folder, out, splits=["val"], shard_size=SHARD_SIZE, val_shard_size=100)
    assert [shard.count for shard in Manifest.load(out / "val").shards] == [15]
    return out
