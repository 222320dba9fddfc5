"""Test views: geometry as data, and the pixels each view cuts out of real decoded JPEGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import coordinate_image, smooth_jpeg
from PIL import Image

from spp_cls.data.stream.pipeline import decode_rgb
from spp_cls.data.stream.views import (
    VIEW_FUNCTIONS,
    center_view,
    full_view,
    multiscale_views,
    resize_shorter,
    stacked_views,
    ten_views,
)
from spp_cls.paper import PROTOCOL_SOURCES
from spp_cls.protocol import TEST_PROTOCOLS
from spp_cls.view_protocols import (
    MULTISCALE_SIZES,
    VIEW_PROTOCOLS,
    ViewBox,
    multiscale_view_boxes,
    resized_size,
    ten_view_boxes,
)


def window_origin(crop: torch.Tensor) -> tuple[int, int, bool]:
    """(x0, y0, flipped) of a crop of a coordinate image, read from its pixels."""
    left = int(crop[0, 0, 0]) + 256 * int(crop[2, 0, 0])
    right = int(crop[0, 0, -1]) + 256 * int(crop[2, 0, -1])
    return min(left, right), int(crop[1, 0, 0]), left > right


def test_ten_view_boxes_are_center_and_corners_of_whole_image_then_flipped() -> None:
    boxes = ten_view_boxes(341, 256)
    origins = [(b.x0, b.y0) for b in boxes[:5]]
    assert origins == [(58, 16), (0, 0), (117, 0), (0, 32), (117, 32)]
    assert [b.flip for b in boxes] == [False] * 5 + [True] * 5
    assert [b[:4] for b in boxes[5:]] == [b[:4] for b in boxes[:5]]
    assert all(b.x1 - b.x0 == 224 and b.y1 - b.y0 == 224 for b in boxes)
    assert all(isinstance(b, tuple) and len(b) == 5 for b in boxes)


def test_boxes_refuse_an_image_smaller_than_the_crop() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        ten_view_boxes(223, 300)


def test_resized_size_keeps_aspect_and_sets_shorter_side() -> None:
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(256, 256, 224) == (224, 224)


def test_resize_shorter_is_antialiased_like_pil_on_a_decoded_jpeg() -> None:
    data = smooth_jpeg(500, 375)
    image = decode_rgb(data)
    resized = resize_shorter(image, 256)
    assert resized.dtype == torch.uint8 and tuple(resized.shape) == (3, 256, 341)
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.BILINEAR)
    reference_chw = torch.from_numpy(np.array(reference)).permute(2, 0, 1).float()
    assert (resized.float() - reference_chw).abs().mean() < 1.5


def test_ten_views_cut_the_boxes_of_the_256_image() -> None:
    image = coordinate_image(341, 256)  # already at s=256: the views are exact windows
    views = ten_views(image)
    assert views.shape == (10, 3, 224, 224) and views.dtype == torch.uint8
    for view, box in zip(views, ten_view_boxes(341, 256)):
        assert window_origin(view) == (box.x0, box.y0, box.flip)
    assert torch.equal(views[5], views[0].flip(-1))


def test_ten_views_of_a_full_size_jpeg_are_taken_after_resizing_to_256() -> None:
    image = decode_rgb(smooth_jpeg(375, 500, seed=3))  # portrait, full size as in the val shards
    views = ten_views(image)
    resized = resize_shorter(image, 256)
    assert tuple(resized.shape) == (3, 341, 256)
    for view, box in zip(views, ten_view_boxes(256, 341)):
        window = resized[:, box.y0 : box.y1, box.x0 : box.x1]
        assert torch.equal(view, window.flip(-1) if box.flip else window)


def test_center_view_is_the_middle_of_the_256_image() -> None:
    image = decode_rgb(smooth_jpeg(640, 480, seed=1))
    view = center_view(image)
    resized = resize_shorter(image, 256)
    assert view.shape == (3, 224, 224)
    assert torch.equal(view, resized[:, 16:240, 58:282])
    assert torch.equal(view, ten_views(image)[0])


def test_full_view_keeps_the_whole_image_at_shorter_side_256() -> None:
    assert full_view(decode_rgb(smooth_jpeg(500, 375))).shape == (3, 256, 341)
    assert full_view(decode_rgb(smooth_jpeg(300, 600))).shape == (3, 512, 256)


def test_multiscale_boxes_have_18_views_and_6_at_the_crop_size() -> None:
    boxes = multiscale_view_boxes(400, 300)
    assert len(boxes) == 18
    unflipped = {(b.x0, b.y0) for b in boxes[:9]}
    assert unflipped == {(88, 38), (0, 0), (176, 0), (0, 76), (176, 76), (88, 0), (88, 76), (0, 38), (176, 38)}
    at_crop = multiscale_view_boxes(299, 224)
    assert [(b.x0, b.y0) for b in at_crop[:3]] == [(0, 0), (37, 0), (75, 0)] and len(at_crop) == 6
    assert [(b.x0, b.y0) for b in multiscale_view_boxes(224, 299)[:3]] == [(0, 0), (0, 37), (0, 75)]
    assert len(multiscale_view_boxes(224, 224)) == 6


@pytest.mark.parametrize("size", [(500, 375), (300, 300)])
def test_multiscale_views_are_96_windows_over_six_scales(size: tuple[int, int]) -> None:
    image = decode_rgb(smooth_jpeg(*size, seed=2))
    views = multiscale_views(image)
    assert views.shape == (96, 3, 224, 224) and views.dtype == torch.uint8
    resized_560 = resize_shorter(image, 560)
    last_scale = multiscale_view_boxes(resized_560.shape[-1], resized_560.shape[-2])
    box: ViewBox = last_scale[-1]
    expected = resized_560[:, box.y0 : box.y1, box.x0 : box.x1].flip(-1)
    assert torch.equal(views[-1], expected)
    assert MULTISCALE_SIZES[0] == 224 and len(MULTISCALE_SIZES) == 6


def test_stacked_views_give_v_views_per_protocol() -> None:
    image = decode_rgb(smooth_jpeg(320, 240))
    assert stacked_views("center")(image).shape == (1, 3, 224, 224)
    assert stacked_views("tenview")(image).shape == (10, 3, 224, 224)
    assert stacked_views("full")(image).shape == (1, 3, 256, 341)
    with pytest.raises(ValueError, match="known: center, tenview, full, multiscale"):
        stacked_views("twelve")  # type: ignore[arg-type]


def test_every_protocol_is_named_once_and_has_its_view_function_and_paper_source() -> None:
    assert tuple(VIEW_PROTOCOLS) == TEST_PROTOCOLS
    assert set(VIEW_FUNCTIONS) == set(PROTOCOL_SOURCES) == set(TEST_PROTOCOLS)
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    for name, protocol in VIEW_PROTOCOLS.items():
        views = stacked_views(name)(image)
        assert views.shape[0] == protocol.views_per_image, name
        assert (views.shape[-2:] == (256, 341)) == protocol.whole_image, name
