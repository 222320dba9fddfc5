"""Spatial pyramid pooling (SPP-net, section 2.3 of the paper).

NOTE: the paper implements a pyramid level of n x n bins on an a x a map as a sliding max pool with window
ceil(a/n) and stride floor(a/n). That rule gives n bins on the 13x13 and 18x18 maps of 224 inputs, but on the 10x10
conv5 map of the 180-network it gives 9x9 bins at level 6 (window 2, stride 1), which would not fit fc6. We pool
each level with `adaptive_max_pool2d`, whose bin [floor(i*a/n), ceil((i+1)*a/n)) is exactly the paper's own
Appendix A rule: it equals the sliding rule wherever that rule yields n bins (tests/test_spp.py shows it on 13x13
and 18x18 maps) and stays well defined for every map of at least 1x1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_LEVELS: tuple[int, ...] = (6, 3, 2, 1)


def spatial_pyramid_pool2d(x: torch.Tensor, levels: Sequence[int] = PAPER_LEVELS) -> torch.Tensor:
    """Max-pool an (N, C, H, W) map into n x n bins per level; flatten and concatenate the levels.

    Returns:
        (N, C * sum(n * n for n in levels)); each level is laid out channel-major (C, n, n) and the levels follow
        the order of `levels`.
    """
    if x.dim() != 4:
        raise ValueError(f"spatial_pyramid_pool2d expects an (N, C, H, W) map, got shape {tuple(x.shape)}")
    return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in levels], dim=1)


class SpatialPyramidPool2d(nn.Module):
    """Module form of `spatial_pyramid_pool2d`; {6, 3, 2, 1} (50 bins) is the paper's classification pyramid."""

    def __init__(self, levels: Sequence[int] = PAPER_LEVELS) -> None:
        super().__init__()
        if not levels or any(n < 1 for n in levels):
            raise ValueError(f"pyramid levels must be positive integers, got {tuple(levels)}")
        self.levels = tuple(int(n) for n in levels)

    @property
    def num_bins(self) -> int:
        return sum(n * n for n in self.levels)

    def output_length(self, channels: int) -> int:
        return channels * self.num_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_pyramid_pool2d(x, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
