"""The pyramid: output length for any map, and equality with the paper's sliding-window rule where it holds."""
import math

import pytest
import torch
import torch.nn.functional as F

from spp_cls.models import PAPER_LEVELS, SpatialPyramidPool2d, spatial_pyramid_pool2d


@pytest.mark.parametrize("side", [13, 18])
@pytest.mark.parametrize("level", PAPER_LEVELS)
def test_each_level_equals_the_papers_sliding_window_on_224_maps(side, level):
    x = torch.randn(3, 5, side, side)
    sliding = F.max_pool2d(x, kernel_size=math.ceil(side / level), stride=math.floor(side / level))
    assert sliding.shape[-2:] == (level, level)
    assert torch.equal(F.adaptive_max_pool2d(x, level), sliding)


def test_sliding_rule_breaks_on_the_180_network_map_which_is_why_it_is_not_used():
    x = torch.randn(1, 1, 10, 10)
    sliding = F.max_pool2d(x, kernel_size=math.ceil(10 / 6), stride=math.floor(10 / 6))
    assert sliding.shape[-2:] == (9, 9)
    assert spatial_pyramid_pool2d(x).shape == (1, 50)


@pytest.mark.parametrize("height,width", [(1, 1), (2, 7), (10, 10), (13, 13), (14, 14), (18, 18), (31, 17)])
@pytest.mark.parametrize("batch", [1, 4])
def test_output_length_is_channels_times_50_bins_for_any_map(height, width, batch):
    pool = SpatialPyramidPool2d()
    out = pool(torch.randn(batch, 8, height, width))
    assert pool.num_bins == 50
    assert out.shape == (batch, pool.output_length(8)) == (batch, 400)


def test_levels_are_laid_out_in_order_channel_major():
    x = torch.randn(2, 3, 13, 13)
    out = spatial_pyramid_pool2d(x, (2, 1))
    assert torch.equal(out[:, :12], F.adaptive_max_pool2d(x, 2).flatten(1))
    assert torch.equal(out[:, 12:], x.amax(dim=(2, 3)))


def test_bad_levels_and_inputs_are_refused():
    with pytest.raises(ValueError, match="positive"):
        SpatialPyramidPool2d((6, 0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        spatial_pyramid_pool2d(torch.randn(3, 13, 13))
