"""Images per second of the spp-cls train path against the usual baseline, on the same JPEG files, in one run.

- spp-cls, decode on the workers: `ShardDataModule.train_loader` over shards written once by `spp-cls shards` (shorter
  side 256): read tar -> shuffle buffer -> decode JPEG (torchvision.io) -> 224 crop at one of the five positions ->
  flip -> uint8 batches [B, 3, 224, 224].
- spp-cls, decode on the device (`data.decode: device`): the workers read the JPEG headers and draw the same windows;
  nvImageCodec decodes each batch's windows on `--device` (its CPU backend on a CPU; on CUDA each backend of
  `--backends`), as 224 regions and, for comparison, as whole images cropped after decode.
- baseline: torchvision `ImageFolder` over the original JPEG files + PIL: Resize(256), RandomCrop(224),
  RandomHorizontalFlip, ToTensor -> float batches, through a DataLoader.

All use the same number of worker processes and batch size; the rate is measured after the first batch (worker
start-up and the shuffle-buffer fill are excluded) over `--batches` batches (default: one training epoch of the
spp-cls loader), with the device synchronised before the clock stops. Per core divides by the CPUs this process may
use. The one-off shard conversion is timed and printed separately.

    python benchmarks/data_throughput.py [--images 2000] [--workers 2] [--batch-size 32] [--batches N] [--work DIR]
                                         [--device cpu|cuda] [--backends auto,hardware,cuda,hybrid]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import checkout  # noqa: F401  (before spp_cls: the checkout's, installed or not)
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets, transforms

from spp_cls.data.shards.convert import convert
from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.nvimgcodec_decode import DECODE_BACKENDS, BatchDecoder
from spp_cls.data.synthetic import make_imagenet_folder

NUM_CLASSES = 10
GPU_BACKENDS = ("auto", "hardware", "cuda", "hybrid")


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


def images_per_second(batches: Iterable, count: int, device: torch.device) -> float:
    """Rate over ``count`` batches after the first one (a batch is images first, or a decoded pair)."""
    iterator = iter(batches)
    next(iterator)
    started, seen = time.perf_counter(), 0
    for _ in range(count):
        seen += len(next(iterator)[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - started)


def decoded_on(loader: Iterable, decoder: BatchDecoder) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's JPEG batches decoded as training does (labels sent to the device first, as Lightning does)."""
    for batch in loader:
        yield decoder(batch.to(decoder.device, non_blocking=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="training images to generate")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, every path")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=None, help="batches measured (default: one epoch less one)")
    parser.add_argument("--work", type=Path, default=None, help="folder for images and shards (default: a temp dir)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where data.decode=device decodes (default: cuda when available)")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated nvImageCodec backends of {', '.join(DECODE_BACKENDS)} (default: cpu on "
                             f"the CPU, {','.join(GPU_BACKENDS)} on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = (args.backends.split(",") if args.backends else
                ["cpu"] if device.type == "cpu" else list(GPU_BACKENDS))
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        folder, shards = prepare(work, args.images, args.workers)
        print(describe_files(folder))
        options = {"batch_size": args.batch_size, "num_workers": args.workers}

        on_workers = ShardDataModule(str(shards), **options)
        measured = args.batches or len(on_workers.train_loader(epoch=0)) - 1
        rates = {"spp-cls shards, decode_jpeg on the workers + five-crop/flip (uint8)":
                 images_per_second(on_workers.train_loader(epoch=0).with_epoch(nbatches=measured + 1), measured,
                                   device)}
        cpu_path = next(iter(rates.values()))

        on_device = ShardDataModule(str(shards), decode="device", **options)
        for backend in backends:
            for region in (True, False):
                decoder = BatchDecoder(device, backend, region=region)
                loader = on_device.train_loader(epoch=0).with_epoch(nbatches=measured + 1)
                rate = images_per_second(decoded_on(loader, decoder), measured, device)
                rates[f"spp-cls shards, {decoder.description}; {decoder.cpu_fallbacks} on the host"] = rate

        baseline_transform = transforms.Compose([
            transforms.Resize(256), transforms.RandomCrop(224), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ])
        dataset = datasets.ImageFolder(str(folder / "train"), transform=baseline_transform)
        baseline_loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                     sampler=RandomSampler(dataset, replacement=True, num_samples=10**9),
                                     pin_memory=torch.cuda.is_available())
        baseline = images_per_second(baseline_loader, measured, torch.device("cpu"))

    print(f"batches of {args.batch_size}, {args.workers} worker processes each, {measured} batches measured, "
          f"{cores} CPU cores available; decode=device on {device}")
    for name, rate in rates.items():
        print(f"{rate:9.1f} img/s  {rate / cores:8.1f} per core  {rate / cpu_path:5.2f}x the worker path  {name}")
    print(f"{baseline:9.1f} img/s  {baseline / cores:8.1f} per core  {baseline / cpu_path:5.2f}x the worker path  "
          f"ImageFolder + PIL Resize/RandomCrop/flip/ToTensor")
    print(f"worker path / baseline: {cpu_path / baseline:.2f}x per core (target >= 3x)")


if __name__ == "__main__":
    main()
