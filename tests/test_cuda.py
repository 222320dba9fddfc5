"""The code paths that only a CUDA device takes: nvImageCodec batch decode on each GPU backend and its stream
ordering, cuDNN convolutions, bf16 autocast, ``torch.compile`` and a whole ``spp-cls fit`` / ``test`` on the GPU fast
path.

Skipped where no CUDA device is present (CI); run on a GPU node with ``pytest -m cuda``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import resource
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import (
    PAPER_BACKBONES,
    compiled_against_eager,
    cpu_args,
    crop_of,
    decode_failures,
    noise_jpeg,
    read_summary,
    with_bogus_huffman_table,
)
from lightning_fabric.utilities.apply_func import move_data_to_device

from spp_cls.bench.data import synthetic_shards
from spp_cls.cli import main
from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.jpeg_batch import JpegBatch, collate_jpegs
from spp_cls.data.stream.nvimgcodec_decode import BatchDecoder
from spp_cls.models import create
from spp_cls.train.lightning_cli import PROGRESS_BAR_REFRESH_STEPS, build_cli
from spp_cls.train.module import SppClassifier

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GPU_MEAN_ABS_LEVELS = 2.0
"""nvJPEG (the hardware, CUDA and hybrid backends) and libjpeg-turbo round their inverse DCT and chroma upsampling
differently: the same crop differs by a few levels at edges, on average by about one level of 255 (1.10 at most per
batch, measured on an H200 for nvJPEG through torchvision). nvImageCodec's CPU backend is libjpeg-turbo: exact."""
TOLERANCE = {"auto": GPU_MEAN_ABS_LEVELS, "hardware": GPU_MEAN_ABS_LEVELS, "cuda": GPU_MEAN_ABS_LEVELS,
             "hybrid": GPU_MEAN_ABS_LEVELS, "cpu": 0.0}
CORRUPT_MEAN_ABS_LEVELS = 4.0
"""An image whose decode was overwritten differs from libjpeg-turbo's by far more than rounding."""
NVJPG_ENGINES = re.compile(r"A100|A800|A30\b|H100|H800|H200|GH200|B100|B200|GB200")
"""GPUs with hardware JPEG decoders (NVJPG engines), where the ``hardware`` backend must decode."""


@contextmanager
def no_host_sync():
    """Any CUDA call through torch that makes the host wait for the device (a blocking copy, a synchronize, .item())
    raises inside this block."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("region", [True, False], ids=["region", "whole"])
@pytest.mark.parametrize("backend", list(TOLERANCE))
def test_each_gpu_backend_decodes_the_cpu_paths_windows_flips_and_labels(demo_shards: Path, backend: str,
                                                                        region: bool) -> None:
    options = {"batch_size": 6, "num_workers": 0, "shuffle_buffer": 8, "seed": 5}
    on_cpu = list(ShardDataModule(str(demo_shards), decode="cpu", **options).train_loader(0))
    shipped = list(ShardDataModule(str(demo_shards), decode="device", **options).train_loader(0))
    decoder = BatchDecoder("cuda", backend, region=region)
    assert len(shipped) == len(on_cpu) == 10
    differences = []
    for batch, (expected, expected_labels) in zip(shipped, on_cpu):
        assert isinstance(batch, JpegBatch)
        images, labels = decoder(batch.to("cuda"))
        assert images.device.type == "cuda" and images.dtype == torch.uint8 and images.shape == expected.shape
        assert images.is_contiguous() and torch.equal(labels.cpu(), expected_labels)
        differences.append((images.cpu().float() - expected.float()).abs().mean().item())
    print(f"{decoder.description} vs libjpeg-turbo: mean |difference| per batch "
          f"{[round(d, 3) for d in differences]} levels; {decoder.cpu_fallbacks} decoded on the host")
    name = torch.cuda.get_device_name()
    if backend == "hardware" and decoder.cpu_fallbacks == 60 and not NVJPG_ENGINES.search(name):
        pytest.skip(f"{name} has no hardware JPEG decoder")
    assert decoder.cpu_fallbacks == 0, f"{decoder.cpu_fallbacks} of 60 files fell back to the host decoder on {name}"
    assert max(differences) <= TOLERANCE[backend]
    if backend != "cpu":  # nvJPEG rounds differently from libjpeg-turbo: identical pixels mean the CPU decoded them
        assert max(differences) > 0, f"the {backend} backend gave libjpeg-turbo's pixels: nothing decoded on the GPU"


def test_batches_decoded_while_training_steps_are_queued_are_not_overwritten(tmp_path: Path) -> None:
    """pytorch/vision#9606 (torchvision's nvJPEG path): the decoder's outputs reused blocks that the queued training
    step still read (74 corrupt of 3,200, then a sticky CUDA error, on an H200). Here each batch is decoded right
    after a ZF-5 step on the one before was queued, as ``on_after_batch_transfer`` does in training; at the end of
    each queued step, on the training stream, the step copies the pixels it trained on. Those copies are compared
    with the CPU backend's decode of the same windows once everything has run."""
    source = synthetic_shards(tmp_path, batch_size=128, workers=4)
    datamodule = ShardDataModule(str(source.root), batch_size=128, num_workers=4, decode="device")
    decoder = datamodule.device_decoder(torch.device("cuda", torch.cuda.current_device()))
    net = create("zf5", head="spp", num_classes=1000).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    shipped, read_by_steps, previous = [], [], None
    for batch in datamodule.train_loader(epoch=0).with_epoch(nbatches=25):
        if previous is not None:  # queued, still running while the next batch decodes
            with torch.autocast("cuda", dtype=torch.bfloat16):
                net(previous.float().contiguous(memory_format=torch.channels_last)).logsumexp(1).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            read_by_steps.append(previous.clone())  # what the step read, as it stands when the step has run
        previous, _ = decoder(move_data_to_device(batch, torch.device("cuda")))
        shipped.append(batch)
    torch.cuda.synchronize()
    on_host = BatchDecoder("cpu")
    corrupt = []
    for batch, read in zip(shipped, read_by_steps, strict=False):
        expected, _ = on_host(batch)
        differences = (read.cpu().float() - expected.float()).abs().mean(dim=(1, 2, 3))
        corrupt += [key for key, d in zip(batch.keys, differences) if d > CORRUPT_MEAN_ABS_LEVELS]
    print(f"{decoder.description}: {len(corrupt)} corrupt of the {24 * 128} images the queued steps read")
    assert len(shipped) == 25 and len(read_by_steps) == 24
    assert corrupt == [] and decoder.cpu_fallbacks == 0


def test_a_training_step_on_device_decoded_batches_never_waits_for_the_gpu(demo_shards: Path) -> None:
    """The loader pins each batch's labels; Lightning's transfer, the datamodule's decode, the module's loss, backward
    and the fused SGD step then run without one host sync (a blocking copy would drain the queue every step)."""
    datamodule = ShardDataModule(str(demo_shards), batch_size=6, num_workers=2, decode="device", seed=3)
    device = torch.device("cuda", torch.cuda.current_device())
    module = SppClassifier("zf5", num_classes=datamodule.num_classes, width=0.25, channels_last=True).to(device)
    optimizer = module.sgd(6)
    assert optimizer.defaults["fused"] is True
    batches = list(datamodule.train_loader(epoch=0))
    assert all(batch.labels.is_pinned() for batch in batches)

    def step(batch: JpegBatch) -> None:
        images, labels = datamodule.on_after_batch_transfer(move_data_to_device(batch, device), 0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.train_loss(images, labels, 180)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[0])  # first use: cuDNN's autotuning and the allocator's first blocks
    torch.cuda.synchronize()
    with no_host_sync():
        for batch in batches[1:]:
            step(batch)
    torch.cuda.synchronize()


def test_ten_views_on_feature_maps_never_wait_for_the_gpu() -> None:
    """`tenview_fmap` (a test batch) runs without one host sync and gives the CPU's scores."""
    module = SppClassifier("convnet5", num_classes=10, width=0.25).eval()
    images = torch.randint(0, 256, (4, 3, 256, 341), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module.tenview_fmap_scores(images)
        module.cuda()
        on_gpu = images.cuda()
        module.tenview_fmap_scores(on_gpu)  # first use: cuDNN's autotuning and the allocator's first blocks
        torch.cuda.synchronize()
        with no_host_sync():
            scores = module.tenview_fmap_scores(on_gpu)
        torch.cuda.synchronize()
    torch.testing.assert_close(scores.cpu(), expected, rtol=1e-3, atol=1e-4)


def test_memory_stays_flat_over_1000_decoded_training_steps(tmp_path: Path) -> None:
    source = synthetic_shards(tmp_path, batch_size=128, workers=8)
    datamodule = ShardDataModule(str(source.root), batch_size=128, num_workers=8, decode="device")
    decoder = datamodule.device_decoder(torch.device("cuda", torch.cuda.current_device()))
    net = create("zf5", head="spp", num_classes=1000, width=0.25).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    total = torch.cuda.mem_get_info()[1]
    device_used, host_rss = [], []
    for step, batch in enumerate(datamodule.train_loader(epoch=0).with_epoch(nbatches=1000)):
        images, labels = decoder(batch.to("cuda", non_blocking=True))
        torch.nn.functional.cross_entropy(net(images.float() / 255), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 49:
            torch.cuda.synchronize()
            device_used.append(total - torch.cuda.mem_get_info()[0])  # torch's pool and nvImageCodec's together
            host_rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    mib = 2**20
    print(f"device memory in use every 50 steps (MiB): {[round(used / mib) for used in device_used]}; "
          f"peak host RSS {host_rss[1] / mib:.0f} -> {host_rss[-1] / mib:.0f} MiB")
    assert len(device_used) == 20
    assert max(device_used[-5:]) - max(device_used[1:6]) < 64 * mib  # one leaked batch a step would add 19 MiB each
    assert host_rss[-1] - host_rss[1] < 512 * mib


def test_a_file_no_decoder_reads_is_counted_and_replaced_by_the_next_good_sample(
        caplog: pytest.LogCaptureFixture) -> None:
    files = [noise_jpeg(240, 232, seed=seed) for seed in range(4)]
    files[1] = with_bogus_huffman_table(files[1])
    batch = collate_jpegs([crop_of(jpeg, 240, 232, seed, 10 + seed, f"k{seed}") for seed, jpeg in enumerate(files)])
    failures, _ = decode_failures(samples=4, max_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.corrupt"):
        images, labels = BatchDecoder("cuda", budget=failures)(batch.to("cuda"))
    assert labels.tolist() == [10, 12, 12, 13] and images.shape == (4, 3, 224, 224)
    assert torch.equal(images[1], images[2]) and (failures.seen, failures.corrupt) == (4, 1)
    assert "corrupt sample k1 in shard.tar: JPEG does not decode" in caplog.text


@pytest.mark.parametrize(("backbone", "head"), [("zf5", "spp"), ("overfeat7", "nospp")])
def test_cudnn_logits_equal_the_cpu_logits(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    net = create(backbone, head=head, num_classes=10, width=0.5, init="kaiming").eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = net(images)
        on_gpu = net.cuda()(images.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            in_bf16 = net(images.cuda()).float().cpu()
    scale = expected.abs().max().item()
    torch.testing.assert_close(on_gpu, expected, atol=1e-3 * scale, rtol=1e-3)
    assert (in_bf16 - expected).abs().max().item() < 0.05 * scale


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_fit_clips_gradients_under_bf16_mixed_with_device_decode(demo_shards: Path, tmp_path: Path,
                                                                 backend: str) -> None:
    """Lightning refuses to clip gradients for fused SGD under mixed precision: with gradient_clip_val set the module
    steps with the foreach SGD instead. With decode_backend cpu nvImageCodec writes host memory on a CUDA device."""
    args = cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "1", "--wandb", "false",
                    "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed",
                    "--trainer.deterministic", "false", "--trainer.gradient_clip_val", "1.0",
                    "--data.decode", "device", "--data.decode_backend", backend, "--data.num_workers", "2")
    assert main(["fit", *args]) == 0
    cli = build_cli(args, run=False)
    cli.model.trainer = cli.trainer
    assert cli.model.cuda().sgd(8).defaults["fused"] is None
    [row] = read_summary(tmp_path / "t" / "zf5-spp_multi")
    assert math.isfinite(float(row["train_loss"]))


def test_the_progress_bar_refreshes_every_50_steps_on_the_gpu(demo_shards: Path, tmp_path: Path) -> None:
    """Each refresh reads the loss with .item(), a device sync: every step would stall the GPU's queue."""
    args = cpu_args(demo_shards, tmp_path, "--wandb", "false", "--trainer.enable_progress_bar", "true",
                    "--trainer.accelerator", "gpu")
    trainer = build_cli(args, run=False).trainer
    assert trainer.progress_bar_callback.refresh_rate == PROGRESS_BAR_REFRESH_STEPS == 50


# ---- compiling tests last: they take the longest, and the GPU script runs this file in order -------------------------
@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_each_network_compiles_whole_under_cuda_bf16_autocast_and_trains_as_eager(backbone: str) -> None:
    """The four networks at full width and a batch of 128 (the shapes they train at), fullgraph, both training
    sizes, forward and backward against eager."""
    for size, logit_difference, grad_difference in compiled_against_eager(backbone, "cuda", (224, 180), width=1.0,
                                                                         batch_size=128):
        print(f"{backbone} at {size}: logits differ by {logit_difference:.4f}, gradients by {grad_difference:.4f} "
              "of their largest value")
        assert logit_difference < 0.02, (backbone, size)
        assert grad_difference < 0.05, (backbone, size)


def test_fit_and_test_zf5_on_the_gpu_fast_path(demo_shards: Path, tmp_path: Path) -> None:
    """ZF-5 with the table config's own GPU settings (bf16-mixed, channels_last) plus compile and nvImageCodec decode,
    two epochs (224 then 180: one graph each), then the 10-view test and the feature-map 10-view. (The four networks'
    compiled steps against eager: the test above.)"""
    args = cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "2", "--wandb", "false",
                    "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed",
                    "--trainer.deterministic", "false", "--model.channels_last", "true", "--model.compile", "true",
                    "--data.decode", "device", "--data.num_workers", "2")
    assert main(["fit", *args]) == 0
    run = tmp_path / "t" / "zf5-spp_multi"
    with (run / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["train_size"] for row in rows] == ["224", "180"]
    assert all(math.isfinite(float(row["train_loss"])) and 0 <= float(row["val_top1_err"]) <= 100 for row in rows)
    for protocol in ("tenview", "tenview_fmap"):
        assert main(["test", *args, "--data.test_views", protocol]) == 0
    tenview = json.loads((run / "results.json").read_text())
    fmap = json.loads((run / "results_tenview_fmap.json").read_text())
    assert tenview["num_test_images"] == fmap["num_test_images"] == 15
    assert tenview["test_protocol"] == "tenview" and fmap["test_protocol"] == "tenview_fmap"
