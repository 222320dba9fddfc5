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

    Flipped views are the mirrored windows of the mirrored image, whose conv map is computed once.
    """
    stride, offset = geometry
    height, width = image.shape[-2:]
    maps = {flip: net.forward_features(image.flip(-1) if flip else image) for flip in (False, True)}
    probabilities = []
    for box in ten_view_boxes(width, height):
        x0, x1 = (width - box.x1, width - box.x0) if box.flip else (box.x0, box.x1)
        conv_map = maps[box.flip]
        rows = window_to_cells(box.y0, box.y1, stride, offset, conv_map.shape[-2])
        cols = window_to_cells(x0, x1, stride, offset, conv_map.shape[-1])
        window = conv_map[:, :, rows[0]:rows[1], cols[0]:cols[1]]
        probabilities.append(net.forward_head(window).float().softmax(dim=1))
    return torch.stack(probabilities).mean(dim=0)
