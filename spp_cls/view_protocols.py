"""The test protocols, each defined once, and the geometry of their views.

A protocol says what the datamodule yields per image (views of 224, or the whole image) and whether the model
classifies those views or pools windows from the conv maps of the whole image. The geometry (the shorter-side resize
rule, the window boxes) is pure arithmetic on sizes, so the data's crops (`data/stream/views.py`, which adds each
protocol's view function on pixels) and the model's windows (`models/windows.py`) share it. Adding a protocol: a row
in `VIEW_PROTOCOLS`, its name in `protocol.TestViews`, and its view function in `data/stream/views.py`.
The paper's source of each protocol is `paper.PROTOCOL_SOURCES`; docs/data.md and docs/paper.md describe them.

Every view is a window on an image resized so that its shorter side is ``s`` (aspect kept), optionally flipped
horizontally after cropping. View order, everywhere: the unflipped windows first, then the same windows flipped, in
the same order.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .protocol import TestViews

CROP = 224
TEST_SHORTER_SIDE = 256
MULTISCALE_SIZES = (224, 256, 300, 360, 448, 560)


class ViewBox(NamedTuple):
    """A window ``[x0, x1) x [y0, y1)`` in pixels of the (resized) image; ``flip``: mirrored after cropping."""

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


WindowsOf = Callable[[int, int], list[ViewBox]]
"""The windows a protocol pools on the conv maps of a ``width`` x ``height`` image."""


@dataclass(frozen=True)
class ViewProtocol:
    """One test protocol: what the datamodule yields per image and how the model scores it."""

    name: TestViews
    views_per_image: int
    """V of the test batches (B, V, 3, H, W)."""
    whole_image: bool
    """The datamodule yields the whole s=256 image, one per batch (the images differ in size)."""
    feature_map_windows: WindowsOf | None = None
    """None: the model averages the softmax of the V views. Else: the windows it pools on the conv maps of the
    whole image and its mirror (one trunk pass), averaging their softmax."""


VIEW_PROTOCOLS: dict[str, ViewProtocol] = {protocol.name: protocol for protocol in (
    ViewProtocol("center", 1, whole_image=False),
    ViewProtocol("tenview", 10, whole_image=False),
    ViewProtocol("full", 1, whole_image=True),
    ViewProtocol("multiscale", 5 * 18 + 6, whole_image=False),
    ViewProtocol("tenview_fmap", 1, whole_image=True, feature_map_windows=ten_view_boxes),
)}


def view_protocol(name: str) -> ViewProtocol:
    """The protocol called ``name``; a ValueError naming the known ones otherwise."""
    if name not in VIEW_PROTOCOLS:
        raise ValueError(f"unknown test_views {name!r}; known: {', '.join(VIEW_PROTOCOLS)}")
    return VIEW_PROTOCOLS[name]
