"""Decode, the paper's train crop, corrupt-sample accounting and the per-worker streams, on real JPEG bytes and real
tar shards written in a temporary directory."""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import coordinate_image, noise_jpeg, write_shards
from PIL import Image

from spp_cls.data.stream.corrupt import CorruptReport, CorruptTally
from spp_cls.data.stream.eval_shards import ShardSlice, eval_assignment
from spp_cls.data.stream.pipeline import (
    CorruptSample,
    EvalStream,
    TrainStream,
    decode_rgb,
    parse_label,
    shard_order,
    train_crop,
)
from spp_cls.data.stream.views import center_view
from spp_cls.view_protocols import five_positions


def test_decode_rgb_gives_uint8_chw_matching_pil() -> None:
    data = noise_jpeg(300, 200)
    image = decode_rgb(data)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 200, 300)
    reference = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
    assert (image.float() - reference.float()).abs().mean() < 1.0


def test_decode_rgb_turns_grayscale_into_three_equal_channels() -> None:
    image = decode_rgb(noise_jpeg(64, 48, mode="L"))
    assert image.shape == (3, 48, 64)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize("data", [noise_jpeg(300, 200)[:500], b"not a jpeg at all", b""])
def test_decode_rgb_raises_corrupt_sample_on_bad_bytes(data: bytes) -> None:
    with pytest.raises(CorruptSample, match="JPEG does not decode"):
        decode_rgb(data)


def test_parse_label_reads_ascii_and_checks_the_range() -> None:
    assert parse_label(b"7", 10) == 7
    with pytest.raises(CorruptSample, match="not an integer"):
        parse_label(b"seven", 10)
    with pytest.raises(CorruptSample, match=r"outside \[0, 10\)"):
        parse_label(b"10", 10)


def test_five_crop_uses_only_the_corners_and_center_of_the_whole_image_and_flips_half() -> None:
    image = coordinate_image(250, 230)
    rng = random.Random(0)
    origins, flips = set(), 0
    for _ in range(400):
        crop = train_crop(image, rng, "five")
        assert crop.shape == (3, 224, 224) and crop.dtype == torch.uint8
        left, right = int(crop[0, 0, 0]), int(crop[0, 0, -1])
        flips += left > right
        origins.add((min(left, right), int(crop[1, 0, 0])))
    assert origins == set(five_positions(250, 230)) == {(13, 3), (0, 0), (26, 0), (0, 6), (26, 6)}
    assert 160 <= flips <= 240


def test_random_crop_moves_over_the_whole_image() -> None:
    image = coordinate_image(250, 230)
    rng = random.Random(1)
    origins = set()
    for _ in range(200):
        crop = train_crop(image, rng, "random")
        left, right = int(crop[0, 0, 0]), int(crop[0, 0, -1])
        origins.add((min(left, right), int(crop[1, 0, 0])))
    assert len(origins) > 50
    assert all(0 <= x0 <= 26 and 0 <= y0 <= 6 for x0, y0 in origins)


def test_train_crop_treats_an_image_smaller_than_the_crop_as_corrupt() -> None:
    with pytest.raises(CorruptSample, match="smaller than the 224 crop"):
        train_crop(coordinate_image(230, 200), random.Random(0))


def test_shard_order_is_common_per_seed_and_epoch_and_visits_every_shard_per_round() -> None:
    def first(seed: int, epoch: int, n: int = 21) -> list[int]:
        return [i for i, _ in zip(shard_order(7, seed, epoch), range(n))]

    order = first(0, 0)
    assert order == first(0, 0)
    assert order != first(0, 1) and order != first(1, 0)
    for start in (0, 7, 14):
        assert sorted(order[start : start + 7]) == list(range(7))


def samples_read(assignment: list[list[list[ShardSlice]]], counts: list[int]) -> list[tuple[int, int]]:
    """(shard, position) of every sample the streams of ``assignment`` read, in stream order."""
    return [(piece.shard, position) for per_rank in assignment for slices in per_rank for piece in slices
            for position in range(piece.start, piece.stop)]


def test_eval_assignment_gives_whole_shards_to_as_many_streams_as_the_shards_feed() -> None:
    counts = [4, 4, 4, 4, 4, 4, 3]
    assignment = eval_assignment(counts, world_size=2, workers=3)
    assert [[[piece.shard for piece in slices] for slices in per_rank] for per_rank in assignment] == [
        [[0, 6], [1], [2]], [[3], [4], [5]]]
    assert sorted(samples_read(assignment, counts)) == [(s, p) for s, n in enumerate(counts) for p in range(n)]
    assert all(piece.to_end and piece.start == 0 for per_rank in assignment for slices in per_rank
               for piece in slices)
    fewer = eval_assignment(counts[:5], world_size=2, workers=3)  # 5 shards feed 2 streams per rank, not 3
    assert [len(per_rank) for per_rank in fewer] == [2, 2]
    assert sorted(samples_read(fewer, counts[:5])) == [(s, p) for s in range(5) for p in range(4)]


@pytest.mark.parametrize("world_size", [4, 5, 16])
def test_eval_assignment_with_fewer_shards_than_ranks_splits_the_samples_by_range(world_size: int) -> None:
    counts = [5, 4, 6]
    assignment = eval_assignment(counts, world_size=world_size, workers=6)
    assert all(len(per_rank) == 1 for per_rank in assignment)  # one stream per rank
    read = samples_read(assignment, counts)
    assert read == [(s, p) for s, n in enumerate(counts) for p in range(n)]  # each once, ranks in order
    sizes = [sum(piece.count for piece in per_rank[0]) for per_rank in assignment]
    assert max(sizes) - min(sizes) <= 1
    ends = [piece for per_rank in assignment for piece in per_rank[0] if piece.stop == counts[piece.shard]]
    assert all(piece.to_end for piece in ends) and len(ends) == len(counts)


def train_labels(stream: TrainStream, batches: int) -> list[list[int]]:
    iterator = iter(stream)
    result = []
    for _ in range(batches):
        images, labels = next(iterator)
        assert images.shape == (4, 3, 224, 224) and images.dtype == torch.uint8 and labels.dtype == torch.int64
        result.append(labels.tolist())
    return result


def test_train_stream_is_reproducible_per_seed_epoch_and_differs_per_rank(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, [6, 6, 6, 6])

    def stream(rank: int, epoch: int) -> TrainStream:
        return TrainStream(paths, 24, 4, shard_counts=[6] * 4, rank=rank, world_size=2, seed=5, epoch=epoch,
                           shuffle_buffer=8)

    rank0 = train_labels(stream(0, 0), 5)
    assert rank0 == train_labels(stream(0, 0), 5)
    assert rank0 != train_labels(stream(1, 0), 5)
    assert rank0 != train_labels(stream(0, 1), 5)


def test_train_stream_skips_and_logs_a_corrupt_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = write_shards(tmp_path, [5], extra={2: {"jpg": b"garbage"}})
    stream = TrainStream(paths, 5, 4, shard_counts=[5], rank=0, world_size=1, seed=0, epoch=0, shuffle_buffer=0)
    tally = CorruptTally(paths)
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.corrupt"):
        labels = [labels.tolist() for _, (_, labels) in zip(range(3), stream.batches(tally))]
    assert 2 not in {label for batch in labels for label in batch}
    assert f"img00002 in {paths[0]}: JPEG does not decode: Not a JPEG file" in caplog.text
    assert tally.take().counts == ((0, 3),)  # the only shard is resampled: 3 reads of it for 12 good samples


def test_eval_stream_yields_every_image_once_with_views_and_partial_last_batch(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, [3, 2], size=(300, 260))
    batches = list(EvalStream(paths, eval_assignment([3, 2], 1, 1)[0], 5, 2, center_view))
    assert [len(batch.labels) for batch in batches] == [2, 2, 1]  # the worker's shards in order, last batch partial
    assert torch.cat([batch.labels for batch in batches]).tolist() == [0, 1, 2, 3, 4]
    assert all(batch.valid.all() and batch.valid.dtype == torch.bool for batch in batches)
    assert [batch.keys for batch in batches] == [["img00000", "img00001"], ["img00002", "img00003"], ["img00004"]]
    first = decode_rgb(noise_jpeg(300, 260, seed=0))
    assert torch.equal(batches[0][0][0], center_view(first))


def test_streams_never_unpickle_sample_members(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple:
            return os.mkdir, (str(marker),)

    hostile = pickle.dumps(Payload())
    paths = write_shards(tmp_path, [3], extra={0: {"pyd": hostile, "pickle": hostile}, 1: {"cls": hostile}})
    labels = [label for batch in EvalStream(paths, eval_assignment([3], 1, 1)[0], 3, 4, center_view)
              for label in batch.labels.tolist()]
    assert labels == [0, 2]  # the sample whose cls is a pickle is counted as corrupt, never loaded
    assert not marker.exists()


def test_a_truncated_shard_counts_what_it_lost_against_the_manifest_and_the_stream_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = write_shards(tmp_path, [4, 3])
    data = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(data[: len(data) // 2])
    tally = CorruptTally(paths)
    stream = EvalStream(paths, eval_assignment([4, 3], 1, 1)[0], 7, 8, center_view)
    with caplog.at_level(logging.WARNING):
        labels = [label for batch in stream.batches(tally) for label in batch.labels.tolist()]
    assert labels[-3:] == [4, 5, 6] and len(labels) < 7
    assert tally.take().counts == ((0, 7 - len(labels)),)  # every sample of the shard not evaluated, once
    missing = [record.getMessage() for record in caplog.records if "not read" in record.getMessage()]
    assert len(missing) == 1 and missing[0].startswith(f"{paths[0]}: ") and "of the 4 samples" in missing[0]


def test_a_slice_reads_its_range_and_a_slice_to_the_end_counts_the_samples_past_the_manifests_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = write_shards(tmp_path, [5])  # a manifest that says 4 would be stale by one sample

    def read(piece: ShardSlice) -> tuple[list[int], CorruptReport | None]:
        tally = CorruptTally(paths)
        stream = EvalStream(paths, [[piece]], 5, 8, center_view)
        return [label for batch in stream.batches(tally) for label in batch.labels.tolist()], tally.take()

    assert read(ShardSlice(0, 1, 3, False)) == ([1, 2], None)
    with caplog.at_level(logging.WARNING):
        # the slice keeps the manifest's length (so every rank's pass does); the fifth sample is counted, not read
        assert read(ShardSlice(0, 3, 4, True)) == ([3], CorruptReport((), ((0, 1),)))
    named = [record.getMessage() for record in caplog.records]
    assert named == [f"{paths[0]}: 1 samples past the 4 its manifest lists were not read (the shards do not match "
                     "manifest.json); they count as corrupt"]
