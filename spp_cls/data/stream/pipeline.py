"""The streaming side of the data: JPEG decode, the paper's train crop, and the per-worker sample streams over
webdataset shards (train: endless, resampled, shuffled; eval: each image exactly once). Corrupt and missing samples
are counted as :mod:`spp_cls.data.stream.corrupt` says.

Everything here works on uint8 tensors; normalisation, colour noise and resizing to the epoch's size happen on the
device (docs/data.md, "What the data hands the model"). Only the ``jpg`` and ``cls`` members of a sample are ever
read; nothing is unpickled, and the ``json`` member is skipped at the tar level.

Seeds (two-seed scheme): the shard order is a pure function of (seed, epoch), the same on every rank, and the
global worker ``rank * workers + worker`` takes every ``world_size * workers``-th shard of it; the shuffle buffer
and the crops use a generator seeded by (seed, epoch, rank, worker), so every worker of every rank sees other samples
and a rerun with the same (seed, epoch) sees the same ones.
"""

from __future__ import annotations

import hashlib
import logging
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Any, Literal, NamedTuple

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from spp_cls.data.stream.corrupt import CorruptTally, MissingSamples, UnlistedSamples
from spp_cls.data.stream.eval_shards import ShardSlice
from spp_cls.view_protocols import CROP, five_positions

# NOTE: torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every call; the decoder
# still works and is what this pipeline is measured with. Silence exactly that message, once, here.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)

log = logging.getLogger(__name__)

TrainCrop = Literal["five", "random"]
SAMPLE_MEMBERS = (".jpg", ".cls")


class CorruptSample(ValueError):
    """A sample that cannot be used: undecodable image, missing member, bad label, image too small."""


def decode_rgb(jpeg: bytes) -> torch.Tensor:
    """Decodes JPEG bytes to a uint8 (3, H, W) RGB tensor (grayscale and CMYK are converted).

    The result is a channels-last view of the decoder's HWC buffer; crops of it are made contiguous when batched.
    """
    try:
        return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exn:
        reason = str(exn).rsplit(", ", 1)[-1]  # torchvision prefixes "decode_jpeg, <source file>:<line>, "
        raise CorruptSample(f"JPEG does not decode: {reason}") from exn


def parse_label(cls_bytes: bytes, num_classes: int) -> int:
    """Reads the ASCII class index of a ``cls`` member and checks it is in ``[0, num_classes)``."""
    try:
        label = int(cls_bytes)
    except ValueError as exn:
        raise CorruptSample(f"cls is not an integer: {cls_bytes[:20]!r}") from exn
    if not 0 <= label < num_classes:
        raise CorruptSample(f"cls {label} is outside [0, {num_classes})")
    return label


def jpeg_and_label(sample: dict[str, Any], num_classes: int) -> tuple[bytes, int]:
    """The JPEG bytes and the checked label of a raw webdataset sample (only ``jpg`` and ``cls`` are read)."""
    for member in ("jpg", "cls"):
        if member not in sample:
            raise CorruptSample(f"no '{member}' member")
    return sample["jpg"], parse_label(sample["cls"], num_classes)


def read_sample(sample: dict[str, Any], num_classes: int) -> tuple[torch.Tensor, int]:
    """The decoded image and label of a raw webdataset sample."""
    jpeg, label = jpeg_and_label(sample, num_classes)
    return decode_rgb(jpeg), label


def _five_positions(width: int, height: int, crop: int, rng: random.Random) -> tuple[int, int]:
    return rng.choice(five_positions(width, height, crop))


def _random_position(width: int, height: int, crop: int, rng: random.Random) -> tuple[int, int]:
    return rng.randint(0, width - crop), rng.randint(0, height - crop)


TRAIN_CROPS: dict[str, Callable[[int, int, int, random.Random], tuple[int, int]]] = {
    "five": _five_positions,
    "random": _random_position,
}
"""The top-left corner of a train crop, per `data.train_crop` (checked against these names by the datamodule)."""


def crop_window(width: int, height: int, rng: random.Random, mode: TrainCrop = "five",
                crop: int = CROP) -> tuple[int, int, bool]:
    """The random draws of the paper's training view of a ``width`` x ``height`` image: ``(x0, y0, flip)``.

    The top-left corner of a ``crop`` x ``crop`` window at one of five positions (the four corners and the center of
    the whole image) for ``mode="five"``, or at a uniformly random position for ``mode="random"``; then a horizontal
    flip with p=0.5. Both decode paths draw through this function, so they pick the same windows from one RNG.
    """
    if width < crop or height < crop:
        raise CorruptSample(f"image {width}x{height} is smaller than the {crop} crop")
    x0, y0 = TRAIN_CROPS[mode](width, height, crop, rng)
    return x0, y0, rng.random() < 0.5


def train_crop(image: torch.Tensor, rng: random.Random, mode: TrainCrop = "five", crop: int = CROP) -> torch.Tensor:
    """The paper's training view (see :func:`crop_window`) of a (3, H, W) image already resized to shorter side 256.

    Pure indexing on uint8: the result may be a view of ``image``.
    """
    height, width = image.shape[-2:]
    x0, y0, flip = crop_window(width, height, rng, mode, crop)
    window = image[:, y0 : y0 + crop, x0 : x0 + crop]
    return window.flip(-1) if flip else window


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from the parts, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def shard_order(num_shards: int, seed: int, epoch: int) -> Iterator[int]:
    """Endless shard indices for (seed, epoch): one random permutation after another (resampling that still visits
    every shard equally often). The same sequence on every rank and worker."""
    for round_index in range(2**62):
        order = list(range(num_shards))
        random.Random(derive_seed("shards", seed, epoch, round_index)).shuffle(order)
        yield from order


def worker_position() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def shuffled(samples: Iterable[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffles a stream through a buffer of ``buffer_size`` items (pass-through when it is 1 or less)."""
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = sample
    rng.shuffle(buffer)
    yield from buffer


def _is_sample_member(file_name: str) -> bool:
    return file_name.endswith(SAMPLE_MEMBERS)


def shard_samples(path: str, piece: ShardSlice) -> Iterator[dict[str, Any] | MissingSamples | UnlistedSamples]:
    """The raw samples (``__key__``, ``__url__``, ``jpg`` bytes, ``cls`` bytes) of one slice of the shard at ``path``,
    in order; then, if the shard held fewer than the slice's count, one :class:`MissingSamples` for the rest, or, if a
    slice that ends the shard (``to_end``) finds samples past the manifest's count, one :class:`UnlistedSamples`.

    A tar that cannot be opened or ends early (truncated, damaged header) ends the slice there, named in the log once
    per read; a sample cut in two comes out without one of its members and is counted as corrupt where it is read.
    Samples past the manifest's count are not yielded: every rank's pass keeps the length the manifest gives it, so
    that a stale manifest stops (or is counted by) all ranks together instead of one rank running long.
    """
    errors: list[str] = []

    def note_error(exn: Exception) -> bool:
        message = str(exn.args[0]).split(" @ ")[0] if exn.args else str(exn)  # webdataset appends " @ <file object>"
        errors.append(f"{type(exn).__name__}: {message}")
        return True  # go on: webdataset then stops reading this tar at the damage

    read = unlisted = 0
    for position, sample in enumerate(wds.tarfile_to_samples(handler=note_error, select_files=_is_sample_member)(
            [{"url": path}])):
        if position < piece.start:
            continue
        if position >= piece.stop:
            if not piece.to_end:
                break
            unlisted += 1
            continue
        read += 1
        yield sample
    if read < piece.count:
        missing = MissingSamples(path, piece.count - read, errors[0] if errors else "the tar ends early")
        log.warning("%s: %d of the %d samples its manifest lists here were not read (%s); they count as corrupt "
                    "where the sample order reaches them", path, missing.count, piece.count, missing.reason)
        yield missing
    if unlisted:
        log.warning("%s: %d samples past the %d its manifest lists were not read (the shards do not match "
                    "manifest.json); they count as corrupt", path, unlisted, piece.stop)
        yield UnlistedSamples(path, unlisted)


def collate_train(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class EvalBatch(NamedTuple):
    """One batch of a validation or test pass. ``valid`` is False for the samples that pad a rank's last batches (so
    every rank runs the same number of steps); ``keys`` are the samples' ``__key__`` ("" for padding), so that what
    each image got can be written down (per-image outcomes)."""

    views: torch.Tensor
    """uint8: ``[B, 3, 224, 224]`` (validation) or ``[B, V, 3, H, W]`` (a test protocol's V views)."""
    labels: torch.Tensor
    """int64 ``[B]``."""
    valid: torch.Tensor
    """bool ``[B]``."""
    keys: list[str]


def collate_eval(items: list[tuple[torch.Tensor, int, str]]) -> EvalBatch:
    images, labels, keys = zip(*items)
    return EvalBatch(torch.stack(images), torch.tensor(labels, dtype=torch.int64),
                     torch.ones(len(labels), dtype=torch.bool), list(keys))


class TrainStream(IterableDataset):
    """Endless batches ``(uint8 [B, 3, 224, 224], int64 [B])`` of one rank for one epoch; each DataLoader worker
    runs its own copy over its own share of the (seed, epoch) shard order. Only full batches are emitted.

    The consumer decides the epoch length (``WebLoader.with_epoch``). A subclass changes what is made of each sample
    (:meth:`prepare`) and how the items are batched (:meth:`collate`), never the sample order or the RNG draws
    (:class:`~spp_cls.data.stream.jpeg_batch.JpegTrainStream` ships the JPEG bytes and the drawn windows undecoded).
    Iterated directly it logs corrupt and missing samples and goes on; :meth:`batches` also counts them in a tally.
    """

    def __init__(
            self,
            shard_paths: list[str],
            num_classes: int,
            batch_size: int,
            *,
            shard_counts: list[int],
            rank: int,
            world_size: int,
            seed: int,
            epoch: int,
            crop_mode: TrainCrop = "five",
            shuffle_buffer: int = 2000,
    ) -> None:
        super().__init__()
        if not shard_paths:
            raise ValueError("no training shards to stream")
        if len(shard_counts) != len(shard_paths):
            raise ValueError(f"{len(shard_counts)} shard counts for {len(shard_paths)} shards")
        self.shard_paths = list(shard_paths)
        self.shard_counts = list(shard_counts)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch = seed, epoch
        self.crop_mode = crop_mode
        self.shuffle_buffer = shuffle_buffer

    def __iter__(self) -> Iterator[Any]:
        return self.batches(CorruptTally(self.shard_paths))

    def batches(self, tally: CorruptTally) -> Iterator[Any]:
        """This worker's batches; the corrupt and missing samples it meets are logged and counted in ``tally``."""
        worker, workers = worker_position()
        stream_index, streams = self.rank * workers + worker, self.world_size * workers
        rng = random.Random(derive_seed("samples", self.seed, self.epoch, self.rank, worker))
        order = islice(shard_order(len(self.shard_paths), self.seed, self.epoch), stream_index, None, streams)
        samples = chain.from_iterable(
            shard_samples(self.shard_paths[i], ShardSlice(i, 0, self.shard_counts[i], True)) for i in order
        )
        items = self._items(shuffled(samples, self.shuffle_buffer, rng), rng, tally)
        return wds.batched(self.batch_size, collation_fn=self.collate, partial=False)(items)

    def prepare(self, sample: dict[str, Any], rng: random.Random) -> Any:
        """One training item of a raw sample: ``(uint8 crop [3, 224, 224], label)``; raises :class:`CorruptSample`
        before any draw from ``rng`` when the sample cannot be used."""
        image, label = read_sample(sample, self.num_classes)
        return train_crop(image, rng, self.crop_mode), label

    def collate(self, items: list[Any]) -> Any:
        return collate_train(items)

    def _items(self, samples: Iterable[dict[str, Any] | MissingSamples | UnlistedSamples], rng: random.Random,
               tally: CorruptTally) -> Iterator[Any]:
        for sample in samples:
            if not isinstance(sample, dict):
                tally.record_mismatch(sample)
                continue
            try:
                item = self.prepare(sample, rng)
            except CorruptSample as exn:
                tally.record_corrupt(sample.get("__key__", "?"), sample["__url__"], str(exn))
                continue
            yield item


class EvalStream(IterableDataset):
    """:class:`EvalBatch` batches of one rank: DataLoader worker ``w`` reads the shard
    slices ``slices[w]`` once, in order (see :mod:`spp_cls.data.stream.eval_shards`); ``views`` is what
    ``make_views`` returns per image, stacked.

    The last batch of each worker may be partial; corrupt and missing samples are logged, counted and left out (the
    consumer checks the evaluated count against the manifest's total less those).
    """

    def __init__(
            self,
            shard_paths: list[str],
            slices: list[list[ShardSlice]],
            num_classes: int,
            batch_size: int,
            make_views: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.shard_paths = list(shard_paths)
        self.slices = slices
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.make_views = make_views

    def __iter__(self) -> Iterator[EvalBatch]:
        return self.batches(CorruptTally(self.shard_paths))

    def batches(self, tally: CorruptTally) -> Iterator[EvalBatch]:
        """This worker's batches; the corrupt and missing samples it meets are logged and counted in ``tally``."""
        worker, workers = worker_position()
        if workers != len(self.slices):
            raise RuntimeError(f"an evaluation stream planned for {len(self.slices)} loader workers runs on {workers}")
        pieces = self.slices[worker]
        samples = chain.from_iterable(shard_samples(self.shard_paths[piece.shard], piece) for piece in pieces)
        return wds.batched(self.batch_size, collation_fn=collate_eval, partial=True)(self._views(samples, tally))

    def _views(self, samples: Iterable[dict[str, Any] | MissingSamples | UnlistedSamples],
               tally: CorruptTally) -> Iterator[tuple[torch.Tensor, int, str]]:
        for sample in samples:
            if not isinstance(sample, dict):
                tally.record_mismatch(sample)
                continue
            try:
                image, label = read_sample(sample, self.num_classes)
                views = self.make_views(image)
            except CorruptSample as exn:
                tally.record_corrupt(sample.get("__key__", "?"), sample["__url__"], str(exn))
                continue
            yield views, label, sample["__key__"]
