"""Which val samples each evaluation stream (rank x loader worker) reads, so that a pass reads every sample once.

With at least as many val shards as ranks, streams read whole shards: each rank runs as many streams as the shards
allow, at most its configured loader workers, and the shards go round-robin over all streams. With fewer val shards
than ranks, each rank reads one contiguous range of the samples (the shards in manifest order, cut by the manifest's
counts) in one stream; a shard may then be read in parts by several ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardSlice:
    """Samples ``start`` to ``stop`` (positions in the shard, as its manifest counts them) of shard ``shard``.

    ``to_end``: the slice ends where the shard does, so the stream reads on to the shard's real end and counts the
    samples it finds past the manifest's count (a stale manifest), which would otherwise go unseen.
    """

    shard: int
    start: int
    stop: int
    to_end: bool

    @property
    def count(self) -> int:
        return self.stop - self.start


EvalAssignment = list[list[list[ShardSlice]]]
"""``assignment[rank][stream]``: the slices one evaluation stream reads, in order."""


def eval_streams_per_rank(num_shards: int, world_size: int, workers: int) -> int:
    """Streams per rank: ``workers`` (at least 1) if the shards feed them all, else as many as they feed (>= 1)."""
    return max(1, min(max(1, workers), num_shards // world_size))


def eval_assignment(counts: Sequence[int], world_size: int, workers: int) -> EvalAssignment:
    """The slices of every evaluation stream: every sample of ``counts`` (samples per shard) in exactly one of them."""
    if len(counts) >= world_size:
        streams = eval_streams_per_rank(len(counts), world_size, workers)
        slots = world_size * streams
        return [[[ShardSlice(shard, 0, counts[shard], True) for shard in range(rank * streams + stream, len(counts),
                                                                               slots)]
                 for stream in range(streams)] for rank in range(world_size)]
    total = sum(counts)
    bounds = [total * rank // world_size for rank in range(world_size + 1)]
    return [[sample_range(counts, bounds[rank], bounds[rank + 1])] for rank in range(world_size)]


def sample_range(counts: Sequence[int], start: int, stop: int) -> list[ShardSlice]:
    """The slices that hold samples ``start`` to ``stop`` of the shards laid end to end in order."""
    slices, offset = [], 0
    for shard, count in enumerate(counts):
        first, last = max(start, offset), min(stop, offset + count)
        if first < last:
            slices.append(ShardSlice(shard, first - offset, last - offset, last == offset + count))
        offset += count
    return slices


def stream_samples(assignment: EvalAssignment, rank: int) -> list[int]:
    """Samples each stream of ``rank`` reads, by the manifest's counts."""
    return [sum(piece.count for piece in slices) for slices in assignment[rank]]
