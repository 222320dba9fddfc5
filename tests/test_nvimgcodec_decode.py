"""``data.decode: device`` on the CPU, where nvImageCodec runs its CPU backend: JPEG header parsing in the workers, the
same windows, flips, labels and bytes as the CPU decode path for the same seed (region and whole-image decode), the
batch type under Lightning's device transfer, corrupt files, a real Trainer whose datamodule decodes in
``on_after_batch_transfer``, and `spp-cls fit` + the exact 10-view test. Real JPEG bytes, real tar shards
(``demo_shards`` and tmp dirs). The CUDA side (streams, GPU backends) is in tests/test_cuda.py.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from datamodule_probe import RecordingModule, make_trainer, train_digests
from helpers import (
    cpu_args,
    crop_of,
    decode_failures,
    noise_jpeg,
    read_summary,
    run_hard_timeout,
    with_bogus_huffman_table,
    write_shards,
)
from lightning_fabric.utilities.apply_func import move_data_to_device
from PIL import Image

from spp_cls.cli import main
from spp_cls.data.stream import nvimgcodec_decode
from spp_cls.data.stream.corrupt import DecodeFailures, TooManyCorruptSamples
from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.jpeg_batch import JpegBatch, JpegCrop, JpegTrainStream, collate_jpegs, jpeg_size
from spp_cls.data.stream.nvimgcodec_decode import BatchDecoder, NvImageCodecMissing
from spp_cls.data.stream.pipeline import (
    CorruptSample,
    TrainStream,
    crop_window,
    decode_rgb,
    train_crop,
)
from spp_cls.view_protocols import VIEW_PROTOCOLS


def encoded(width: int, height: int, mode: str = "RGB", seed: int = 0, **options: object) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


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


def decoded(batch: JpegBatch, budget: DecodeFailures | None = None,
            region: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    return BatchDecoder("cpu", budget=budget, region=region)(batch)


@pytest.mark.parametrize(("width", "height", "mode", "options"), [
    (301, 257, "RGB", {}),  # 4:2:0
    (256, 341, "RGB", {"progressive": True}),
    (299, 256, "RGB", {"subsampling": 1}),  # 4:2:2
    (299, 256, "RGB", {"subsampling": 0}),  # 4:4:4
    (255, 257, "L", {}),
    (270, 262, "CMYK", {}),
])
@pytest.mark.parametrize("region", [True, False], ids=["region", "whole"])
def test_every_kind_of_jpeg_decodes_to_the_cpu_paths_window(width: int, height: int, mode: str, options: dict,
                                                            region: bool) -> None:
    """Windows at odd offsets too, where a region starts inside a chroma block of a subsampled file."""
    jpeg = encoded(width, height, mode, seed=width, **options)
    whole = decode_rgb(jpeg)
    rng = random.Random(0)
    origins = [(0, 0), (width - 224, height - 224), *((rng.randint(0, width - 224), rng.randint(0, height - 224))
                                                      for _ in range(6))]
    items = [JpegCrop(jpeg, (width, height), origin, i % 2 == 1, i, f"k{i}", "s.tar")
             for i, origin in enumerate(origins)]
    images, labels = decoded(collate_jpegs(items), region=region)
    assert labels.tolist() == list(range(len(origins)))
    for i, (x0, y0) in enumerate(origins):
        window = whole[:, y0 : y0 + 224, x0 : x0 + 224]
        assert torch.equal(images[i], window.flip(-1) if i % 2 else window), (x0, y0)


@pytest.mark.parametrize(("crop_mode", "workers", "world_size", "region"),
                         [("five", 2, 2, True), ("random", 0, 1, True), ("five", 0, 1, False)])
def test_device_path_yields_the_cpu_paths_batches_bit_for_bit(demo_shards: Path, crop_mode: str, workers: int,
                                                              world_size: int, region: bool) -> None:
    options = {"batch_size": 4, "num_workers": workers, "shuffle_buffer": 8, "seed": 3, "train_crop": crop_mode}
    on_cpu = ShardDataModule(str(demo_shards), decode="cpu", **options)
    on_device = ShardDataModule(str(demo_shards), decode="device", **options)
    decoder = BatchDecoder("cpu", region=region)
    origins, flips = set(), set()
    for epoch in (0, 1):
        for rank in range(world_size):
            expected = list(on_cpu.train_loader(epoch, rank=rank, world_size=world_size))
            shipped = device_batches(on_device, epoch, rank, world_size)
            assert len(shipped) == len(expected) == 60 // (4 * world_size)
            for batch, (images, labels) in zip(shipped, expected):
                assert isinstance(batch, JpegBatch) and len(batch) == 4
                crops, crop_labels = decoder(batch)
                assert crops.dtype == torch.uint8 and crops.shape == (4, 3, 224, 224) and crops.is_contiguous()
                assert torch.equal(crops, images) and torch.equal(crop_labels, labels)
                origins.update(batch.origins)
                flips.update(batch.flips)
    assert flips == {False, True} and len(origins) >= (5 if crop_mode == "five" else 20)
    assert decoder.cpu_fallbacks == 0


def test_a_decoded_batch_stays_intact_while_the_next_ones_decode(demo_shards: Path) -> None:
    """No output buffer of the decoder is reused: the batch a step still trains on keeps its pixels."""
    datamodule = ShardDataModule(str(demo_shards), batch_size=6, num_workers=0, decode="device", seed=2)
    decoder = datamodule.device_decoder(torch.device("cpu"))
    batches = device_batches(datamodule, 0, 0, 1)
    first, _ = decoder(batches[0])
    kept = first.clone()
    for batch in batches[1:]:
        decoder(batch)
    assert torch.equal(first, kept) and datamodule.device_decoder(torch.device("cpu")) is decoder


def test_a_batch_holds_each_files_window_and_flip(demo_shards: Path) -> None:
    datamodule = ShardDataModule(str(demo_shards), batch_size=6, num_workers=0, decode="device", seed=1)
    batch = device_batches(datamodule, 0, 0, 1)[0]
    images, _ = decoded(batch)
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
    good = noise_jpeg(240, 232, seed=3)
    paths = write_shards(tmp_path, [6], extra={2: {"jpg": b"garbage"}, 3: {"jpg": good[: len(good) // 2]}})
    options = {"rank": 0, "world_size": 1, "seed": 0, "epoch": 0, "shuffle_buffer": 0, "shard_counts": [6]}
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.pipeline"):
        shipped = [batch for _, batch in zip(range(4), JpegTrainStream(paths, 6, 2, **options))]
    expected = [batch for _, batch in zip(range(4), TrainStream(paths, 6, 2, **options))]
    for batch, (images, labels) in zip(shipped, expected):
        crops, crop_labels = decoded(batch)
        assert torch.equal(crops, images) and torch.equal(crop_labels, labels)
        assert not {2, 3} & set(labels.tolist())
    assert f"img00002 in {paths[0]}: not a JPEG file" in caplog.text
    assert f"img00003 in {paths[0]}: JPEG is truncated (no EOI marker after the scan)" in caplog.text


def test_a_file_that_does_not_decode_is_counted_named_and_replaced_by_the_next_good_sample(
        caplog: pytest.LogCaptureFixture) -> None:
    files = [noise_jpeg(240, 232, seed=seed) for seed in range(4)]
    files[1] = with_bogus_huffman_table(files[1])
    assert jpeg_size(files[1]) == (240, 232)
    batch = collate_jpegs([crop_of(jpeg, 240, 232, seed, 10 + seed, f"k{seed}") for seed, jpeg in enumerate(files)])
    failures, epoch_budget = decode_failures(samples=4, max_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.corrupt"):
        images, labels = decoded(batch, failures)
    assert labels.tolist() == [10, 12, 12, 13] and images.shape == (4, 3, 224, 224)
    assert torch.equal(images[1], images[2])
    single, _ = decoded(collate_jpegs([crop_of(files[2], 240, 232, 2, 12, "k2")]))
    assert torch.equal(images[2], single[0])
    # one corrupt sample (row 0), none past a manifest count (row 1)
    assert (failures.seen, failures.corrupt) == (4, 1) and epoch_budget.local.tolist() == [[1], [0]]
    assert "corrupt sample k1 in shard.tar: JPEG does not decode: Bogus Huffman table definition; replaced in its " \
           "batch by k2" in caplog.text
    epoch_budget.judge()  # 1 of 4 is within max_corrupt_fraction 0.5


def test_a_decode_failure_is_judged_with_the_training_epochs_budget_naming_its_shard(demo_shards: Path) -> None:
    """Under the datamodule a file the device cannot read goes into the epoch's CorruptBudget, which every rank
    judges at the same batch; past the budget the run stops naming the shard, as for the workers' reports."""
    datamodule = ShardDataModule(str(demo_shards), decode="device", max_corrupt_fraction=0.0)
    shard = datamodule.train_manifest.shard_paths[3]
    files = [noise_jpeg(240, 232, seed=0), with_bogus_huffman_table(noise_jpeg(240, 232, seed=1))]
    batch = collate_jpegs([crop_of(jpeg, 240, 232, seed, seed, f"k{seed}")._replace(shard=str(shard))
                           for seed, jpeg in enumerate(files)])
    decoder = datamodule.device_decoder(torch.device("cpu"))
    decoder(batch)  # before the first epoch: logged and counted only
    assert (datamodule.decode_failures.seen, datamodule.decode_failures.corrupt) == (2, 1)
    budget = datamodule._budget(datamodule.train_manifest, "training epoch 0", 0, 1)
    datamodule.budgets["fit"] = budget
    decoder(batch)
    assert budget.local[0, 3] == 1 and budget.local.sum() == 1  # row 0: corrupt or missing
    with pytest.raises(TooManyCorruptSamples, match=f"{shard.name} \\(1\\)"):
        budget.judge()


def test_a_file_whose_size_is_not_the_one_its_window_was_drawn_for_is_replaced() -> None:
    files = [noise_jpeg(240, 232, seed=0), noise_jpeg(250, 240, seed=1)]
    items = [crop_of(files[0], 240, 232, 0, 0, "k0"), crop_of(files[1], 240, 232, 1, 1, "k1")]  # k1 is 250x240
    failures, _ = decode_failures(samples=2, max_fraction=0.5)
    images, labels = decoded(collate_jpegs(items), failures)
    assert labels.tolist() == [0, 0] and torch.equal(images[0], images[1]) and failures.corrupt == 1


def test_a_batch_where_nothing_decodes_stops_naming_a_file() -> None:
    bad = with_bogus_huffman_table(noise_jpeg(240, 232))
    batch = collate_jpegs([crop_of(bad, 240, 232, seed, 0, f"k{seed}") for seed in range(2)])
    with pytest.raises(TooManyCorruptSamples, match="no file of a training batch of 2 decodes .*k0 in shard.tar"):
        decoded(batch)


def test_train_crop_and_the_header_path_draw_the_same_windows() -> None:
    image = decode_rgb(noise_jpeg(250, 230))
    for mode in ("five", "random"):
        on_image, from_size = random.Random(4), random.Random(4)
        for _ in range(50):
            x0, y0, flip = crop_window(250, 230, from_size, mode)
            window = image[:, y0 : y0 + 224, x0 : x0 + 224]
            assert torch.equal(train_crop(image, on_image, mode), window.flip(-1) if flip else window)


def test_unknown_or_impossible_decode_settings_are_refused(demo_shards: Path) -> None:
    with pytest.raises(ValueError, match="unknown decode 'gpu'; known: cpu, device"):
        ShardDataModule(str(demo_shards), decode="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown decode_backend 'nvjpeg'; known: auto, hardware, cuda, hybrid, cpu"):
        ShardDataModule(str(demo_shards), decode="device", decode_backend="nvjpeg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_backend 'hardware' needs a CUDA device"):
        BatchDecoder("cpu", "hardware")


def test_without_nvimgcodec_device_decode_is_one_error_naming_the_package(demo_shards: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # what `import` meets where it is not installed
    nvimgcodec_decode.load_nvimgcodec.cache_clear()
    try:
        with pytest.raises(NvImageCodecMissing, match=r"needs NVIDIA nvImageCodec: pip install 'spp-cls\[gpu-dec"):
            ShardDataModule(str(demo_shards), decode="device")
        ShardDataModule(str(demo_shards), decode="cpu")  # the CPU path does not need it
    finally:
        nvimgcodec_decode.load_nvimgcodec.cache_clear()


@pytest.mark.parametrize("protocol", list(VIEW_PROTOCOLS))
def test_every_test_protocol_gets_the_cpu_paths_views_under_device_decode(demo_shards: Path, protocol: str) -> None:
    """Evaluation decodes on the CPU loader workers whatever data.decode says (the first batches here; the whole
    10-view pass, each image once, in the fit test below)."""
    options = {"batch_size": 4, "num_workers": 0, "eval_batch_size": 2, "test_views": protocol}
    on_device = list(islice(ShardDataModule(str(demo_shards), decode="device", **options).eval_loader("test"), 3))
    on_cpu = list(islice(ShardDataModule(str(demo_shards), decode="cpu", **options).eval_loader("test"), 3))
    assert len(on_device) == len(on_cpu) == 3
    for batch, expected in zip(on_device, on_cpu):
        assert batch.views.shape[1] == VIEW_PROTOCOLS[protocol].views_per_image and batch.keys == expected.keys
        assert all(torch.equal(got, want) for got, want in zip(batch[:3], expected[:3]))


def test_loading_nvimgcodec_prints_nothing_about_codecs_never_used() -> None:
    """Importing nvImageCodec prints four lines about its JPEG 2000 and TIFF extensions (their libraries are not
    installed); a training log shows none of them, and decoding still works in that process."""
    script = ("from spp_cls.data.stream.nvimgcodec_decode import BatchDecoder, load_nvimgcodec; "
              "print(load_nvimgcodec().__version__); print(BatchDecoder('cpu').description)")
    environment = {key: value for key, value in os.environ.items() if key != "PYNVIMGCODEC_VERBOSITY"}
    run = run_hard_timeout([sys.executable, "-c", script], timeout=120, env=environment)
    assert run.returncode == 0, run.stdout
    assert run.stdout.splitlines() == ["0.9.0", "nvImageCodec 0.9.0 on cpu (cpu backend, 224 regions)"]


def test_a_real_trainer_gets_decoded_batches_equal_to_the_cpu_paths(demo_shards: Path) -> None:
    options = {"batch_size": 4, "num_workers": 2, "shuffle_buffer": 8, "seed": 7}
    datamodule = ShardDataModule(str(demo_shards), decode="device", **options)
    module = RecordingModule()  # a module that knows nothing of JPEGs: the datamodule's hook decodes after transfer
    make_trainer(max_epochs=2).fit(module, datamodule=datamodule)
    on_cpu = ShardDataModule(str(demo_shards), **options)
    for epoch in (0, 1):
        recorded = [batch["digests"] for batch in module.records["train"] if batch["epoch"] == epoch]
        assert recorded == train_digests(on_cpu, epoch, 0, 1)
    assert datamodule.decode_failures.seen == 2 * 60 and datamodule.decode_failures.corrupt == 0


@pytest.mark.slow
def test_fit_with_device_decode_trains_the_cpu_paths_weights_and_tests_exactly(demo_shards: Path,
                                                                                tmp_path: Path) -> None:
    """`spp-cls fit` with data.decode=device (nvImageCodec's CPU backend here) trains bit for bit the network that
    data.decode=cpu trains; then the 10-view test counts each val image once."""
    runs = {}
    for decode in ("cpu", "device"):
        args = cpu_args(demo_shards, tmp_path / decode, "--trainer.max_epochs", "1", "--wandb", "false",
                        "--data.decode", decode)
        assert main(["fit", *args]) == 0
        runs[decode] = tmp_path / decode / "t" / "zf5-spp_multi"
    weights = {decode: torch.load(run / "last.ckpt", weights_only=False)["state_dict"] for decode, run in runs.items()}
    assert weights["cpu"].keys() == weights["device"].keys()
    assert all(torch.equal(weights["cpu"][key], weights["device"][key]) for key in weights["cpu"])
    columns = ("epoch", "train_size", "lr", "train_loss", "val_top1_err", "val_top5_err")  # all but the speed
    rows = {decode: [[row[column] for column in columns] for row in read_summary(run)] for decode, run in runs.items()}
    assert rows["cpu"] == rows["device"]
    assert main(["test", *args]) == 0
    results = json.loads((runs["device"] / "results.json").read_text())
    assert results["test_protocol"] == "tenview" and results["num_test_images"] == 15


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_fit_and_test_with_half_precision_weights_and_device_decode(demo_shards: Path, tmp_path: Path,
                                                                    precision: str) -> None:
    """Lightning's `bf16-true` / `16-true` rebuild each batch before its transfer (a frozen JpegBatch was refused)
    and hold the weights in half precision: the network gets its input in that dtype, for training, validation and
    both 10-view tests."""
    args = cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "1", "--wandb", "false", "--data.decode", "device",
                    "--trainer.precision", precision, "--trainer.deterministic", "false")
    assert main(["fit", *args]) == 0
    run = tmp_path / "t" / "zf5-spp_multi"
    [row] = read_summary(run)
    assert math.isfinite(float(row["train_loss"])) and 0 <= float(row["val_top1_err"]) <= 100
    for protocol, results in (("tenview", "results.json"), ("tenview_fmap", "results_tenview_fmap.json")):
        assert main(["test", *args, "--data.test_views", protocol]) == 0
        assert json.loads((run / results).read_text())["num_test_images"] == 15
