"""Training batches decoded on the accelerator: the loader workers ship JPEG bytes, the device decodes, crops, flips.

``ShardDataModule(decode="device")`` trains from :class:`JpegTrainStream`: a worker reads each JPEG's size from its
header (no pixel is decoded), draws the crop window and the flip exactly as the CPU path does (same shard order,
shuffle and :func:`~spp_cls.data.stream.pipeline.crop_window` draws for the same seed, epoch, rank and worker) and yields
:class:`JpegBatch` values. :func:`decode_train_batch` then decodes the whole batch in one
``torchvision.io.decode_jpeg(list, device=...)`` call (nvJPEG on CUDA, libjpeg-turbo on the CPU) and crops and flips
on the device. With device CPU the result equals the CPU path's batch byte for byte (the same libjpeg-turbo call);
on CUDA the windows and flips are the same but the pixels may differ by a few levels, as nvJPEG's IDCT and chroma
upsampling are not libjpeg-turbo's.

Only training moves: validation and test keep the CPU decode path (their views are cut and resized from the decoded
image by :mod:`spp_cls.data.stream.views`, and an evaluation pass is a small part of a run).

Corrupt samples ("logged and counted, not fatal"):
- in the worker, a sample whose header does not parse (not a JPEG, no frame header, truncated: no EOI marker after
  the scan, smaller than the crop) is logged, counted and skipped exactly like on the CPU path, before any RNG draw;
- on the device, one bad file fails the batched call as a whole; the batch is then decoded one file at a time, a file
  nvJPEG rejects is decoded on the CPU (libjpeg-turbo reads JPEG variants nvJPEG may not, e.g. CMYK),
  and a file no decoder reads is logged, counted (``budget``) and replaced by another sample of the same batch
  (image and label), so the batch keeps its static shape.

On CUDA the caller's stream is drained before each decode call: torchvision's decoder does not order its own
stream after it (see ``_decode_files``). The price: the previous training step finishes before the next batch decodes,
so decode and training no longer overlap on the GPU (torchvision's decode ends in a host sync anyway).

NOTE: what remains: a file whose header parses but whose body no decoder reads has had its crop drawn in the worker,
so from that sample on the RNG draws of the two paths part; nvJPEG's hardware decoder may return garbage pixels for
a damaged scan instead of failing (libjpeg-turbo also decodes most damaged scans, with a warning).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from spp_cls.data.stream.pipeline import (
    CorruptSample,
    CorruptSampleBudget,
    TooManyCorruptSamples,
    TrainStream,
    crop_window,
    decode_rgb,
    jpeg_and_label,
)
from spp_cls.data.stream.views import CROP

log = logging.getLogger(__name__)

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic): they carry the size.
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are tables.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
_SOS, _SOI, _EOI = 0xDA, 0xD8, 0xD9


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, read from its frame header; checks the file's structure on the way.

    Reads the marker segments up to the first scan (no pixel is decoded) and checks that an EOI marker follows it:
    entropy-coded data never holds 0xFFD9, so a file cut anywhere after its header has none (libjpeg-turbo refuses
    such a file too). Raises :class:`CorruptSample` naming what is wrong.
    """
    if data[:2] != b"\xff\xd8":
        raise CorruptSample("not a JPEG file (no SOI marker)")
    size: tuple[int, int] | None = None
    position, end = 2, len(data)
    while True:
        if position >= end:
            raise CorruptSample("JPEG header is truncated (no scan)")
        if data[position] != 0xFF:
            raise CorruptSample(f"JPEG header has no marker at byte {position}")
        while position < end and data[position] == 0xFF:  # a marker may be preceded by any number of fill bytes
            position += 1
        if position >= end:
            raise CorruptSample("JPEG header is truncated (no scan)")
        marker = data[position]
        position += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (_SOI, _EOI):
            raise CorruptSample(f"JPEG header has a misplaced marker 0x{marker:02X} at byte {position - 1}")
        if position + 2 > end:
            raise CorruptSample("JPEG header is truncated (no scan)")
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > end:
            raise CorruptSample(f"JPEG segment 0x{marker:02X} at byte {position - 1} runs past the end of the file")
        if marker in _SOF_MARKERS:
            if size is not None:
                raise CorruptSample("JPEG has a second frame header (hierarchical JPEG is not supported)")
            if length < 8:
                raise CorruptSample(f"JPEG frame header of {length} bytes is too short")
            precision, components = data[position + 2], data[position + 7]
            height = int.from_bytes(data[position + 3 : position + 5], "big")
            width = int.from_bytes(data[position + 5 : position + 7], "big")
            if precision != 8:  # as libjpeg-turbo's 8-bit API, which the CPU path decodes with
                raise CorruptSample(f"JPEG of {precision}-bit samples (only 8-bit JPEGs decode)")
            if components not in (1, 3, 4):
                raise CorruptSample(f"JPEG with {components} colour components (1, 3 or 4 decode)")
            if width == 0 or height == 0:
                raise CorruptSample(f"JPEG frame header gives the size {width}x{height}")
            size = (width, height)
        elif marker == _SOS:
            if size is None:
                raise CorruptSample("JPEG scan comes before any frame header")
            if data.rfind(b"\xff\xd9", position + length) < 0:
                raise CorruptSample("JPEG is truncated (no EOI marker after the scan)")
            return size
        position += length


class JpegCrop(NamedTuple):
    """One training sample as the worker ships it: the JPEG bytes, its size and the drawn window and flip."""

    jpeg: bytes
    size: tuple[int, int]
    origin: tuple[int, int]
    flip: bool
    label: int
    key: str
    shard: str


@dataclass(frozen=True)
class JpegBatch:
    """A training batch whose images are still JPEG files; :func:`decode_train_batch` turns it into
    ``(uint8 [B, 3, 224, 224], int64 labels [B])`` on a device.

    Attributes:
        data: the B JPEG files back to back in one uint8 CPU tensor (one shared-memory block per batch between the
            loader workers and the trainer, not B).
        offsets: B + 1 byte offsets; file i is ``data[offsets[i]:offsets[i + 1]]``.
        sizes: (width, height) of each image from its header.
        origins: (x0, y0) of each 224 x 224 crop window.
        flips: whether each crop is mirrored.
        labels: int64 [B].
        keys, shards: where each sample comes from (named in the log when one does not decode).
    """

    data: torch.Tensor
    offsets: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    origins: tuple[tuple[int, int], ...]
    flips: tuple[bool, ...]
    labels: torch.Tensor
    keys: tuple[str, ...]
    shards: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.sizes)

    def to(self, device: torch.device | str, **kwargs: Any) -> JpegBatch:
        """Moves the labels only: ``decode_jpeg`` wants the JPEG bytes on the CPU whatever device decodes them.

        Lightning's ``transfer_batch_to_device`` calls this (it moves any object with a ``to`` method as a whole).
        """
        return replace(self, labels=self.labels.to(device, **kwargs))

    def jpegs(self) -> list[torch.Tensor]:
        """The files as 1-D uint8 CPU tensors (views of ``data``)."""
        return [self.data[start:stop] for start, stop in zip(self.offsets, self.offsets[1:])]


def collate_jpegs(items: list[JpegCrop]) -> JpegBatch:
    offsets = [0]
    for item in items:
        offsets.append(offsets[-1] + len(item.jpeg))
    data = torch.frombuffer(bytearray().join(item.jpeg for item in items), dtype=torch.uint8)
    return JpegBatch(
        data=data, offsets=tuple(offsets), sizes=tuple(item.size for item in items),
        origins=tuple(item.origin for item in items), flips=tuple(item.flip for item in items),
        labels=torch.tensor([item.label for item in items], dtype=torch.int64),
        keys=tuple(item.key for item in items), shards=tuple(item.shard for item in items),
    )


class JpegTrainStream(TrainStream):
    """:class:`~spp_cls.data.stream.pipeline.TrainStream` that yields :class:`JpegBatch` values: no JPEG is decoded in the
    loader workers. Same shards, shuffle and crop draws as the CPU path for the same arguments."""

    def prepare(self, sample: dict[str, Any], rng: random.Random) -> JpegCrop:
        jpeg, label = jpeg_and_label(sample, self.num_classes)
        width, height = jpeg_size(jpeg)
        x0, y0, flip = crop_window(width, height, rng, self.crop_mode)
        return JpegCrop(jpeg, (width, height), (x0, y0), flip, label, sample.get("__key__", "?"),
                        sample.get("__url__", "?"))

    def collate(self, items: list[JpegCrop]) -> JpegBatch:
        return collate_jpegs(items)


def decode_train_batch(batch: JpegBatch, device: torch.device | str,
                       budget: CorruptSampleBudget | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes, crops and flips a :class:`JpegBatch` on ``device``: ``(uint8 [B, 3, 224, 224], int64 [B])``.

    One batched ``decode_jpeg`` call (nvJPEG on CUDA: hardware decoder for baseline files on A100/H100, CUDA kernels
    otherwise); if it fails, the files are decoded one at a time (see the module docstring). A file no decoder reads,
    or one that decodes to another size than its header gave, is replaced by the next good sample of the batch; it is
    recorded in ``budget`` (which logs it and may raise :class:`TooManyCorruptSamples`) or, without a budget, logged.
    """
    device = torch.device(device)
    images = _decode_files(batch, device)
    source = _replacements(batch, images, budget)
    crops = torch.stack([_window(images[j], batch.origins[j]) for j in source])
    flipped = [i for i, j in enumerate(source) if batch.flips[j]]
    if flipped:
        index = torch.tensor(flipped, device=device)
        crops[index] = crops[index].flip(-1)
    labels = batch.labels.to(device)
    if source != list(range(len(batch))):
        labels = labels[torch.tensor(source, device=device)]
    return crops, labels


def _window(image: torch.Tensor, origin: tuple[int, int]) -> torch.Tensor:
    x0, y0 = origin
    return image[:, y0 : y0 + CROP, x0 : x0 + CROP]


def _decode_files(batch: JpegBatch, device: torch.device) -> list[torch.Tensor | CorruptSample]:
    """Each file decoded to RGB on ``device``, or the :class:`CorruptSample` saying why it is not."""
    files = batch.jpegs()
    if device.type == "cuda":
        # NOTE torchvision's CUDA decoder allocates its outputs on the caller's stream but writes them from a private
        # stream that does not wait for the caller's (pytorch/vision#9606): a block freed by the last training step,
        # still read by kernels queued on the caller's stream, gets overwritten. Measured on an H200 (torchvision
        # 0.26, CUDA 13), decoding 128-image batches between training steps: without this wait 42 of 1,920 images
        # came out corrupt, then nvJPEG failed with a sticky CUDA error; with it, 0 of 3,200 in 25 batches.
        torch.cuda.current_stream(device).synchronize()
    try:
        images: list[torch.Tensor | CorruptSample] = list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails the batched call without partial results: find it
        images = [_decode_one(jpeg, device, batch.keys[i]) for i, jpeg in enumerate(files)]
    for i, image in enumerate(images):
        if isinstance(image, torch.Tensor) and (image.shape[-1], image.shape[-2]) != batch.sizes[i]:
            width, height = batch.sizes[i]
            images[i] = CorruptSample(f"decoded to {image.shape[-1]}x{image.shape[-2]} but its header says "
                                      f"{width}x{height}")
    return images


def _decode_one(jpeg: torch.Tensor, device: torch.device, key: str) -> torch.Tensor | CorruptSample:
    if device.type != "cpu":
        try:
            return decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exn:
            log.warning("%s: decode_jpeg on %s failed (%s); decoding it on the CPU", key, device, exn)
    try:
        return decode_rgb(jpeg.numpy().tobytes()).to(device)
    except CorruptSample as exn:
        return exn


def _replacements(batch: JpegBatch, images: list[torch.Tensor | CorruptSample],
                  budget: CorruptSampleBudget | None) -> list[int]:
    """``source[i]``: the sample whose image and label fill slot i (i itself when it decoded)."""
    good = [i for i, image in enumerate(images) if isinstance(image, torch.Tensor)]
    if not good:
        raise TooManyCorruptSamples(
            f"no file of a training batch of {len(batch)} decodes (the first: {batch.keys[0]} in {batch.shards[0]}: "
            f"{images[0]}); check the shards with `spp-cls shards --verify ROOT`"
        )
    source = list(range(len(batch)))
    for i, image in enumerate(images):
        if isinstance(image, torch.Tensor):
            if budget is not None:
                budget.record_good()
            continue
        source[i] = next((j for j in good if j > i), good[0])
        reason = f"{image}; replaced in its batch by {batch.keys[source[i]]}"
        if budget is None:
            log.warning("corrupt sample %s in %s: %s", batch.keys[i], batch.shards[i], reason)
        else:
            budget.record_corrupt(batch.keys[i], batch.shards[i], reason)
    return source
