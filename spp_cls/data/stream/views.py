"""The pixels of the test views: each protocol's view function turns one decoded uint8 CHW image into its
(V, 3, H, W) views. The protocols and the geometry of their windows live in :mod:`spp_cls.view_protocols`, which the
model's windows share; docs/data.md lists the protocols and docs/paper.md where the paper reports them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from spp_cls.view_protocols import (
    MULTISCALE_SIZES,
    TEST_SHORTER_SIDE,
    ViewBox,
    center_box,
    multiscale_view_boxes,
    resized_size,
    ten_view_boxes,
    view_protocol,
)


def resize_shorter(image: torch.Tensor, shorter_side: int) -> torch.Tensor:
    """Resizes a uint8 CHW image (bilinear, antialiased) so that its shorter side is ``shorter_side``."""
    height, width = image.shape[-2:]
    new_width, new_height = resized_size(width, height, shorter_side)
    if (new_width, new_height) == (width, height):
        return image
    return tvf.resize(image, [new_height, new_width], interpolation=InterpolationMode.BILINEAR, antialias=True)


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


VIEW_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "center": _center_stacked,
    "tenview": ten_views,
    "full": _full_stacked,
    "multiscale": multiscale_views,
    "tenview_fmap": _full_stacked,  # the model cuts the windows from the conv maps of the whole image
}
"""Per protocol of `view_protocols.VIEW_PROTOCOLS`: one uint8 CHW image -> its (V, 3, H, W) views."""


def stacked_views(protocol: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that turns one uint8 CHW image into its (V, 3, H, W) views under ``protocol``."""
    return VIEW_FUNCTIONS[view_protocol(protocol).name]
