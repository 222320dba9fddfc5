"""Test views of one decoded image, and their geometry as data.

Every view is a window on an image resized so that its shorter side is ``s`` (aspect kept), optionally flipped
horizontally after cropping. The windows are returned as :class:`ViewBox` values so that the same windows can be
mapped onto conv feature maps (the paper's "10-view on feature maps") instead of cropping pixels.

Protocols (the paper's section 4.1; docs/paper.md, "Test protocols"):
- ``center``: the central 224 crop of the s=256 image (Table 3, "1 crop").
- ``tenview``: 4 corners + center of the whole s=256 image, each also flipped (Table 2).
- ``full``: the whole image at s=256, variable size (Table 3, "1 full").
- ``multiscale``: s in {224, 256, 300, 360, 448, 560}; per scale center, 4 corners, 4 side midpoints, each also
  flipped (18 views); at s=224 the windows can only move along the longer side, so 3 positions x 2 = 6 views;
  5 x 18 + 6 = 96 views.

View order, everywhere: the unflipped windows first, then the same windows flipped, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from spp_cls.protocol import TestViews

CROP = 224
TEST_SHORTER_SIDE = 256
MULTISCALE_SIZES = (224, 256, 300, 360, 448, 560)

VIEW_COUNTS: dict[str, int] = {"center": 1, "tenview": 10, "full": 1, "multiscale": 96, "tenview_fmap": 1}
# Protocols that receive the whole s=256 image (batch of one) and cut their views themselves: "full" classifies it
# as is, "tenview_fmap" takes the standard 10 windows on its conv maps (the model does that, see ten_view_boxes).
WHOLE_IMAGE_VIEWS: tuple[str, ...] = ("full", "tenview_fmap")


class ViewBox(NamedTuple):
    """A crop window ``[x0, x1) x [y0, y1)`` in the coordinates of the resized image; ``flip``: mirrored after crop."""

    x0: int
    y0: int
    x1: int
    y1: int
    flip: bool


def resized_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """(width, height) after resizing so that the shorter side is exactly ``shorter_side``; the longer is rounded."""
    if width <= height:
        return shorter_side, max(shorter_side, round(height * shorter_side / width))
    return max(shorter_side, round(width * shorter_side / height)), shorter_side


def resize_shorter(image: torch.Tensor, shorter_side: int) -> torch.Tensor:
    """Resizes a uint8 CHW image (bilinear, antialiased) so that its shorter side is ``shorter_side``."""
    height, width = image.shape[-2:]
    new_width, new_height = resized_size(width, height, shorter_side)
    if (new_width, new_height) == (width, height):
        return image
    return tvf.resize(image, [new_height, new_width], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _check_fits(width: int, height: int, crop: int) -> None:
    if width < crop or height < crop:
        raise ValueError(f"a {crop}x{crop} window does not fit in a {width}x{height} image")


def five_positions(width: int, height: int, crop: int = CROP) -> list[tuple[int, int]]:
    """Top-left corners (x0, y0) of the center and the four corner windows: center, TL, TR, BL, BR."""
    _check_fits(width, height, crop)
    right, bottom = width - crop, height - crop
    return [(right // 2, bottom // 2), (0, 0), (right, 0), (0, bottom), (right, bottom)]


def _boxes(positions: list[tuple[int, int]], crop: int) -> list[ViewBox]:
    return [ViewBox(x0, y0, x0 + crop, y0 + crop, flip) for flip in (False, True) for x0, y0 in positions]


def center_box(width: int, height: int, crop: int = CROP) -> ViewBox:
    """The central window, unflipped."""
    x0, y0 = five_positions(width, height, crop)[0]
    return ViewBox(x0, y0, x0 + crop, y0 + crop, False)


def ten_view_boxes(width: int, height: int, crop: int = CROP) -> list[ViewBox]:
    """The standard 10 views on a ``width`` x ``height`` image: center, TL, TR, BL, BR, then the same flipped."""
    return _boxes(five_positions(width, height, crop), crop)


def multiscale_view_boxes(width: int, height: int, crop: int = CROP) -> list[ViewBox]:
    """The multi-scale views of one scale: 18 windows, or 6 when the shorter side equals ``crop``.

    Order: center, TL, TR, BL, BR, top-mid, bottom-mid, left-mid, right-mid, then the same flipped. When the shorter
    side equals the crop, the windows are the start, middle and end along the longer side (along x for a square
    image, where all three coincide: the count stays 6 so that every image gives 96 views).
    """
    _check_fits(width, height, crop)
    right, bottom = width - crop, height - crop
    if min(width, height) == crop:
        if bottom == 0:
            positions = [(0, 0), (right // 2, 0), (right, 0)]
        else:
            positions = [(0, 0), (0, bottom // 2), (0, bottom)]
    else:
        mid_x, mid_y = right // 2, bottom // 2
        positions = five_positions(width, height, crop) + [(mid_x, 0), (mid_x, bottom), (0, mid_y), (right, mid_y)]
    return _boxes(positions, crop)


def crop_views(image: torch.Tensor, boxes: list[ViewBox]) -> torch.Tensor:
    """Cuts the windows out of a CHW image: (len(boxes), C, h, w), same dtype."""
    crops = []
    for box in boxes:
        window = image[:, box.y0 : box.y1, box.x0 : box.x1]
        crops.append(window.flip(-1) if box.flip else window)
    return torch.stack(crops)


def center_view(image: torch.Tensor) -> torch.Tensor:
    """The central 224 crop of the s=256 image: (3, 224, 224)."""
    resized = resize_shorter(image, TEST_SHORTER_SIDE)
    box = center_box(resized.shape[-1], resized.shape[-2])
    return resized[:, box.y0 : box.y1, box.x0 : box.x1].contiguous()


def ten_views(image: torch.Tensor) -> torch.Tensor:
    """The standard 10 views of the s=256 image: (10, 3, 224, 224)."""
    resized = resize_shorter(image, TEST_SHORTER_SIDE)
    return crop_views(resized, ten_view_boxes(resized.shape[-1], resized.shape[-2]))


def full_view(image: torch.Tensor) -> torch.Tensor:
    """The whole image at shorter side 256: (3, H, W), variable size."""
    return resize_shorter(image, TEST_SHORTER_SIDE).contiguous()


def multiscale_views(image: torch.Tensor) -> torch.Tensor:
    """The 96 multi-scale views, scale by scale in ``MULTISCALE_SIZES`` order: (96, 3, 224, 224)."""
    per_scale = []
    for size in MULTISCALE_SIZES:
        resized = resize_shorter(image, size)
        per_scale.append(crop_views(resized, multiscale_view_boxes(resized.shape[-1], resized.shape[-2])))
    return torch.cat(per_scale)


def _center_stacked(image: torch.Tensor) -> torch.Tensor:
    return center_view(image).unsqueeze(0)


def _full_stacked(image: torch.Tensor) -> torch.Tensor:
    return full_view(image).unsqueeze(0)


_STACKED_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "center": _center_stacked,
    "tenview": ten_views,
    "full": _full_stacked,
    "multiscale": multiscale_views,
    "tenview_fmap": _full_stacked,
}


def stacked_views(protocol: TestViews) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that turns one uint8 CHW image into its (V, 3, H, W) views under ``protocol``."""
    if protocol not in _STACKED_VIEWS:
        raise ValueError(f"unknown test views {protocol!r}; known: {', '.join(_STACKED_VIEWS)}")
    return _STACKED_VIEWS[protocol]
