"""Images per second of the spp-cls train path against the usual baseline, on the same JPEG files, in one run.

- spp-cls: `ShardDataModule.train_loader` over shards written once by `spp-cls shards` (shorter side 256):
  read tar -> shuffle buffer -> decode JPEG (torchvision.io) -> 224 crop at one of the five positions -> flip ->
  uint8 batches [B, 3, 224, 224].
- baseline: torchvision `ImageFolder` over the original JPEG files + PIL: Resize(256), RandomCrop(224),
  RandomHorizontalFlip, ToTensor -> float batches, through a DataLoader.

Both use the same number of worker processes and batch size; the rate is measured after the first batch (worker
start-up and the shuffle-buffer fill are excluded) over one training epoch of the spp-cls loader. The one-off shard
conversion is timed and printed separately.

    python benchmarks/data_throughput.py [--images 2000] [--workers 2] [--batch-size 32] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets, transforms

from spp_cls.data.shards.convert import convert
from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.synthetic import make_imagenet_folder

NUM_CLASSES = 10


def prepare(work: Path, images: int, workers: int) -> tuple[Path, Path]:
    """The ImageNet-like JPEG folder and its shards under ``work`` (reused when already there)."""
    folder, shards = work / "imagenet", work / "shards"
    if not (folder / "LOC_synset_mapping.txt").exists():
        started = time.perf_counter()
        make_imagenet_folder(folder, num_classes=NUM_CLASSES, train_per_class=images // NUM_CLASSES, val_per_class=2,
                             seed=0)
        print(f"wrote {images} JPEG files in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    convert(folder, shards, shard_size=100, workers=workers, seed=0)
    print(f"shards ready in {time.perf_counter() - started:.1f} s (one-off; resumes and skips when already written)")
    return folder, shards


def describe_files(folder: Path) -> str:
    files = sorted((folder / "train").glob("*/*.JPEG"))
    sizes = [Image.open(path).size for path in files[:200]]
    kilobytes = statistics.mean(path.stat().st_size for path in files) / 1e3
    mean_width = statistics.mean(w for w, _ in sizes)
    mean_height = statistics.mean(h for _, h in sizes)
    return f"{len(files)} train JPEGs, mean {kilobytes:.0f} KB, mean size about {mean_width:.0f}x{mean_height:.0f}"


def images_per_second(batches: Iterable, count: int) -> float:
    """Rate over ``count`` batches after the first one."""
    iterator = iter(batches)
    next(iterator)
    started, seen = time.perf_counter(), 0
    for _ in range(count):
        seen += len(next(iterator)[0])
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="training images to generate")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, both paths")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=None, help="folder for images and shards (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        folder, shards = prepare(work, args.images, args.workers)
        print(describe_files(folder))

        datamodule = ShardDataModule(str(shards), batch_size=args.batch_size, num_workers=args.workers)
        loader = datamodule.train_loader(epoch=0)
        measured = len(loader) - 1
        ours = images_per_second(loader, measured)

        baseline_transform = transforms.Compose([
            transforms.Resize(256), transforms.RandomCrop(224), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ])
        dataset = datasets.ImageFolder(str(folder / "train"), transform=baseline_transform)
        baseline_loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                     sampler=RandomSampler(dataset, replacement=True, num_samples=10**9),
                                     pin_memory=torch.cuda.is_available())
        baseline = images_per_second(baseline_loader, measured)

    per_worker = max(1, args.workers)
    print(f"batches of {args.batch_size}, {args.workers} worker processes each, {measured} batches measured")
    print(f"spp-cls shards + decode_jpeg + five-crop/flip (uint8): {ours:8.1f} img/s  "
          f"({ours / per_worker:.1f} per worker)")
    print(f"ImageFolder + PIL Resize/RandomCrop/flip/ToTensor:     {baseline:8.1f} img/s  "
          f"({baseline / per_worker:.1f} per worker)")
    print(f"ratio: {ours / baseline:.2f}x per core (target >= 3x)")


if __name__ == "__main__":
    main()
