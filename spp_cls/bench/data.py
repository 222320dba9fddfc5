"""The data path of a bench: synthetic or given shards through ShardDataModule, and its images/s alone."""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.shards.convert import convert
from ..data.stream.datamodule import ShardDataModule
from ..data.stream.jpeg_batch import JpegBatch
from ..data.synthetic import make_imagenet_folder
from .settings import Batch, BenchSettings, BenchUsageError
from .timing import timed_steps

SYNTHETIC_CLASSES = 10
DATA_PATH_IMAGES = 1024
"""The data path alone is cheap to time: its window holds at least this many images."""


@dataclass(frozen=True)
class DataSource:
    root: Path
    description: str


def synthetic_shards(work: Path, batch_size: int, workers: int) -> DataSource:
    """A small synthetic ImageNet folder of real JPEGs converted to shards (the train stream resamples it)."""
    per_class = max(4, math.ceil(2 * batch_size / SYNTHETIC_CLASSES))
    total = per_class * SYNTHETIC_CLASSES
    make_imagenet_folder(work / "images", num_classes=SYNTHETIC_CLASSES, train_per_class=per_class, val_per_class=1,
                         seed=0, shorter_side_range=(256, 384))
    shard_size = max(1, total // max(8, 2 * workers))
    convert(work / "images", work / "shards", shard_size=shard_size, workers=max(1, min(workers, os.cpu_count() or 1)),
            seed=0)
    shards = math.ceil(total / shard_size)
    return DataSource(work / "shards", f"synthetic ({total} JPEGs in {shards} shards)")


def open_datamodule(source: DataSource, batch_size: int, workers: int, decode: str = "cpu",
                    decode_backend: str = "auto") -> ShardDataModule:
    try:
        datamodule = ShardDataModule(str(source.root), batch_size=batch_size, num_workers=workers, decode=decode,
                                     decode_backend=decode_backend)
        datamodule.train_batches_per_rank(1)
    except ValueError as error:
        raise BenchUsageError(f"--data {source.root}: {str(error).splitlines()[0]}") from None
    return datamodule


def shard_batches(datamodule: ShardDataModule, count: int, device: torch.device) -> Iterator[Batch]:
    """`count` training batches of epoch 0 from one set of loader workers (the train stream is endless, resampled);
    with decode=device each batch's windows are decoded on `device` here, as in training."""
    for batch in datamodule.train_loader(epoch=0).with_epoch(nbatches=count):
        yield datamodule.device_decoder(device)(batch) if isinstance(batch, JpegBatch) else batch


def decoder_description(datamodule: ShardDataModule, device: torch.device) -> str | None:
    """What decoded the batches of decode=device (library, device, backend) and how many fell back to the host."""
    if datamodule.decode != "device":
        return None
    decoder = datamodule.device_decoder(device)
    return f"{decoder.description}; {decoder.cpu_fallbacks} files decoded on the host instead"


def prefetched_batches(workers: int) -> int:
    """Warm-up steps that drain what the loader workers prefetched while starting (prefetch_factor 2 each), so that
    a timed window fed from shards sees the steady state, not a queue filled while the first steps compiled."""
    return 1 + 2 * max(1, workers)


def measure_data_path(datamodule: ShardDataModule, source: DataSource, settings: BenchSettings,
                      device: torch.device) -> dict[str, Any]:
    """Images/s of shards -> uint8 batches alone, with the settings' loader workers."""
    # The window spans several batches per worker and at least DATA_PATH_IMAGES.
    warmup = prefetched_batches(settings.workers)
    batches = max(settings.steps, 5 * max(1, settings.workers), math.ceil(DATA_PATH_IMAGES / settings.batch_size))
    timing = timed_steps(lambda batch: len(batch[1]), shard_batches(datamodule, warmup + batches, device), warmup,
                         batches, device)
    return {"source": source.description, "workers": settings.workers, "batch_size": settings.batch_size,
            "decode": settings.decode, "decoder": decoder_description(datamodule, device),
            "batches": batches, "images": timing.images, "seconds": timing.seconds,
            "images_per_s": timing.images_per_s}
