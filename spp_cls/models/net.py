"""Trunk + pooling + fc head: the network of every SPP-net table cell.

The SPP / no-SPP switch changes only the pooling layer between the last conv map and fc6, exactly as in the paper
("the convolutional layers have the same structures as the corresponding baseline models").
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from . import windows
from .spp import PAPER_LEVELS, SpatialPyramidPool2d

Head = Literal["spp", "nospp"]
NOSPP_GRID = 6


class WindowPool2d(nn.Module):
    """The baseline's last pooling layer: one fixed max-pool window that must give a 6x6 grid, then flatten."""

    def __init__(self, kernel: int, stride: int, grid: int = NOSPP_GRID) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel, stride)
        self.grid = grid

    def output_length(self, channels: int) -> int:
        return channels * self.grid * self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x)
        if pooled.shape[-2:] != (self.grid, self.grid):
            raise ValueError(
                f"the no-SPP head pools a {x.shape[-2]}x{x.shape[-1]} conv map to "
                f"{pooled.shape[-2]}x{pooled.shape[-1]},"
                f" but fc6 needs {self.grid}x{self.grid}: a no-SPP network only takes its training size (224); "
                "use the SPP head for other sizes"
            )
        return pooled.flatten(1)


class SppNet(nn.Module):
    """A conv trunk, a pooling layer (pyramid or fixed window), fc6-fc7 (ReLU, dropout) and the classifier fc8.

    Interface as timm models: `forward_features` (the last conv map), `forward_head`, `forward`,
    `get_classifier`, `reset_classifier`; and `forward_windows` / `pool_windows` for many windows of an image on one
    trunk pass (models/windows.py). `feature_geometry` is (S, O) of the last conv map (cell j centred on input pixel
    S * j + O), None where the trunk's is not known.
    """

    def __init__(
            self,
            trunk: nn.Module,
            trunk_channels: int,
            pool: SpatialPyramidPool2d | WindowPool2d,
            num_classes: int = 1000,
            fc_width: int = 4096,
            dropout: float = 0.5,
            min_input_size: int = 1,
            feature_geometry: windows.Geometry | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool
        self.pooled_features = pool.output_length(trunk_channels)
        self.num_features = fc_width
        self.num_classes = num_classes
        self.min_input_size = min_input_size
        self.feature_geometry = feature_geometry
        self.fc6 = nn.Linear(self.pooled_features, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc8 = nn.Linear(fc_width, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def head(self) -> Head:
        return "spp" if isinstance(self.pool, SpatialPyramidPool2d) else "nospp"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(
                f"input {height}x{width} is too small for this trunk: the smallest input that works is "
                f"{self.min_input_size}x{self.min_input_size}"
            )
        return self.trunk(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.forward_pooled(self.pool(x), pre_logits)

    def forward_pooled(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """fc6-fc8 on pooled features (N, pooled_features), e.g. windows of different sizes pooled one by one."""
        x = self.drop(self.relu(self.fc6(x)))
        x = self.drop(self.relu(self.fc7(x)))
        return x if pre_logits else self.fc8(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_windows(self, x: torch.Tensor, boxes: windows.Boxes, scales: Sequence[int] | None = None,
                        pre_logits: bool = False) -> torch.Tensor:
        """Logits (or fc7 features) of pixel boxes of a batch, one trunk pass per image and scale: see
        `windows.forward_windows`."""
        return windows.forward_windows(self, x, boxes, scales, pre_logits)

    def pool_windows(self, x: torch.Tensor, boxes: windows.Boxes,
                     scales: Sequence[int] | None = None) -> torch.Tensor:
        """The pyramid-pooled features (fc6's input) of pixel boxes of a batch: see `windows.forward_windows`."""
        return windows.pool_windows(self, x, boxes, scales)

    def get_classifier(self) -> nn.Module:
        return self.fc8

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc8 = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def make_pool(head: Head, levels: Sequence[int] = PAPER_LEVELS, window: tuple[int, int] | None = None) -> nn.Module:
    """The pooling layer for a head (checked by `registry.create`): the pyramid, or the fixed window (kernel,
    stride) giving 6x6 at 224."""
    if head == "spp":
        return SpatialPyramidPool2d(levels)
    if window is None:
        raise ValueError("the no-SPP head needs its pooling window (kernel, stride)")
    return WindowPool2d(*window)
