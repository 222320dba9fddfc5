"""The standard 10 views taken on feature maps instead of image crops (paper, section 3.1 and Appendix A).

The trunk runs twice per image (the s=256 image and its mirror); each 224 window is mapped onto the last conv map
and pooled there, and only the head runs once per view. The paper reports the top-5 error of this within 0.1% of
the 10 image crops.
"""
from __future__ import annotations

import math

import torch

from ..data.views import ten_view_boxes
from ..models import SppNet


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


def tenview_on_feature_maps(net: SppNet, image: torch.Tensor, geometry: tuple[int, float]) -> torch.Tensor:
    """Softmax averaged over the 10 views of one normalised (1, 3, H, W) image at s=256: (1, num_classes).

    One trunk pass on the image and its mirror together (flipped views are the mirrored windows of the mirrored
    image); each window is pooled on its own (windows differ in size by a cell), then fc6-fc8 run once on the 10.
    """
    stride, offset = geometry
    height, width = image.shape[-2:]
    maps = net.forward_features(torch.cat([image, image.flip(-1)]))
    pooled = []
    for box in ten_view_boxes(width, height):
        x0, x1 = (width - box.x1, width - box.x0) if box.flip else (box.x0, box.x1)
        rows = window_to_cells(box.y0, box.y1, stride, offset, maps.shape[-2])
        cols = window_to_cells(x0, x1, stride, offset, maps.shape[-1])
        pooled.append(net.pool(maps[int(box.flip), None, :, rows[0]:rows[1], cols[0]:cols[1]]))
    return net.forward_pooled(torch.cat(pooled)).float().softmax(dim=1).mean(dim=0, keepdim=True)
