"""Training-size schedules: which input size an epoch trains at.

The size is a pure function of (schedule, seed, epoch), so every DDP rank computes the same value with no
communication, and a resumed run continues the schedule from its restored epoch counter.
"""
from __future__ import annotations

import random
from typing import Literal

SizeSchedule = Literal["fixed", "alternate", "random"]
SIZE_SCHEDULES: tuple[str, ...] = ("fixed", "alternate", "random")

# The variant a (head, size schedule) pair trains, as the table names it.
_VARIANTS = {("nospp", "fixed"): "nospp", ("spp", "fixed"): "spp_single", ("spp", "alternate"): "spp_multi",
             ("spp", "random"): "spp_random"}


def train_size(schedule: SizeSchedule, epoch: int, seed: int = 0, sizes: tuple[int, int] = (224, 180)) -> int:
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


def variant_name(head: str, schedule: SizeSchedule) -> str:
    """nospp / spp_single / spp_multi / spp_random, the rows of the paper's Table 2."""
    try:
        return _VARIANTS[(head, schedule)]
    except KeyError:
        raise ValueError(
            f"head {head!r} with size schedule {schedule!r} is not a trained variant: a no-SPP network has a fixed "
            "input size, so it trains with size_schedule 'fixed' only"
        ) from None
