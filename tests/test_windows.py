"""10-view on feature maps: the window -> conv-cell mapping, and the geometry it rests on, checked on real trunks."""
import pytest
import torch
from torch import nn

from spp_cls.data.stream.views import ten_view_boxes
from spp_cls.models import TRUNKS, create, feature_map_geometry
from spp_cls.models.windows import views_on_feature_maps, window_to_cells


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


@pytest.mark.parametrize(("backbone", "width"), [("zf5", 256), ("overfeat7", 341)])
def test_one_trunk_pass_and_one_head_pass_give_the_ten_windows_one_at_a_time(backbone: str, width: int) -> None:
    """The batched 10-view (trunk on image + mirror together, fc layers once on the 10 pooled windows) equals the
    plain reading: each window cut from its own image's conv map and run through the head alone."""
    torch.manual_seed(0)
    net = create(backbone, head="spp", num_classes=10, width=0.25, init="kaiming").eval()
    image = torch.randn(1, 3, 256, width)
    stride, offset = geometry = feature_map_geometry(TRUNKS[backbone])
    with torch.no_grad():
        batched = views_on_feature_maps(net, image, ten_view_boxes(image.shape[-1], image.shape[-2]), geometry)
        maps = {False: net.forward_features(image), True: net.forward_features(image.flip(-1))}
        one_by_one = []
        for box in ten_view_boxes(width, 256):
            x0, x1 = (width - box.x1, width - box.x0) if box.flip else (box.x0, box.x1)
            conv_map = maps[box.flip]
            rows = window_to_cells(box.y0, box.y1, stride, offset, conv_map.shape[-2])
            cols = window_to_cells(x0, x1, stride, offset, conv_map.shape[-1])
            window = conv_map[:, :, rows[0]:rows[1], cols[0]:cols[1]]
            one_by_one.append(net.forward_head(window).softmax(dim=1))
    assert batched.shape == (1, 10)
    torch.testing.assert_close(batched, torch.stack(one_by_one).mean(dim=0), rtol=1e-4, atol=1e-6)
