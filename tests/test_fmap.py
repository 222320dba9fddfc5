"""10-view on feature maps: the window -> conv-cell mapping, and the geometry it rests on, checked on real trunks."""
import pytest
import torch
from torch import nn

from spp_cls.models import TRUNKS, create, feature_map_geometry
from spp_cls.train.fmap import window_to_cells


@pytest.mark.parametrize("backbone", list(TRUNKS))
def test_geometry_is_the_receptive_field_centre_of_each_conv_cell(backbone):
    """Backpropagate from one conv cell of a trunk made linear-positive; the gradient's support is its receptive
    field, whose centre must be S * j + O."""
    net = create(backbone, head="spp", num_classes=2, width=0.0625)
    trunk = net.trunk
    for name, layer in list(trunk.named_children()):
        if isinstance(layer, nn.MaxPool2d):  # same window geometry, but every input of the window gets gradient
            setattr(trunk, name, nn.AvgPool2d(layer.kernel_size, layer.stride))
        elif not isinstance(layer, (nn.Conv2d, nn.ReLU)):
            setattr(trunk, name, nn.Identity())
        elif isinstance(layer, nn.Conv2d):
            nn.init.constant_(layer.weight, 0.01)
            nn.init.zeros_(layer.bias)
    stride, offset = feature_map_geometry(TRUNKS[backbone])
    x = torch.ones(1, 3, 224, 224, requires_grad=True)
    conv_map = trunk(x)
    j = conv_map.shape[-1] // 2
    conv_map[0, 0, j, j].backward()
    support = x.grad[0, 0].nonzero()
    rows, cols = support[:, 0], support[:, 1]
    assert (rows.min() + rows.max()) / 2 == (cols.min() + cols.max()) / 2 == stride * j + offset


def test_window_to_cells_follows_appendix_a():
    # ZF-5 (S 16, O 15) on its 13x13 map of a 224 image: the whole image maps to the whole map
    assert window_to_cells(0, 224, 16, 15.0, 13) == (0, 13)
    # a window that starts mid-image: left edge floor((32 - 15) / 16) + 1 = 2, right ceil((255 - 15) / 16) - 1 = 14
    assert window_to_cells(32, 256, 16, 15.0, 16) == (2, 15)
    # clamped to the map, and never empty
    assert window_to_cells(0, 400, 16, 15.0, 13) == (0, 13)
    assert window_to_cells(100, 101, 16, 15.0, 13) == (5, 6)
