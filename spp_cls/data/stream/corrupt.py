"""Corrupt and missing samples: counted by shard where a loader worker meets them, judged in the training process
against a budget that is a fraction of the samples of the whole pass (a training epoch, a validation or test pass).

- A loader worker keeps a :class:`CorruptTally`: each undecodable sample is logged with its key, shard and reason;
  a shard that holds fewer samples than its manifest lists (truncated, unreadable) is logged once per read with the
  number it lost, and those samples count as corrupt where the (shuffled) sample order reaches the
  :class:`MissingSamples` that stands for them, so an epoch counts the losses among the samples it consumed. The
  worker raises nothing: with every batch it ships a :class:`CorruptReport` of what it met since the last one.
- A shard that holds more samples than its manifest lists (the manifest is stale: the shards were rewritten) is read
  only as far as the manifest counts, so that every rank's pass has the length the manifest gives it; the samples past
  that are logged and counted as :class:`UnlistedSamples`, against the same budget (they are never evaluated, but
  they are not part of the pass's total either).
- The training process (each rank) adds the reports of all its workers into a :class:`CorruptBudget`. A pass may hold
  ``floor(max_fraction * samples)`` corrupt or missing samples, ``samples`` being what the manifest says the pass
  reads; past that :meth:`CorruptBudget.judge` raises :class:`TooManyCorruptSamples` naming the worst shards.
- Under DDP the per-shard counts are summed over ranks before they are judged, at the same batch on every rank
  (every ``check_every`` batches and at the last batch of the pass; all ranks yield equally many batches), so every
  rank reaches the same verdict at the same step and stops together: none is left waiting in a collective.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Protocol

import torch
from torch.utils.data import IterableDataset

log = logging.getLogger(__name__)

DDP_CHECK_EVERY = 50
"""Batches between two judgements of a pass under DDP: each one sums the counts over ranks (a collective that waits
for the queued device work, as the progress bar's refresh every 50 steps does)."""
SHARDS_NAMED = 3
"""How many of the worst shards an error or a pass summary names."""

Reduce = Callable[[torch.Tensor], torch.Tensor]


class TooManyCorruptSamples(ValueError):
    """More corrupt or missing samples than ``max_corrupt_fraction`` allows: the shards are bad input (the CLI prints
    the message as one error line and exits 2)."""


@dataclass(frozen=True)
class CorruptReport:
    """What one loader worker met since its previous report: ``(shard index, corrupt or missing samples)`` pairs, and
    ``(shard index, samples past its manifest count)`` pairs."""

    counts: tuple[tuple[int, int], ...]
    unlisted: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MissingSamples:
    """Stands in a sample stream for the samples a short shard did not hold, so that they are counted where the
    stream reaches them (after the shuffle buffer), like the samples they replace."""

    shard: str
    count: int
    reason: str


@dataclass(frozen=True)
class UnlistedSamples:
    """Follows the last sample of a shard in a sample stream when the shard holds ``count`` samples more than its
    manifest lists (they are not read)."""

    shard: str
    count: int


class CorruptTally:
    """The corrupt and missing samples one stream met since its last :meth:`take`, by shard index."""

    def __init__(self, shard_paths: Sequence[str]) -> None:
        self._index = {path: index for index, path in enumerate(shard_paths)}
        self._pending: Counter[int] = Counter()
        self._unlisted: Counter[int] = Counter()

    def record_corrupt(self, key: str, shard: str, reason: str) -> None:
        log.warning("corrupt sample %s in %s: %s", key, shard, reason)
        self._pending[self._index[shard]] += 1

    def record_mismatch(self, mismatch: MissingSamples | UnlistedSamples) -> None:
        """Counts the samples a shard lost, or held past its manifest's count (the reader logged the shard)."""
        counter = self._pending if isinstance(mismatch, MissingSamples) else self._unlisted
        counter[self._index[mismatch.shard]] += mismatch.count

    def take(self) -> CorruptReport | None:
        """The counts since the last call (None when there are none), and start counting anew."""
        if not self._pending and not self._unlisted:
            return None
        report = CorruptReport(tuple(sorted(self._pending.items())), tuple(sorted(self._unlisted.items())))
        self._pending.clear()
        self._unlisted.clear()
        return report


class DecodeFailures:
    """The files the training process decodes itself (``decode="device"``) and cannot read: each is logged and added
    to the training epoch's :class:`CorruptBudget`, so that it is judged with the loader workers' reports, over all
    ranks at the same batch (a budget of the decoder's own would stop one rank and leave the others waiting).

    Args:
        shard_names: the train shards in manifest order (the indices of the budget).
        budgets: the datamodule's budget of each kind of pass; ``"fit"`` is the current training epoch's (absent
            before the first epoch starts). A mapping, not a callback, so that the datamodule still pickles for
            ``ddp_spawn``.
    """

    def __init__(self, shard_names: Sequence[str], budgets: Mapping[str, CorruptBudget]) -> None:
        self._index = {name: index for index, name in enumerate(shard_names)}
        self._budgets = budgets
        self.seen = 0
        self.corrupt = 0

    def record_good(self) -> None:
        self.seen += 1

    def record_corrupt(self, key: str, shard: str, reason: str) -> None:
        self.seen += 1
        self.corrupt += 1
        log.warning("corrupt sample %s in %s: %s", key, shard, reason)
        budget = self._budgets.get("fit")
        if budget is not None:
            budget.add(CorruptReport(((self._index[PurePath(shard).name], 1),)))


class CorruptBudget:
    """The corrupt and missing samples of one pass over all ranks, against ``floor(max_fraction * samples)``.

    Args:
        shard_names: the shards of the split, in manifest order (the indices of the reports).
        samples: the samples the pass reads (the manifest's total).
        max_fraction: the allowed fraction; 0 makes any corrupt sample fatal.
        what: the pass, as the messages name it ("the training epoch", "the validation pass").
        root: the shards' root directory, for the `spp-cls shards --verify` advice.
        reduce: sums a tensor over ranks; None in a single process.
        announce: whether this process logs the pass's summary (rank 0).
    """

    def __init__(self, shard_names: Sequence[str], samples: int, max_fraction: float, what: str, root: str,
                 reduce: Reduce | None = None, announce: bool = True) -> None:
        if not 0.0 <= max_fraction < 1.0:
            raise ValueError(f"max_corrupt_fraction must be in [0, 1), got {max_fraction}")
        self.shard_names = list(shard_names)
        self.samples = samples
        self.max_fraction = max_fraction
        self.allowed = math.floor(max_fraction * samples)
        self.what, self.root = what, root
        self.reduce = reduce
        self.announce = announce
        self.local = torch.zeros(2, len(self.shard_names), dtype=torch.int64)
        """Row 0: corrupt or missing samples per shard; row 1: samples past the shard's manifest count."""
        self.judged = torch.zeros_like(self.local)
        """``local`` summed over all ranks as of the last :meth:`judge`."""

    @property
    def check_every(self) -> int:
        """Batches between judgements: every batch in a single process, where judging costs nothing."""
        return 1 if self.reduce is None else DDP_CHECK_EVERY

    @property
    def count(self) -> int:
        """Corrupt, missing or unlisted samples of the pass over all ranks, as of the last :meth:`judge`."""
        return int(self.judged.sum())

    @property
    def lost(self) -> int:
        """Samples of the pass's total that were not evaluated (corrupt or missing), as of the last :meth:`judge`."""
        return int(self.judged[0].sum())

    def add(self, report: CorruptReport | None) -> None:
        if report is None:
            return
        for row, counts in enumerate((report.counts, report.unlisted)):
            for index, count in counts:
                self.local[row, index] += count

    def judge(self, last: bool = False) -> None:
        """Sums the counts over ranks and raises :class:`TooManyCorruptSamples` past the budget; at the ``last``
        batch of a pass, logs what the pass met (on the announcing rank)."""
        self.judged = self.local.clone() if self.reduce is None else self.reduce(self.local.clone()).cpu()
        if self.count > self.allowed:
            raise TooManyCorruptSamples(
                f"{self.count} {self.kinds()} samples in {self.what}, more than the {self.allowed} that "
                f"max_corrupt_fraction {self.max_fraction:g} allows of its {self.samples}: {self.worst_shards()}; "
                f"check the shards with `spp-cls shards --verify {self.root}`"
            )
        if last and self.count and self.announce:
            log.warning("%d %s samples in %s (%d allowed): %s", self.count, self.kinds(), self.what, self.allowed,
                        self.worst_shards())

    def kinds(self) -> str:
        """What the judged samples were: "corrupt or missing", "unlisted" (past a manifest's count), or both."""
        lost, unlisted = self.lost > 0, self.count > self.lost
        return "corrupt, missing or unlisted" if lost and unlisted else "unlisted" if unlisted else "corrupt or missing"

    def worst_shards(self) -> str:
        per_shard = self.judged.sum(dim=0)
        counts = sorted(((int(n), name) for n, name in zip(per_shard, self.shard_names) if n > 0), reverse=True)
        named = ", ".join(f"{name} ({n})" for n, name in counts[:SHARDS_NAMED])
        return named + (f" and {len(counts) - SHARDS_NAMED} more shards" if len(counts) > SHARDS_NAMED else "")


def with_reports(batches: Iterable[Any], tally: CorruptTally) -> Iterator[tuple[Any, CorruptReport | None]]:
    """Each batch of a worker's stream with the tally's report since the previous one, then ``(None, report)`` if
    the end of the stream met more (a shard found short after the last batch was made)."""
    for batch in batches:
        yield batch, tally.take()
    last = tally.take()
    if last is not None:
        yield None, last


def batches_after_reports(items: Iterable[tuple[Any, CorruptReport | None]], budget: CorruptBudget) -> Iterator[Any]:
    """The batches of ``(batch, report)`` items, every report added to ``budget``; each batch is held until the next
    item has arrived, so that the reports of the streams' ends are in before their last batch goes on."""
    held = None
    for batch, report in items:
        budget.add(report)
        if batch is None:
            continue
        if held is not None:
            yield held
        held = batch
    if held is not None:
        yield held


def judged_batches(batches: Iterable[Any], budget: CorruptBudget, total: int) -> Iterator[Any]:
    """``batches`` (``total`` per pass, the same on every rank), judging ``budget`` before batch ``check_every - 1``,
    ``2 * check_every - 1``, ... and before the last."""
    for index, batch in enumerate(batches):
        if (index + 1) % budget.check_every == 0 or index + 1 == total:
            budget.judge(last=index + 1 == total)
        yield batch


class TalliedStream(Protocol):
    """A stream of batches over shards that counts what it meets in a tally (the train and eval streams)."""

    shard_paths: list[str]

    def batches(self, tally: CorruptTally) -> Iterator[Any]: ...


class ReportingStream(IterableDataset):
    """The items of ``stream`` as ``(batch, report)`` pairs (see :func:`with_reports`): what the loader workers ship
    when the training process keeps the budget."""

    def __init__(self, stream: TalliedStream) -> None:
        super().__init__()
        self.stream = stream

    def __iter__(self) -> Iterator[tuple[Any, CorruptReport | None]]:
        tally = CorruptTally(self.stream.shard_paths)
        return with_reports(self.stream.batches(tally), tally)
