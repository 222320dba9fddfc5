"""Windows of images pooled on their conv maps instead of cropped from their pixels (paper, sections 3.1 and 4,
Appendix A).

The trunk runs once per image and scale; every window is mapped onto the last conv map and pooled there with the
pyramid, and only fc6-fc8 run per window. For the 10 test views the paper reports a top-5 error within 0.1% of the
10 image crops; for ~2,000 detection proposals per image it is what makes SPP-net 24-102x faster than R-CNN
(Tables 9/10). The windows come from the caller (`spp_cls.view_protocols` computes the test views).

Boxes are in pixels of the image they belong to: (x0, y0, x1, y1), the half-open box [x0, x1) x [y0, y1). A batch of
boxes is either a (K, 5) tensor whose first column is the image's index in the batch (torchvision's convention) or a
sequence with one (K_i, 4) tensor per image. Boxes with no area (x1 <= x0 or y1 <= y0, which includes reversed
corners) or lying wholly outside their image are refused with a ValueError; a box that runs over the image's edge is
cut at the edge (its cells are clamped to the map), and a box narrower than one cell pools the one cell at its middle.

Pooling: `torchvision.ops.roi_pool` pools all windows of a batch at once, one call per pyramid level. For a window of
w cells and n bins its bin i spans [floor(i * (w / n)), ceil((i + 1) * (w / n))) computed in float32, which is the
Appendix A bin [floor(i * w / n), ceil((i + 1) * w / n)) (= `adaptive_max_pool2d`) wherever the float product is
exact. It is for n in {1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 16} up to 4,096 cells (7, 11, 13, 14 and 15 are not), so the
paper's levels are pooled exactly; a level that is not is refused rather than pooled with other bins. A level that
divides a finer one is taken from that level's bins (see `pyramid_pool_cells`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchvision.ops import roi_pool

from ..view_protocols import ViewBox, resized_size

if TYPE_CHECKING:
    from .net import SppNet

Boxes = torch.Tensor | Sequence[torch.Tensor]
Geometry = tuple[int, float]
"""(S, O): last-conv-map cell j is centred on input pixel S * j + O (see backbones.feature_map_geometry)."""
WINDOW_SIZE = 224
"""Multi-scale: each window is pooled at the scale where its area is nearest WINDOW_SIZE x WINDOW_SIZE pixels."""


@dataclass(frozen=True)
class ScaledMaps:
    """The last conv maps of a batch of images resized to one scale, and the (height, width) of those images."""

    maps: torch.Tensor
    image_size: tuple[int, int]


# ---- boxes ---------------------------------------------------------------------------------------------------------
def as_rois(boxes: Boxes, batch_size: int) -> torch.Tensor:
    """Boxes of a batch as a float (K, 5) tensor (image index, x0, y0, x1, y1), in the order given."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as one tensor must be (K, 5) (image index, x0, y0, x1, y1), got "
                             f"{tuple(boxes.shape)}; or give one (K_i, 4) tensor per image")
        rois = boxes.float()
    else:
        if len(boxes) != batch_size:
            raise ValueError(f"{len(boxes)} box tensors for a batch of {batch_size} images: give one per image")
        parts = []
        for index, image_boxes in enumerate(boxes):
            if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
                raise ValueError(f"the boxes of image {index} must be (K, 4) (x0, y0, x1, y1), got "
                                 f"{tuple(image_boxes.shape)}")
            parts.append(torch.cat([image_boxes.new_full((len(image_boxes), 1), index), image_boxes], 1).float())
        rois = torch.cat(parts) if parts else torch.zeros(0, 5)
    image = rois[:, 0]
    if not (torch.isfinite(rois).all() and (image == image.round()).all() and (image >= 0).all()
            and (image < batch_size).all()):
        raise ValueError(f"boxes must be finite and their image indices integers in [0, {batch_size})")
    return rois


def check_boxes(rois: torch.Tensor, image_size: tuple[int, int]) -> None:
    """Refuse boxes with no area (x1 <= x0 or y1 <= y0: zero area or reversed corners) or wholly outside the image."""
    height, width = image_size
    x0, y0, x1, y1 = rois[:, 1:].unbind(1)
    empty = (x1 <= x0) | (y1 <= y0)
    outside = (x1 <= 0) | (y1 <= 0) | (x0 >= width) | (y0 >= height)
    for bad, why in ((empty, "has no area (x1 <= x0 or y1 <= y0)"),
                     (outside, f"lies wholly outside the {width}x{height} image")):
        if bad.any():
            index = int(bad.nonzero()[0, 0])
            box = ", ".join(f"{value:g}" for value in rois[index, 1:].tolist())
            raise ValueError(f"box {index} ({box}) of image {int(rois[index, 0])} {why}")


def boxes_to_cells(boxes: torch.Tensor, geometry: Geometry, map_size: tuple[int, int]) -> torch.Tensor:
    """Map (K, 4) pixel boxes onto a conv map of (height, width) cells: (K, 4) inclusive cells (x0', y0', x1', y1').

    Appendix A: the left/top edge goes to floor(x / S) + 1 and the right/bottom edge (its last pixel x1 - 1) to
    ceil(x / S) - 1, where cell x' is centred on pixel S * x'. Our paddings centre it on S * x' + O instead, so x is
    taken relative to O. Cells are clamped to the map; a box that maps to no whole cell pools the one at its middle.
    """
    stride, offset = geometry
    height, width = map_size
    first = torch.floor((boxes[:, :2] - offset) / stride).long() + 1
    last = torch.ceil((boxes[:, 2:] - 1 - offset) / stride).long() - 1
    top = boxes.new_tensor([width - 1, height - 1], dtype=torch.long)
    first, last = first.clamp(min=0).minimum(top), last.clamp(min=0).minimum(top)
    middle = torch.div(first + last, 2, rounding_mode="floor")
    empty = first > last
    return torch.cat([torch.where(empty, middle, first), torch.where(empty, middle, last)], 1)


def mirror_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """The (K, 4) boxes of a `width`-pixel image, mirrored: where they lie on the horizontally flipped image."""
    x0, y0, x1, y1 = boxes.unbind(1)
    return torch.stack([width - x1, y0, width - x0, y1], 1)


# ---- scales --------------------------------------------------------------------------------------------------------
def scaled_size(image_size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """(height, width) of an image of (height, width) `image_size` resized so that its shorter side is
    `shorter_side`: the test views' rule, in the (height, width) order of tensor shapes."""
    width, height = resized_size(image_size[1], image_size[0], shorter_side)
    return height, width


def nearest_scale(rois: torch.Tensor, image_size: tuple[int, int], scales: Sequence[int]) -> torch.Tensor:
    """Per box, the index of the scale at which its area (inside the image) is nearest 224 x 224 pixels.

    The paper's rule for multi-scale detection: "choose a single scale s such that the scaled candidate window has a
    number of pixels closest to 224 x 224".
    """
    height, width = image_size
    x0, x1 = rois[:, 1].clamp(0, width), rois[:, 3].clamp(0, width)
    y0, y1 = rois[:, 2].clamp(0, height), rois[:, 4].clamp(0, height)
    area = (x1 - x0) * (y1 - y0)
    factors = rois.new_tensor([h * w / (height * width) for h, w in (scaled_size(image_size, s) for s in scales)])
    return (area[:, None] * factors[None] - WINDOW_SIZE * WINDOW_SIZE).abs().argmin(1)


# ---- pooling -------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def roi_pool_is_exact(level: int, cells: int) -> bool:
    """Whether roi_pool's float32 bins of `level` equal the Appendix A bins for every window of up to `cells` cells."""
    widths = torch.arange(1, cells + 1)
    edges = torch.arange(level + 1)
    product = edges[None].float() * (widths[:, None].float() / level)
    floor_exact = torch.div(edges[None] * widths[:, None], level, rounding_mode="floor")
    ceil_exact = -torch.div(-edges[None] * widths[:, None], level, rounding_mode="floor")
    return bool((product.floor().long() == floor_exact)[:, :-1].all()
                and (product.ceil().long() == ceil_exact)[:, 1:].all())


def pyramid_pool_cells(maps: torch.Tensor, cell_rois: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Pyramid-pool the inclusive cell boxes (K, 5) (map index, x0', y0', x1', y1') of `maps`: (K, C * bins).

    The same layout as `spatial_pyramid_pool2d` on each window's cells: levels in order, each (C, n, n) flattened.
    A level n that divides a finer level m is the max over k x k blocks (k = m / n) of level m's bins, exactly: its
    bin j, [floor(j * w / n), ceil((j + 1) * w / n)), is the union of level m's bins j * k .. (j + 1) * k - 1, which
    touch or overlap. So of {6, 3, 2, 1} only level 6 scans the map (roi_pool), and the others cost nothing.
    The maps are pooled in float32: roi_pool computes its bin edges in the maps' dtype, checked exact for float32.
    """
    largest = max(maps.shape[-2:])
    maps, cell_rois = maps.float(), cell_rois.float()
    pooled: dict[int, torch.Tensor] = {}
    for level in sorted(set(levels), reverse=True):
        finer = next((m for m in pooled if m % level == 0), None)
        if finer is not None:
            pooled[level] = F.max_pool2d(pooled[finer], finer // level)
            continue
        if not roi_pool_is_exact(level, largest):
            raise ValueError(f"pyramid level {level} cannot be pooled with the Appendix A bins on a map of {largest} "
                             "cells (roi_pool's float32 bin edges differ); use levels such as 1, 2, 3, 4, 6, 8")
        pooled[level] = roi_pool(maps, cell_rois, level, 1.0)
    return torch.cat([pooled[level].flatten(1) for level in levels], 1)


def feature_geometry(net: SppNet) -> Geometry:
    """The net's (S, O), refusing nets whose windows cannot be pooled (no pyramid, or a trunk of unknown geometry)."""
    if net.head != "spp":
        raise ValueError("windows need the SPP head: a no-SPP network's fixed pooling window only fits its 224 input")
    if net.feature_geometry is None:
        raise ValueError("windows need the stride and offset of the trunk's last conv map, known for the paper trunks "
                         "(zf5, convnet5, overfeat5, overfeat7) only")
    return net.feature_geometry


def conv_maps(net: SppNet, images: torch.Tensor, scales: Sequence[int] | None = None) -> list[ScaledMaps]:
    """The trunk once per scale on the whole (B, 3, H, W) batch: the images as given, or resized (bilinear,
    antialiased) so that their shorter side is each of `scales`."""
    image_size = (images.shape[-2], images.shape[-1])
    if scales is None:
        return [ScaledMaps(net.forward_features(images), image_size)]
    scaled = []
    for scale in scales:
        size = scaled_size(image_size, scale)
        resized = images if size == image_size else F.interpolate(images, size=size, mode="bilinear",
                                                                   antialias=True, align_corners=False)
        scaled.append(ScaledMaps(net.forward_features(resized), size))
    return scaled


def pool_on_maps(net: SppNet, scaled: Sequence[ScaledMaps], rois: torch.Tensor,
                 image_size: tuple[int, int], scales: Sequence[int] | None = None) -> torch.Tensor:
    """Pyramid-pooled features (K, C * bins) of the (K, 5) boxes, given in pixels of the `image_size` images.

    With one entry in `scaled` every box is pooled there; with several (one per scale of `scales`) each box is
    pooled at the scale where its area is nearest 224 x 224.
    """
    geometry = feature_geometry(net)
    levels = net.pool.levels
    check_boxes(rois, image_size)
    choice = nearest_scale(rois, image_size, scales) if scales is not None and len(scaled) > 1 else None
    pooled = None
    for index, entry in enumerate(scaled):
        chosen = torch.arange(len(rois), device=rois.device) if choice is None else (choice == index).nonzero()[:, 0]
        if len(chosen) == 0:
            continue
        factor = rois.new_tensor([entry.image_size[1] / image_size[1], entry.image_size[0] / image_size[0]] * 2)
        cells = boxes_to_cells(rois[chosen, 1:] * factor, geometry, (entry.maps.shape[-2], entry.maps.shape[-1]))
        features = pyramid_pool_cells(entry.maps, torch.cat([rois[chosen, :1], cells.float()], 1), levels)
        if pooled is None:
            pooled = features.new_empty(len(rois), features.shape[1])
        pooled[chosen] = features
    if pooled is None:  # no boxes at all
        return scaled[0].maps.new_empty(0, net.pooled_features, dtype=torch.float32)
    return pooled


def pool_windows(net: SppNet, images: torch.Tensor, boxes: Boxes,
                 scales: Sequence[int] | None = None) -> torch.Tensor:
    """Pyramid-pooled features (K, C * bins) of windows of a (B, 3, H, W) batch; see `forward_windows`."""
    rois = as_rois(boxes, images.shape[0]).to(images.device)
    image_size = (images.shape[-2], images.shape[-1])
    return pool_on_maps(net, conv_maps(net, images, scales), rois, image_size, scales)


def forward_windows(net: SppNet, images: torch.Tensor, boxes: Boxes, scales: Sequence[int] | None = None,
                    pre_logits: bool = False) -> torch.Tensor:
    """Classify windows of a batch of images with one trunk pass per image and scale (SPP-net's shared features).

    Args:
        net: an SPP net with a paper trunk (its last map's stride and offset are known).
        images: normalised (B, 3, H, W) images, the network's input.
        boxes: (x0, y0, x1, y1) in pixels of `images` (see the module docstring): a (K, 5) tensor with the image
            index first, or one (K_i, 4) tensor per image.
        scales: None pools every window on the maps of `images` as given; a sequence of shorter sides (the paper's
            detection uses (480, 576, 688, 864, 1200)) runs the trunk on each resized batch and pools each window at
            the one scale where its area is nearest 224 x 224.
        pre_logits: return fc7's output instead of the logits.

    Returns:
        (K, num_classes) logits, or (K, fc width) with `pre_logits`, in the order of the boxes. fc6-fc8 run once on
        all K windows.
    """
    return net.forward_pooled(pool_windows(net, images, boxes, scales), pre_logits)


def views_on_feature_maps(net: SppNet, images: torch.Tensor, windows: Sequence[ViewBox]) -> torch.Tensor:
    """Softmax averaged over the same `windows` of each normalised (B, 3, H, W) image: (B, num_classes).

    The trunk runs once on the batch and its mirror together (a flipped view is the mirrored window of the mirrored
    image), then every view of every image is pooled and classified in one pass. The windows come from the caller
    as numbers, so their cells are worked out and checked on the host and copied to the device once, without
    blocking: a test batch costs no host sync.
    """
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    boxes = torch.tensor([window[:4] for window in windows], dtype=torch.float32)
    flips = torch.tensor([bool(window[4]) for window in windows])
    boxes = torch.where(flips[:, None], mirror_boxes(boxes, width), boxes)
    owners = torch.arange(batch)[:, None] + batch * flips[None].long()  # (B, V)
    rois = torch.cat([owners.reshape(-1, 1).float(), boxes.repeat(batch, 1)], 1)
    check_boxes(rois, (height, width))
    maps = net.forward_features(torch.cat([images, images.flip(-1)]) if bool(flips.any()) else images)
    cells = boxes_to_cells(rois[:, 1:], feature_geometry(net), (maps.shape[-2], maps.shape[-1]))
    cell_rois = torch.cat([rois[:, :1], cells.float()], 1)
    if maps.device.type == "cuda":
        cell_rois = cell_rois.pin_memory().to(maps.device, non_blocking=True)
    # the pooled values are maxima of the maps' values: back in the maps' dtype they are exact
    pooled = pyramid_pool_cells(maps, cell_rois.to(maps.device), net.pool.levels).to(maps.dtype)
    logits = net.forward_pooled(pooled)
    return logits.float().softmax(dim=1).view(batch, len(windows), -1).mean(dim=1)
