"""Training batches that leave the loader workers still JPEG-encoded (``data.decode: device``).

A worker of :class:`JpegTrainStream` reads each JPEG's size from its header (:func:`jpeg_size`; no pixel is decoded),
draws the crop window and the flip exactly as the CPU path does (same shard order, shuffle and
:func:`~spp_cls.data.stream.pipeline.crop_window` draws for the same seed, epoch, rank and worker) and yields
:class:`JpegBatch` values. :class:`~spp_cls.data.stream.nvimgcodec_decode.BatchDecoder` decodes them on the training
device.

A sample whose header does not parse (not a JPEG, no frame header, truncated: no EOI marker after the scan, smaller
than the crop) is logged, counted and skipped here exactly like on the CPU path, before any RNG draw. A file whose
header parses but whose body does not decode has had its window drawn, so from that sample on the draws of the two
paths part (the decoder counts it and fills its slot, see its module).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from spp_cls.data.stream.pipeline import CorruptSample, TrainStream, crop_window, jpeg_and_label

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


@dataclass
class JpegBatch:
    """A training batch whose images are still JPEG files; a
    :class:`~spp_cls.data.stream.nvimgcodec_decode.BatchDecoder` turns it into ``(uint8 [B, 3, 224, 224], int64
    labels [B])`` on a device.

    Not frozen: Lightning's ``bf16-true`` / ``16-true`` precision plugins rebuild a dataclass batch field by field
    (``apply_to_collection``) before it is transferred, and refuse a frozen one. Nothing here changes a batch: ``to``
    and ``pin_memory`` return new ones.

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
        """Moves the labels only: nvImageCodec reads the JPEG bytes from host memory whatever device decodes them.

        Lightning's ``transfer_batch_to_device`` calls this (it moves any object with a ``to`` method as a whole, and
        passes ``non_blocking`` to plain tensors only), so the copy to a CUDA device is non-blocking unless asked
        otherwise: from pinned labels (see ``pin_memory``) it neither waits for the device nor stalls its queue.
        """
        kwargs.setdefault("non_blocking", torch.device(device).type == "cuda")
        return replace(self, labels=self.labels.to(device, **kwargs))

    def pin_memory(self) -> JpegBatch:
        """The batch with its labels in pinned host memory: the DataLoader's pin thread calls this where it pins
        (``pin_memory=True``). The JPEG bytes stay in their shared-memory block: nvImageCodec reads them on the
        host."""
        return replace(self, labels=self.labels.pin_memory())

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
    """:class:`~spp_cls.data.stream.pipeline.TrainStream` that yields :class:`JpegBatch` values: no JPEG is decoded in
    the loader workers. Same shards, shuffle and crop draws as the CPU path for the same arguments."""

    def prepare(self, sample: dict[str, Any], rng: random.Random) -> JpegCrop:
        jpeg, label = jpeg_and_label(sample, self.num_classes)
        width, height = jpeg_size(jpeg)
        x0, y0, flip = crop_window(width, height, rng, self.crop_mode)
        return JpegCrop(jpeg, (width, height), (x0, y0), flip, label, sample.get("__key__", "?"),
                        sample.get("__url__", "?"))

    def collate(self, items: list[JpegCrop]) -> JpegBatch:
        return collate_jpegs(items)
