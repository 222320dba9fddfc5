"""CPU threads per rank: torch's intra-op pool and nvImageCodec's decoder each start one thread per core in every
process by default, so the ranks of a node start ranks x cores threads that fight each other and the loader workers
(docs/jobs.md, "Threads per rank"). Each rank sizes both from the CPUs it owns instead.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_info

OVERRIDE = "SPP_CLS_RANK_THREADS"


def rank_cpus(local_ranks: int, environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """The CPU threads one of ``local_ranks`` ranks on this node may use, and where that number comes from:
    ``SPP_CLS_RANK_THREADS`` if set, else SLURM's ``SLURM_CPUS_PER_TASK``, else this process's usable cores divided
    among the node's ranks (at least 1)."""
    for variable in (OVERRIDE, "SLURM_CPUS_PER_TASK"):
        if environ.get(variable):
            value = environ[variable]
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{variable}={value!r}: expected a positive whole number of CPU threads")
            return int(value), f"{variable}={value}"
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // local_ranks), f"{cores} usable cores / {local_ranks} ranks on this node"


class RankThreads(Callback):
    """Sets torch's intra-op threads of every rank to :func:`rank_cpus` when a run starts, and says so once when there
    are several ranks; the device JPEG decoder is made with the same number (``ShardDataModule.device_decoder``)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        threads, source = rank_cpus(trainer.num_devices)
        torch.set_num_threads(threads)
        if trainer.world_size > 1:  # one process shares its cores with no other rank: nothing to say
            hint = "" if source.startswith(OVERRIDE) else f"; {OVERRIDE}=N overrides"
            rank_zero_info(f"spp-cls: {threads} CPU thread(s) per rank for torch and the JPEG decoder ({source}{hint})")
