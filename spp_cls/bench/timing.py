"""Timed steps: warm-up, then a window measured between device synchronisations."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..view_protocols import CROP
from .device import synchronize
from .settings import Batch

DISTINCT_BATCHES = 4
"""Pre-generated batches cycled through the in-memory measurements."""


@dataclass(frozen=True)
class Timing:
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def timed_steps(step: Callable[[Batch], int], batches: Iterator[Batch], warmup: int, steps: int,
                device: torch.device) -> Timing:
    """Run `warmup` untimed then `steps` timed calls of `step` (which returns the images it took) on `batches`.

    Fetching each timed batch counts, so a loader's speed shows when the step is fed from one.
    """
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    started = time.perf_counter()
    images = sum(step(next(batches)) for _ in range(steps))
    synchronize(device)
    return Timing(images, time.perf_counter() - started)


def random_batches(batch_size: int, num_classes: int, device: torch.device, count: int = DISTINCT_BATCHES,
                   seed: int = 0) -> list[Batch]:
    """uint8 224 crops and labels, made once on `device` (what the data path hands over)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 256, (batch_size, 3, CROP, CROP), dtype=torch.uint8, generator=generator).to(device),
         torch.randint(0, num_classes, (batch_size,), generator=generator).to(device))
        for _ in range(count)
    ]


def cycle(batches: Sequence[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches
