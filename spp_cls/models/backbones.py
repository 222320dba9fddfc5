"""The four conv trunks of the paper's Table 1, as data, and one builder.

Paddings are not in the paper ("adjusted to produce the expected output feature map size"); the ones below make
every map size of Table 1 hold with PyTorch's floor-mode pooling (docs/paper.md, "Paddings"). Every conv is followed by
a ReLU; the LRN / pooling that Table 1 lists for a layer follow in the order listed.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .lrn import CrossChannelLRN, WithinChannelLRN


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class MaxPool:
    kernel: int
    stride: int


@dataclass(frozen=True)
class LRN:
    mode: Literal["within", "cross"]


PostOp = MaxPool | LRN


@dataclass(frozen=True)
class Stage:
    """One row entry of Table 1: a conv (+ ReLU) and what follows it before the next conv."""

    conv: Conv
    post: tuple[PostOp, ...] = ()


@dataclass(frozen=True)
class TrunkSpec:
    """One trunk of Table 1, under the paper's name of it (`paper.BACKBONES`, which also holds its printed title)."""

    name: str
    stages: tuple[Stage, ...]
    nospp_pool: MaxPool
    """The baseline's last pooling layer: 6x6 bins on the 224-input conv map (13x13 -> 3/2, 18x18 -> 3/3)."""

    @property
    def out_channels(self) -> int:
        return self.stages[-1].conv.channels


def _c3(channels: int) -> Stage:
    return Stage(Conv(channels, 3, padding=1))


_OVERFEAT_STEM = (
    Stage(Conv(96, 7, stride=2, padding=1), (MaxPool(3, 3), LRN("cross"))),
    Stage(Conv(256, 5, padding=2), (MaxPool(2, 2),)),
)

TRUNKS: dict[str, TrunkSpec] = {
    # ZF-5: Zeiler & Fergus "fast" model; within-channel LRN as the authors' released model.
    "zf5": TrunkSpec(
        name="zf5",
        stages=(
            Stage(Conv(96, 7, stride=2, padding=2), (LRN("within"), MaxPool(3, 2))),
            Stage(Conv(256, 5, stride=2, padding=1), (LRN("within"), MaxPool(3, 2))),
            _c3(384),
            _c3(384),
            _c3(256),
        ),
        nospp_pool=MaxPool(3, 2),
    ),
    # Convnet*-5: Krizhevsky's net with the two pools moved after conv2 and conv3.
    "convnet5": TrunkSpec(
        name="convnet5",
        stages=(
            Stage(Conv(96, 11, stride=4, padding=2), (LRN("cross"),)),
            Stage(Conv(256, 5, padding=2), (LRN("cross"), MaxPool(3, 2))),
            Stage(Conv(384, 3, padding=1), (MaxPool(3, 2),)),
            _c3(384),
            _c3(256),
        ),
        nospp_pool=MaxPool(3, 2),
    ),
    # Overfeat-5/7: Overfeat "fast" with Chatfield et al.'s modifications; 18x18 conv maps at 224. Overfeat-7 is
    # Overfeat-5 with two more 512 x 3x3 layers ("conv3 to conv7 have the same structure").
    "overfeat5": TrunkSpec(
        name="overfeat5",
        stages=(*_OVERFEAT_STEM, *(_c3(512) for _ in range(3))),
        nospp_pool=MaxPool(3, 3),
    ),
    "overfeat7": TrunkSpec(
        name="overfeat7",
        stages=(*_OVERFEAT_STEM, *(_c3(512) for _ in range(5))),
        nospp_pool=MaxPool(3, 3),
    ),
}


def scaled_width(channels: int, width: float) -> int:
    """Channels after the width multiplier (at least 1); width 1.0 is the paper's network."""
    return max(1, round(channels * width))


def _out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def map_sizes(spec: TrunkSpec, input_size: int) -> list[tuple[str, int]]:
    """Side length of every intermediate map for a square input, in PyTorch floor mode.

    Returns (layer name, side) pairs such as ("conv1", 111), ("pool1", 55), ...; a side below 1 means the input is too
    small (the list stops there).
    """
    sizes: list[tuple[str, int]] = []
    side = input_size
    for index, stage in enumerate(spec.stages, start=1):
        side = _out_size(side, stage.conv.kernel, stage.conv.stride, stage.conv.padding)
        sizes.append((f"conv{index}", side))
        if side < 1:
            return sizes
        for op in stage.post:
            if isinstance(op, MaxPool):
                side = _out_size(side, op.kernel, op.stride)
                sizes.append((f"pool{index}", side))
                if side < 1:
                    return sizes
    return sizes


def conv_map_size(spec: TrunkSpec, input_size: int) -> int:
    """Side of the last conv map for a square input (< 1 when the input is too small)."""
    return map_sizes(spec, input_size)[-1][1]


def min_input_size(spec: TrunkSpec) -> int:
    """The smallest square input for which every map of the trunk is at least 1x1."""
    size = 1
    while conv_map_size(spec, size) < 1:
        size += 1
    return size


def build_trunk(spec: TrunkSpec, width: float = 1.0) -> nn.Sequential:
    """The conv trunk as an nn.Sequential with named layers (conv1, relu1, norm1, pool1, ...)."""
    layers: dict[str, nn.Module] = {}
    in_channels = 3
    for index, stage in enumerate(spec.stages, start=1):
        out_channels = scaled_width(stage.conv.channels, width)
        layers[f"conv{index}"] = nn.Conv2d(
            in_channels, out_channels, stage.conv.kernel, stage.conv.stride, stage.conv.padding
        )
        layers[f"relu{index}"] = nn.ReLU(inplace=True)
        for op in stage.post:
            if isinstance(op, MaxPool):
                layers[f"pool{index}"] = nn.MaxPool2d(op.kernel, op.stride)
            else:
                layers[f"norm{index}"] = WithinChannelLRN() if op.mode == "within" else CrossChannelLRN()
        in_channels = out_channels
    return nn.Sequential(OrderedDict(layers))


def total_stride(spec: TrunkSpec) -> int:
    """Product of all strides up to the last conv: the paper's S of Appendix A (16 for ZF-5, 12 for Overfeat)."""
    strides = [stage.conv.stride for stage in spec.stages]
    strides += [op.stride for stage in spec.stages for op in stage.post if isinstance(op, MaxPool)]
    return math.prod(strides)


def feature_map_geometry(spec: TrunkSpec) -> tuple[int, float]:
    """(S, O) such that the receptive field of last-conv-map cell j is centred on input pixel S * j + O.

    A layer with kernel k, stride s and padding p centres its output j on input s * j + (k - 1) / 2 - p; composing
    the layers gives S = product of strides and O = sum of each layer's offset times the strides before it. With the
    paper's deployment paddings (floor(k/2)) O would be 0; ours are chosen for Table 1's map sizes, so O is not.
    """
    stride, offset = 1, 0.0
    for stage in spec.stages:
        layers = [stage.conv, *(op for op in stage.post if isinstance(op, MaxPool))]
        for layer in layers:
            padding = layer.padding if isinstance(layer, Conv) else 0
            offset += stride * ((layer.kernel - 1) / 2 - padding)
            stride *= layer.stride
    return stride, offset
