"""Windows of an image pooled on its conv maps instead of cropped from its pixels (paper, section 3.1, Appendix A).

The trunk runs once per image (and its mirror); each window is mapped onto the last conv map and pooled there, and
only the head runs per window. The paper reports the top-5 error of the 10 views taken this way within 0.1% of the
10 image crops. The windows come from the caller (data/stream/views.py computes the test views).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .net import SppNet

Window = tuple[int, int, int, int, bool]
"""(x0, y0, x1, y1, flip) in pixels of the image: the half-open box, and whether the view is mirrored."""


def window_to_cells(lo: int, hi: int, stride: int, offset: float, size: int) -> tuple[int, int]:
    """Map the pixel window [lo, hi) onto a conv map of `size` cells: the half-open cell range [first, stop).

    Appendix A: the left/top edge goes to floor(x / S) + 1 and the right/bottom edge to ceil(x / S) - 1, where the
    cell x' is centred on pixel S * x' (our paddings centre it on S * x' + O instead, so x is taken relative to O).
    The range is clamped to the map and collapsed to one cell if it came out empty.
    """
    first = math.floor((lo - offset) / stride) + 1
    last = math.ceil((hi - 1 - offset) / stride) - 1
    first, last = max(0, min(first, size - 1)), max(0, min(last, size - 1))
    if first > last:
        first = last = (first + last) // 2
    return first, last + 1


def views_on_feature_maps(net: SppNet, image: torch.Tensor, windows: Sequence[Window],
                          geometry: tuple[int, float]) -> torch.Tensor:
    """Softmax averaged over the `windows` of one normalised (1, 3, H, W) image: (1, num_classes).

    One trunk pass on the image and its mirror together (flipped views are the mirrored windows of the mirrored
    image); each window is pooled on its own (windows differ in size by a cell), then fc6-fc8 run once on the 10.
    """
    stride, offset = geometry
    height, width = image.shape[-2:]
    maps = net.forward_features(torch.cat([image, image.flip(-1)]))
    pooled = []
    for box_x0, y0, box_x1, y1, flip in windows:
        x0, x1 = (width - box_x1, width - box_x0) if flip else (box_x0, box_x1)
        rows = window_to_cells(y0, y1, stride, offset, maps.shape[-2])
        cols = window_to_cells(x0, x1, stride, offset, maps.shape[-1])
        pooled.append(net.pool(maps[int(flip), None, :, rows[0]:rows[1], cols[0]:cols[1]]))
    return net.forward_pooled(torch.cat(pooled)).float().softmax(dim=1).mean(dim=0, keepdim=True)
