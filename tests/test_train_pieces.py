"""On-device input processing, exact top-k sums, CPU threads per rank."""
import os

import pytest
import torch
import torch.nn.functional as F

from spp_cls.protocol import PixelStatistics
from spp_cls.train.augment import InputTransform
from spp_cls.train.metrics import TopKErrorSums
from spp_cls.train.rank_threads import rank_cpus


def test_mean_subtraction_and_resize_to_the_epochs_size():
    statistics = PixelStatistics((100.0, 110.0, 120.0), (300.0, 20.0, 5.0), tuple(map(tuple, torch.eye(3).tolist())))
    transform = InputTransform(pca_std=0.1, statistics=statistics)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    mean = torch.tensor([100.0, 110.0, 120.0])[None, :, None, None]
    assert torch.equal(transform(images), images.float() - mean)
    small = transform(images, size=180)
    assert small.shape == (2, 3, 180, 180)
    expected = F.interpolate(images.float(), size=(180, 180), mode="bilinear", antialias=True) - mean
    torch.testing.assert_close(small, expected)


def test_pca_colour_noise_shifts_each_image_along_the_eigenvectors():
    eigvec = torch.tensor([[0.6, 0.8, 0.0], [-0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    statistics = PixelStatistics((0.0, 0.0, 0.0), (5000.0, 500.0, 50.0), tuple(map(tuple, eigvec.tolist())))
    transform = InputTransform(pca_std=0.1, statistics=statistics)
    images = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    torch.manual_seed(7)
    out = transform(images, train=True)
    torch.manual_seed(7)
    alpha = torch.randn(4, 3) * 0.1
    shift = (alpha * torch.tensor([5000.0, 500.0, 50.0]) / 255.0) @ eigvec
    torch.testing.assert_close(out[:, :, 3, 5], 128 + shift)
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # one shift per image, the same on every pixel
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(transform(images, train=False), images.float())


def test_topk_sums_count_only_valid_samples():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    sums = TopKErrorSums()
    sums.update(scores, labels, torch.tensor([True, True, True, False]))
    sums.update(scores[:1], labels[:1])
    top1, top5, count = sums.totals()
    assert count == 4
    assert top1 == 100 * (1 - 2 / 4)  # samples 0 (twice) right, 1 and 2 wrong at top-1
    assert top5 == 0.0  # with 3 classes every label is within the top 3
    doubled = sums.totals(lambda t: t * 2)
    assert doubled == (top1, top5, 8)


def test_a_rank_owns_the_override_then_its_slurm_cpus_then_its_share_of_the_usable_cores():
    cores = len(os.sched_getaffinity(0))
    assert rank_cpus(2, {}) == (max(1, cores // 2), f"{cores} usable cores / 2 ranks on this node")
    assert rank_cpus(4 * cores, {}) == (1, f"{cores} usable cores / {4 * cores} ranks on this node")
    assert rank_cpus(8, {"SLURM_CPUS_PER_TASK": "6"}) == (6, "SLURM_CPUS_PER_TASK=6")
    assert rank_cpus(8, {"SLURM_CPUS_PER_TASK": "6", "SPP_CLS_RANK_THREADS": "3"}) == (3, "SPP_CLS_RANK_THREADS=3")
    with pytest.raises(ValueError, match=r"^SPP_CLS_RANK_THREADS='0': expected a positive whole number"):
        rank_cpus(1, {"SPP_CLS_RANK_THREADS": "0"})
