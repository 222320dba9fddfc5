"""The device-decode training path on the CPU device: JPEG header parsing, the same windows, flips and bytes as the CPU
decode path for the same seed, the batch type under Lightning's device transfer, corrupt files, and a real Trainer
whose module decodes in ``on_after_batch_transfer``. Real JPEG bytes, real tar shards (``demo_shards`` and tmp dirs).
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datamodule_probe import RecordingModule, make_trainer, train_digests
from lightning_fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from test_pipeline import jpeg_bytes, write_shards

from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.device_decode import (
    JpegBatch,
    JpegCrop,
    JpegTrainStream,
    collate_jpegs,
    decode_train_batch,
    jpeg_size,
)
from spp_cls.data.stream.pipeline import (
    CorruptSample,
    CorruptSampleBudget,
    TooManyCorruptSamples,
    TrainStream,
    crop_window,
    decode_rgb,
    train_crop,
)


def encoded(width: int, height: int, mode: str = "RGB", seed: int = 0, **options: object) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def with_bogus_huffman_table(data: bytes) -> bytes:
    """A JPEG whose header parses but whose body no decoder reads (its first Huffman table claims 16 x 255 codes)."""
    table = data.index(b"\xff\xc4") + 5
    return data[:table] + bytes([255] * 16) + data[table + 16 :]


def crop_of(jpeg: bytes, width: int, height: int, seed: int, label: int, key: str) -> JpegCrop:
    x0, y0, flip = crop_window(width, height, random.Random(seed))
    return JpegCrop(jpeg, (width, height), (x0, y0), flip, label, key, "shard.tar")


@pytest.mark.parametrize(("width", "height", "mode", "options"), [
    (301, 199, "RGB", {}),
    (256, 341, "RGB", {"progressive": True}),
    (255, 257, "L", {}),
    (260, 256, "L", {"progressive": True}),
    (299, 256, "RGB", {"subsampling": 0, "exif": b"Exif\x00\x00" + bytes(64)}),  # 4:4:4 and an APP1 segment
    (270, 262, "CMYK", {}),
])
def test_jpeg_size_reads_the_frame_header_of_every_kind_of_jpeg(width: int, height: int, mode: str,
                                                                 options: dict) -> None:
    data = encoded(width, height, mode, **options)
    assert jpeg_size(data) == (width, height) == Image.open(io.BytesIO(data)).size
    assert tuple(decode_rgb(data).shape) == (3, height, width)


def test_jpeg_size_skips_fill_bytes_before_a_marker() -> None:
    data = encoded(240, 230)
    frame = data.index(b"\xff\xc0")
    assert jpeg_size(data[:frame] + b"\xff\xff\xff" + data[frame:]) == (240, 230)


DAMAGES = ("empty", "not a jpeg", "cut in the header", "cut before the scan", "cut in the scan", "cut before EOI",
           "12-bit", "scan before the frame")


def damaged(data: bytes) -> dict[str, bytes]:
    frame, scan = data.index(b"\xff\xc0"), data.index(b"\xff\xda")
    return {
        "empty": b"",
        "not a jpeg": b"GIF89a" + data[6:],
        "cut in the header": data[: frame + 5],
        "cut before the scan": data[:scan],
        "cut in the scan": data[: (scan + len(data)) // 2],
        "cut before EOI": data[:-2],
        "12-bit": data[: frame + 4] + b"\x0c" + data[frame + 5 :],
        "scan before the frame": data[:frame] + data[scan:],
    }


@pytest.mark.parametrize("case", DAMAGES)
def test_jpeg_size_rejects_a_damaged_file_that_the_cpu_decoder_rejects_too(case: str) -> None:
    data = damaged(encoded(240, 230))[case]
    with pytest.raises(CorruptSample):
        jpeg_size(data)
    with pytest.raises(CorruptSample):
        decode_rgb(data)


def device_batches(datamodule: ShardDataModule, epoch: int, rank: int, world_size: int) -> list[JpegBatch]:
    return list(datamodule.train_loader(epoch, rank=rank, world_size=world_size))


@pytest.mark.parametrize(("crop_mode", "workers", "world_size"), [("five", 2, 2), ("random", 0, 1)])
def test_device_path_yields_the_cpu_paths_batches_bit_for_bit(demo_shards: Path, crop_mode: str, workers: int,
                                                              world_size: int) -> None:
    options = {"batch_size": 4, "num_workers": workers, "shuffle_buffer": 8, "seed": 3, "train_crop": crop_mode}
    on_cpu = ShardDataModule(str(demo_shards), decode="cpu", **options)
    on_device = ShardDataModule(str(demo_shards), decode="device", **options)
    origins, flips = set(), set()
    for epoch in (0, 1):
        for rank in range(world_size):
            expected = list(on_cpu.train_loader(epoch, rank=rank, world_size=world_size))
            shipped = device_batches(on_device, epoch, rank, world_size)
            assert len(shipped) == len(expected) == 60 // (4 * world_size)
            for batch, (images, labels) in zip(shipped, expected):
                assert isinstance(batch, JpegBatch) and len(batch) == 4
                decoded, decoded_labels = decode_train_batch(batch, "cpu")
                assert decoded.dtype == torch.uint8 and decoded.shape == (4, 3, 224, 224) and decoded.is_contiguous()
                assert torch.equal(decoded, images) and torch.equal(decoded_labels, labels)
                origins.update(batch.origins)
                flips.update(batch.flips)
    assert flips == {False, True} and len(origins) >= (5 if crop_mode == "five" else 20)


def test_a_batch_holds_each_files_window_and_flip(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=6, num_workers=0, decode="device", seed=1)
    batch = device_batches(datamodule, 0, 0, 1)[0]
    images, _ = decode_train_batch(batch, "cpu")
    for jpeg, size, (x0, y0), flip, image in zip(batch.jpegs(), batch.sizes, batch.origins, batch.flips, images):
        whole = decode_rgb(jpeg.numpy().tobytes())
        assert size == (whole.shape[-1], whole.shape[-2]) and min(size) == 256
        window = whole[:, y0 : y0 + 224, x0 : x0 + 224]
        assert torch.equal(image, window.flip(-1) if flip else window)


def test_lightning_moves_the_labels_and_leaves_the_jpeg_bytes_on_the_cpu(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=4, num_workers=0, decode="device")
    batch = device_batches(datamodule, 0, 0, 1)[0]
    moved = move_data_to_device(batch, torch.device("meta"))  # what transfer_batch_to_device does, on a non-CPU device
    assert isinstance(moved, JpegBatch)
    assert moved.labels.device.type == "meta" and moved.data.device.type == "cpu"
    assert all(jpeg.device.type == "cpu" for jpeg in moved.jpegs())


def test_header_corrupt_samples_are_skipped_before_any_draw_as_on_the_cpu_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = jpeg_bytes(240, 232, seed=3)
    paths = write_shards(tmp_path, [6], extra={2: {"jpg": b"garbage"}, 3: {"jpg": good[: len(good) // 2]}})
    options = {"rank": 0, "world_size": 1, "seed": 0, "epoch": 0, "shuffle_buffer": 0, "shard_counts": [6]}
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.pipeline"):
        shipped = [batch for _, batch in zip(range(4), JpegTrainStream(paths, 6, 2, **options))]
    expected = [batch for _, batch in zip(range(4), TrainStream(paths, 6, 2, **options))]
    for batch, (images, labels) in zip(shipped, expected):
        decoded, decoded_labels = decode_train_batch(batch, "cpu")
        assert torch.equal(decoded, images) and torch.equal(decoded_labels, labels)
        assert not {2, 3} & set(labels.tolist())
    assert f"img00002 in {paths[0]}: not a JPEG file" in caplog.text
    assert f"img00003 in {paths[0]}: JPEG is truncated (no EOI marker after the scan)" in caplog.text


def test_a_file_that_does_not_decode_is_replaced_by_the_next_good_sample_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    files = [jpeg_bytes(240, 232, seed=seed) for seed in range(4)]
    files[1] = with_bogus_huffman_table(files[1])
    assert jpeg_size(files[1]) == (240, 232)
    batch = collate_jpegs([crop_of(jpeg, 240, 232, seed, 10 + seed, f"k{seed}") for seed, jpeg in enumerate(files)])
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.device_decode"):
        images, labels = decode_train_batch(batch, "cpu")
    assert labels.tolist() == [10, 12, 12, 13] and images.shape == (4, 3, 224, 224)
    assert torch.equal(images[1], images[2])
    single, _ = decode_train_batch(collate_jpegs([crop_of(files[2], 240, 232, 2, 12, "k2")]), "cpu")
    assert torch.equal(images[2], single[0])
    assert "corrupt sample k1 in shard.tar: JPEG does not decode: Bogus Huffman table definition; replaced in its " \
           "batch by k2" in caplog.text


def test_a_decode_failure_counts_against_the_budget() -> None:
    files = [jpeg_bytes(240, 232, seed=0), with_bogus_huffman_table(jpeg_bytes(240, 232, seed=1))]
    batch = collate_jpegs([crop_of(jpeg, 240, 232, seed, seed, f"k{seed}") for seed, jpeg in enumerate(files)])
    budget = CorruptSampleBudget(max_fraction=0.5, min_samples=1)
    decode_train_batch(batch, "cpu", budget)
    assert (budget.seen, budget.corrupt) == (2, 1)
    with pytest.raises(TooManyCorruptSamples, match="k1 in shard shard.tar: JPEG does not decode"):
        decode_train_batch(batch, "cpu", CorruptSampleBudget(max_fraction=0.0))


def test_a_file_that_decodes_to_another_size_than_its_header_said_is_replaced() -> None:
    files = [jpeg_bytes(240, 232, seed=0), jpeg_bytes(250, 240, seed=1)]
    items = [crop_of(files[0], 240, 232, 0, 0, "k0"), crop_of(files[1], 240, 232, 1, 1, "k1")]  # k1 is 250x240
    images, labels = decode_train_batch(collate_jpegs(items), "cpu")
    assert labels.tolist() == [0, 0] and torch.equal(images[0], images[1])


def test_a_batch_where_nothing_decodes_stops_naming_a_file() -> None:
    bad = with_bogus_huffman_table(jpeg_bytes(240, 232))
    batch = collate_jpegs([crop_of(bad, 240, 232, seed, 0, f"k{seed}") for seed in range(2)])
    with pytest.raises(TooManyCorruptSamples, match="no file of a training batch of 2 decodes .*k0 in shard.tar"):
        decode_train_batch(batch, "cpu")


def test_train_crop_and_the_header_path_draw_the_same_windows() -> None:
    image = decode_rgb(jpeg_bytes(250, 230))
    for mode in ("five", "random"):
        on_image, from_size = random.Random(4), random.Random(4)
        for _ in range(50):
            x0, y0, flip = crop_window(250, 230, from_size, mode)
            window = image[:, y0 : y0 + 224, x0 : x0 + 224]
            assert torch.equal(train_crop(image, on_image, mode), window.flip(-1) if flip else window)


def test_an_unknown_decode_is_refused(demo_shards: Path) -> None:
    with pytest.raises(ValueError, match="unknown decode 'gpu'; known: cpu, device"):
        ShardDataModule(str(demo_shards), decode="gpu")  # type: ignore[arg-type]


def test_a_real_trainer_gets_decoded_batches_equal_to_the_cpu_paths(demo_shards: Path) -> None:
    options = {"batch_size": 4, "num_workers": 2, "shuffle_buffer": 8, "seed": 7}
    datamodule = ShardDataModule(str(demo_shards), decode="device", **options)
    module = RecordingModule()  # a module that knows nothing of JPEGs: the datamodule's hook decodes after transfer
    make_trainer(max_epochs=2).fit(module, datamodule=datamodule)
    on_cpu = ShardDataModule(str(demo_shards), **options)
    for epoch in (0, 1):
        recorded = [batch["digests"] for batch in module.records["train"] if batch["epoch"] == epoch]
        assert recorded == train_digests(on_cpu, epoch, 0, 1)
    assert datamodule.decode_budget.seen == 2 * 60 and datamodule.decode_budget.corrupt == 0
