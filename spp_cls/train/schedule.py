"""Training-size schedules: which input size an epoch trains at.

The size is a pure function of (schedule, seed, epoch), so every DDP rank computes the same value with no
communication, and a resumed run continues the schedule from its restored epoch counter.
"""
from __future__ import annotations

import random
from typing import get_args

from ..protocol import TRAIN_SIZES, SizeSchedule

SIZE_SCHEDULES: tuple[str, ...] = get_args(SizeSchedule)


def train_size(schedule: SizeSchedule, epoch: int, seed: int = 0, sizes: tuple[int, int] = TRAIN_SIZES) -> int:
    """Input side for `epoch` (0-based).

    fixed: always sizes[0]. alternate: sizes[0] on even epochs (epoch 0 included), sizes[1] on odd ones, the paper's
    "each full epoch on one network, then switch to the other". random: uniform integer in [min, max] per epoch,
    seeded by (seed, epoch).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if schedule == "fixed":
        return sizes[0]
    if schedule == "alternate":
        return sizes[epoch % 2]
    if schedule == "random":
        return random.Random(f"spp-cls-size/{seed}/{epoch}").randint(min(sizes), max(sizes))
    raise ValueError(f"unknown size schedule {schedule!r}: choose one of {', '.join(SIZE_SCHEDULES)}")

