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
import resource
from pathlib import Path

import pytest
import torch
from helpers import (
    PAPER_BACKBONES,
    compiled_against_eager,
    cpu_args,
    crop_of,
    noise_jpeg,
    with_bogus_huffman_table,
)

from spp_cls.bench.data import synthetic_shards
from spp_cls.cli import main
from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.jpeg_batch import JpegBatch, collate_jpegs
from spp_cls.data.stream.nvimgcodec_decode import BatchDecoder
from spp_cls.data.stream.pipeline import CorruptSampleBudget
from spp_cls.models import create
from spp_cls.train.lightning_cli import PROGRESS_BAR_REFRESH_STEPS, build_cli

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
    if backend != "auto" and decoder.cpu_fallbacks == 60:  # e.g. no NVJPG engine on this GPU
        pytest.skip(f"the {backend} backend decoded none of these files ({'regions' if region else 'whole images'}) "
                    f"on {torch.cuda.get_device_name()}")
    assert decoder.cpu_fallbacks == 0 and max(differences) <= TOLERANCE[backend]


def test_batches_decoded_while_training_steps_are_queued_are_not_overwritten(tmp_path: Path) -> None:
    """pytorch/vision#9606 (torchvision's nvJPEG path): the decoder's outputs reused blocks that the queued training
    step still read (74 corrupt of 3,200, then a sticky CUDA error, on an H200). Here each batch is decoded right
    after a ZF-5 step was queued, as ``on_after_batch_transfer`` does in training, and compared with the CPU
    backend's decode of the same windows."""
    source = synthetic_shards(tmp_path, batch_size=128, workers=4)
    datamodule = ShardDataModule(str(source.root), batch_size=128, num_workers=4, decode="device")
    decoder = datamodule.device_decoder(torch.device("cuda", torch.cuda.current_device()))
    on_host = BatchDecoder("cpu")
    net = create("zf5", head="spp", num_classes=1000).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    corrupt, decoded, previous = [], 0, None
    for batch in datamodule.train_loader(epoch=0).with_epoch(nbatches=25):
        if previous is not None:  # queued, still running while the next batch decodes
            with torch.autocast("cuda", dtype=torch.bfloat16):
                net(previous.float().contiguous(memory_format=torch.channels_last)).logsumexp(1).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        previous, _ = decoder(batch.to("cuda", non_blocking=True))
        expected, _ = on_host(batch)
        differences = (previous.cpu().float() - expected.float()).abs().mean(dim=(1, 2, 3))
        corrupt += [key for key, d in zip(batch.keys, differences) if d > CORRUPT_MEAN_ABS_LEVELS]
        decoded += len(batch)
    print(f"{decoder.description}: {len(corrupt)} corrupt of {decoded}")
    assert decoded == 25 * 128 and corrupt == [] and decoder.cpu_fallbacks == 0


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
    budget = CorruptSampleBudget(max_fraction=0.5, min_samples=1)
    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.pipeline"):
        images, labels = BatchDecoder("cuda", budget=budget)(batch.to("cuda"))
    assert labels.tolist() == [10, 12, 12, 13] and images.shape == (4, 3, 224, 224)
    assert torch.equal(images[1], images[2]) and (budget.seen, budget.corrupt) == (4, 1)
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


@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_each_network_compiles_whole_under_cuda_bf16_autocast_and_trains_as_eager(backbone: str) -> None:
    """The four networks at full width and the bench's batch of 128 (so that a cache the GPU script's compile step
    filled is reused), fullgraph, both training sizes, forward and backward against eager."""
    for size, logit_difference, grad_difference in compiled_against_eager(backbone, "cuda", (224, 180), width=1.0,
                                                                         batch_size=128):
        print(f"{backbone} at {size}: logits differ by {logit_difference:.4f}, gradients by {grad_difference:.4f} "
              "of their largest value")
        assert logit_difference < 0.02, (backbone, size)
        assert grad_difference < 0.05, (backbone, size)


def test_fit_and_test_on_the_gpu_fast_path(demo_shards: Path, tmp_path: Path) -> None:
    """The table config's own GPU settings (bf16-mixed, channels_last) plus compile and nvImageCodec decode, two epochs
    (224 then 180: one graph each), then the 10-view test and the feature-map 10-view."""
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


def test_the_progress_bar_refreshes_every_50_steps_on_the_gpu(demo_shards: Path, tmp_path: Path) -> None:
    """Each refresh reads the loss with .item(), a device sync: every step would stall the GPU's queue."""
    args = cpu_args(demo_shards, tmp_path, "--wandb", "false", "--trainer.enable_progress_bar", "true",
                    "--trainer.accelerator", "gpu")
    trainer = build_cli(args, run=False).trainer
    assert trainer.progress_bar_callback.refresh_rate == PROGRESS_BAR_REFRESH_STEPS == 50
