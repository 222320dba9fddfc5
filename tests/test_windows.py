"""Windows pooled on conv maps (models/windows.py): the Appendix A mapping and the geometry it rests on, the batched
pyramid pooling against the plain per-window reading, crops, mirrors, scales and bad boxes, on real trunks."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.io import decode_jpeg
from torchvision.ops import roi_pool

from spp_cls.data.synthetic import render_image, synthetic_classes
from spp_cls.models import TRUNKS, create, feature_map_geometry, spatial_pyramid_pool2d
from spp_cls.models.backbones import Conv, MaxPool
from spp_cls.models.windows import (
    ScaledMaps,
    boxes_to_cells,
    conv_maps,
    mirror_boxes,
    nearest_scale,
    pool_on_maps,
    pyramid_pool_cells,
    roi_pool_is_exact,
    scaled_size,
    views_on_feature_maps,
)
from spp_cls.view_protocols import ten_view_boxes


def cells(lo: float, hi: float, stride: int, offset: float, size: int) -> tuple[int, int]:
    """Appendix A for one edge pair, written out plainly: the half-open cell range [first, stop) of pixels [lo, hi)."""
    first = math.floor((lo - offset) / stride) + 1
    last = math.ceil((hi - 1 - offset) / stride) - 1
    first, last = max(0, min(first, size - 1)), max(0, min(last, size - 1))
    if first > last:
        first = last = (first + last) // 2
    return first, last + 1


def window_by_hand(conv_map: torch.Tensor, box: tuple[float, float, float, float], geometry) -> torch.Tensor:
    """The plain reading: cut the window's cells out of one (1, C, h, w) conv map."""
    stride, offset = geometry
    x0, y0, x1, y1 = box
    rows = cells(y0, y1, stride, offset, conv_map.shape[-2])
    cols = cells(x0, x1, stride, offset, conv_map.shape[-1])
    return conv_map[:, :, rows[0]:rows[1], cols[0]:cols[1]]


def real_image(width: int, height: int, seed: int = 0) -> torch.Tensor:
    """A demo-class picture encoded as a real JPEG and decoded, mean-subtracted: (1, 3, height, width) float."""
    picture = render_image(synthetic_classes(3)[seed % 3], np.random.default_rng(seed), (min(width, height),) * 2)
    buffer = io.BytesIO()
    picture.resize((width, height)).save(buffer, format="JPEG", quality=92)
    return decode_jpeg(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)).float()[None] - 117.0


def net_for(backbone: str, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return create(backbone, head="spp", num_classes=num_classes, width=0.25, init="kaiming").eval()


# ---- the geometry and the mapping ----------------------------------------------------------------------------------
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
    assert net.feature_geometry == (stride, offset)
    x = torch.ones(1, 3, 224, 224, requires_grad=True)
    conv_map = trunk(x)
    j = conv_map.shape[-1] // 2
    conv_map[0, 0, j, j].backward()
    support = x.grad[0, 0].nonzero()
    rows, cols = support[:, 0], support[:, 1]
    assert (rows.min() + rows.max()) / 2 == (cols.min() + cols.max()) / 2 == stride * j + offset


def test_boxes_map_to_cells_by_appendix_a():
    boxes = torch.tensor([[0, 0, 224, 224],  # ZF-5 (S 16, O 15), 13x13 map of a 224 image: the whole map
                          [32, 0, 256, 224],  # left floor((32 - 15) / 16) + 1 = 2, right ceil((255 - 15) / 16) - 1 = 14
                          [0, 0, 400, 224],  # clamped to the map
                          [100, 100, 101, 101]], dtype=torch.float32)  # narrower than a cell: the one at its middle
    assert boxes_to_cells(boxes, (16, 15.0), (13, 16)).tolist() == [[0, 0, 12, 12], [2, 0, 14, 12], [0, 0, 15, 12],
                                                                     [5, 5, 5, 5]]
    generator = torch.Generator().manual_seed(0)
    corners = torch.randint(-40, 700, (500, 2, 2), generator=generator).float().sort(dim=1).values
    random_boxes = torch.cat([corners[:, 0], corners[:, 1] + 1], 1)  # (x0, y0, x1, y1), x1 > x0
    mapped = boxes_to_cells(random_boxes, (12, 5.5), (40, 50))
    for box, got in zip(random_boxes.tolist(), mapped.tolist()):
        cols, rows = cells(box[0], box[2], 12, 5.5, 50), cells(box[1], box[3], 12, 5.5, 40)
        assert got == [cols[0], rows[0], cols[1] - 1, rows[1] - 1], box


def test_roi_pool_bins_are_the_appendix_a_bins_for_the_paper_levels():
    """roi_pool bins [floor(i * (w / n)), ceil((i + 1) * (w / n))) in float32; adaptive_max_pool2d (= Appendix A)
    bins [floor(i * w / n), ceil((i + 1) * w / n)) in integers. Equal on every window of up to 40 x 40 cells for the
    levels the float check accepts, and the check does reject a level where they differ. The pyramid, whose levels
    3, 2, 1 are taken from level 6's bins, equals spatial_pyramid_pool2d on every such window."""
    generator = torch.Generator().manual_seed(0)
    conv_map = torch.randn(1, 3, 40, 40, generator=generator)
    for level in (1, 2, 3, 4, 6):
        assert roi_pool_is_exact(level, 4096)
        for height in range(1, 41):
            rois = torch.tensor([[0, 0, 0, width - 1, height - 1] for width in range(1, 41)], dtype=torch.float32)
            pooled = roi_pool(conv_map, rois, level, 1.0)
            for width in range(1, 41):
                adaptive = F.adaptive_max_pool2d(conv_map[..., :height, :width], level)[0]
                assert torch.equal(pooled[width - 1], adaptive), (level, height, width)
    for height in range(1, 41):  # the whole pyramid, its coarser levels taken from level 6's bins
        rois = torch.tensor([[0, 0, 0, width - 1, height - 1] for width in range(1, 41)], dtype=torch.float32)
        pyramid = pyramid_pool_cells(conv_map, rois, (6, 3, 2, 1))
        for width in range(1, 41):
            assert torch.equal(pyramid[width - 1], spatial_pyramid_pool2d(conv_map[..., :height, :width])[0])
    assert not roi_pool_is_exact(13, 64)
    rois = torch.tensor([[0, 0, 0, 13, 13]], dtype=torch.float32)  # 14 cells in 13 bins: float32 puts one edge off
    assert not torch.equal(roi_pool(conv_map, rois, 13, 1.0)[0], F.adaptive_max_pool2d(conv_map[..., :14, :14], 13)[0])


# ---- pooled windows against the pyramid and the crops --------------------------------------------------------------
@pytest.mark.parametrize("backbone", list(TRUNKS))
def test_a_window_over_whole_cells_gives_the_pyramid_of_those_cells(backbone):
    """Windows whose edges lie between cell centres cover exactly the cells in between; pooled in one batch of three
    images they equal `spatial_pyramid_pool2d` of those cells, and the whole image gives the whole map."""
    net = net_for(backbone)
    stride, offset = net.feature_geometry
    images = torch.cat([real_image(341, 256, seed) for seed in range(3)])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        maps = net.forward_features(images)
        rows, cols = maps.shape[-2:]
        boxes, expected = [[0, 0, 0, 341, 256]], [spatial_pyramid_pool2d(maps[:1])]
        for _ in range(12):
            image = int(torch.randint(0, 3, (), generator=generator))
            c0, c1 = sorted(torch.randint(0, cols, (2,), generator=generator).tolist())
            r0, r1 = sorted(torch.randint(0, rows, (2,), generator=generator).tolist())
            # left edge half a cell before cell c0's centre, right edge (its last pixel) half a cell after c1's
            box = [stride * c - stride / 2 + offset for c in (c0, r0)] + \
                  [stride * c + stride / 2 + offset for c in (c1, r1)]
            boxes.append([image, *box])
            expected.append(spatial_pyramid_pool2d(maps[image:image + 1, :, r0:r1 + 1, c0:c1 + 1]))
        pooled = net.pool_windows(images, torch.tensor(boxes))
    assert torch.equal(pooled, torch.cat(expected))


def receptive_field(backbone: str) -> int:
    size, jump = 1, 1
    for stage in TRUNKS[backbone].stages:
        for layer in (stage.conv, *(op for op in stage.post if isinstance(op, MaxPool))):
            size += (layer.kernel - 1) * jump
            jump *= layer.stride
    return size


@pytest.mark.parametrize("backbone", list(TRUNKS))
def test_a_window_equal_to_a_224_crop_differs_from_the_crops_forward_pass_only_at_the_borders(backbone):
    """A 224 window placed on a multiple of S maps onto exactly as many cells as the crop's own map (13 or 18), and
    every cell whose receptive field lies inside the crop is the crop's own cell (float tolerance). The border cells
    differ: the crop's conv layers see zero padding where the window's see the image around it (our paddings are not
    the paper's floor(k/2) ones, which changes what the padding reaches, not that it differs). Pooled over the whole
    pyramid this leaves, on these untrained Kaiming-initialised nets and a real JPEG, a relative L2 difference of at
    most 0.4 (measured 0.16-0.33) and a cosine similarity of at least 0.92 (measured 0.94-0.99)."""
    net = net_for(backbone)
    stride, offset = net.feature_geometry
    image = real_image(362, 300)
    x0, y0 = 2 * stride, 3 * stride
    crop = image[..., y0:y0 + 224, x0:x0 + 224]
    with torch.no_grad():
        crop_map = net.forward_features(crop)
        image_map = net.forward_features(image)
        window = window_by_hand(image_map, (x0, y0, x0 + 224, y0 + 224), (stride, offset))
        pooled = net.pool_windows(image, torch.tensor([[0.0, x0, y0, x0 + 224, y0 + 224]]))
    side = crop_map.shape[-1]
    assert window.shape == crop_map.shape and side in (13, 18)
    reach = receptive_field(backbone) / 2
    inner = [j for j in range(side) if stride * j + offset - reach >= 0 and stride * j + offset + reach <= 223]
    assert len(inner) >= 3, inner
    lo, hi = inner[0], inner[-1] + 1
    torch.testing.assert_close(window[..., lo:hi, lo:hi], crop_map[..., lo:hi, lo:hi], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(window, crop_map, rtol=1e-4, atol=1e-4)
    own = net.pool(crop_map)
    assert torch.equal(pooled, net.pool(window))
    assert (pooled - own).norm() / own.norm() < 0.4
    assert F.cosine_similarity(pooled, own).item() > 0.92


def mirror_symmetric(net: nn.Module) -> nn.Module:
    """Every conv kernel averaged with its mirror image: the trunk then commutes with a horizontal flip wherever
    every layer covers its input exactly (no floor-mode remainder)."""
    for layer in net.trunk.modules():
        if isinstance(layer, nn.Conv2d):
            layer.weight.data = (layer.weight.data + layer.weight.data.flip(-1)) / 2
    return net


def covers_exactly(backbone: str, width: int) -> bool:
    side = width
    for stage in TRUNKS[backbone].stages:
        for layer in (stage.conv, *(op for op in stage.post if isinstance(op, MaxPool))):
            padding = layer.padding if isinstance(layer, Conv) else 0
            if (side + 2 * padding - layer.kernel) % layer.stride:
                return False
            side = (side + 2 * padding - layer.kernel) // layer.stride + 1
    return True


@pytest.mark.parametrize("backbone", ["zf5", "overfeat7"])
def test_a_window_on_the_mirrored_image_is_the_mirror_of_the_window(backbone):
    """On a mirror-symmetric trunk and an image width it covers exactly, the conv map of the mirrored image is the
    mirrored conv map; so the mirrored box on it must pool the same cells as the box, mirrored, bin by bin. An
    off-by-one in the mirrored box or in the offset O would pool a neighbouring column instead."""
    net = mirror_symmetric(net_for(backbone))
    width = next(w for w in range(300, 420) if covers_exactly(backbone, w))
    image = real_image(width, 256)
    boxes = torch.tensor([[7, 11, 180, 200], [40, 0, 301, 256], [0, 30, 150, 90], [100, 100, 130, 120]],
                         dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(net.forward_features(image.flip(-1)), net.forward_features(image).flip(-1), atol=1e-4)
        direct = net.pool_windows(image, [boxes])
        mirrored = net.pool_windows(image.flip(-1), [mirror_boxes(boxes, width)])
    channels = direct.shape[1] // net.pool.num_bins
    offset = 0
    for level in net.pool.levels:  # flip each level's (C, n, n) bins back before comparing
        size = channels * level * level
        back = mirrored[:, offset:offset + size].view(-1, channels, level, level).flip(-1).flatten(1)
        torch.testing.assert_close(back, direct[:, offset:offset + size], rtol=1e-4, atol=1e-4)
        offset += size


# ---- batches, 10 views, scales -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("backbone", "width"), [("zf5", 256), ("overfeat7", 341)])
def test_ten_views_of_a_batch_equal_each_window_of_each_image_alone(backbone: str, width: int) -> None:
    """The batched 10-view (trunk once on the batch + its mirror, fc layers once on all pooled windows) equals the
    plain reading: each window cut from its own image's conv map and run through the head alone."""
    net = net_for(backbone)
    images = torch.cat([real_image(width, 256, seed) for seed in range(3)])
    with torch.no_grad():
        batched = views_on_feature_maps(net, images, ten_view_boxes(width, 256))
        expected = []
        for image in images:
            maps = {False: net.forward_features(image[None]), True: net.forward_features(image[None].flip(-1))}
            one_by_one = []
            for box in ten_view_boxes(width, 256):
                x0, x1 = (width - box.x1, width - box.x0) if box.flip else (box.x0, box.x1)
                window = window_by_hand(maps[box.flip], (x0, box.y0, x1, box.y1), net.feature_geometry)
                one_by_one.append(net.forward_head(window).softmax(dim=1))
            expected.append(torch.stack(one_by_one).mean(dim=0))
    assert batched.shape == (3, 10)
    torch.testing.assert_close(batched, torch.cat(expected), rtol=1e-4, atol=1e-6)


def test_windows_of_several_images_in_one_batch_equal_each_image_alone():
    net = net_for("convnet5")
    images = torch.cat([real_image(400, 300, seed) for seed in range(3)])
    boxes = [torch.tensor([[0, 0, 400, 300], [50, 20, 260, 240]], dtype=torch.float32),
             torch.tensor([[10, 10, 90, 60]], dtype=torch.float32),
             torch.tensor([[120, 30, 399, 299], [0, 150, 200, 300], [5, 5, 300, 295]], dtype=torch.float32)]
    with torch.no_grad():
        together = net.forward_windows(images, boxes, pre_logits=True)
        alone = torch.cat([net.forward_windows(images[i:i + 1], [boxes[i]], pre_logits=True) for i in range(3)])
        as_rows = net.forward_windows(images, torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                                                         for i, b in enumerate(boxes)]), pre_logits=True)
    assert together.shape == (6, net.num_features)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert torch.equal(together, as_rows)


def test_each_window_is_pooled_at_the_scale_where_its_area_is_nearest_224_squared():
    net = net_for("zf5")
    image = real_image(500, 375)
    scales = (480, 576, 688, 864, 1200)
    boxes = torch.tensor([[0, 0, 0, 500, 375], [0, 100, 80, 260, 200], [0, 10, 10, 60, 50], [0, 200, 100, 330, 330]],
                         dtype=torch.float32)
    choice = nearest_scale(boxes, (375, 500), scales)
    for box, chosen in zip(boxes.tolist(), choice.tolist()):
        areas = [(box[3] - box[1]) * (box[4] - box[2]) * (s / 375) ** 2 for s in scales]
        assert chosen == min(range(len(scales)), key=lambda i: abs(areas[i] - 224 * 224))
    assert choice.tolist()[:3] == [0, 1, 4]  # the whole image at the smallest scale, a 40x40 box at the largest
    with torch.no_grad():
        pooled = net.pool_windows(image, boxes, scales)
        for box, chosen, features in zip(boxes.tolist(), choice.tolist(), pooled):
            height, width = scaled_size((375, 500), scales[chosen])
            resized = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
            scaled_box = [box[1] * width / 500, box[2] * height / 375, box[3] * width / 500, box[4] * height / 375]
            window = window_by_hand(net.forward_features(resized), scaled_box, net.feature_geometry)
            torch.testing.assert_close(features[None], spatial_pyramid_pool2d(window), rtol=1e-4, atol=1e-4)


# ---- bad boxes and nets that cannot take windows -------------------------------------------------------------------
def test_degenerate_boxes_are_refused_and_boxes_over_the_edge_are_cut_at_it():
    net = net_for("zf5")
    image = real_image(320, 240)
    for box, why in (([10, 10, 10, 50], "no area"), ([50, 10, 20, 60], "no area"), ([10, 60, 50, 20], "no area"),
                     ([320, 0, 400, 100], "wholly outside the 320x240 image"), ([-50, -40, 0, 10], "wholly outside")):
        with pytest.raises(ValueError, match=why):
            net.forward_windows(image, [torch.tensor([box], dtype=torch.float32)])
    with pytest.raises(ValueError, match="image indices"):
        net.forward_windows(image, torch.tensor([[1.0, 0, 0, 10, 10]]))
    with torch.no_grad():
        over = net.pool_windows(image, [torch.tensor([[-30.0, 100, 400, 300]])])
        cut = net.pool_windows(image, [torch.tensor([[0.0, 100, 320, 240]])])
        tiny = net.pool_windows(image, [torch.tensor([[150.0, 100, 151, 101]])])
        one_cell = spatial_pyramid_pool2d(window_by_hand(net.forward_features(image), (150, 100, 151, 101),
                                                         net.feature_geometry))
    assert torch.equal(over, cut)
    assert torch.equal(tiny, one_cell)


def test_nets_without_a_pyramid_or_a_known_geometry_refuse_windows():
    boxes = [torch.tensor([[0.0, 0, 100, 100]])]
    nospp = create("zf5", head="nospp", num_classes=3, width=0.0625)
    with pytest.raises(ValueError, match="SPP head"):
        nospp.forward_windows(torch.zeros(1, 3, 224, 224), boxes)
    timm_net = create("resnet18", head="spp", num_classes=3, width=0.0625)
    with pytest.raises(ValueError, match="stride and offset"):
        timm_net.forward_windows(torch.zeros(1, 3, 224, 224), boxes)


# ---- CUDA (skipped without a device) -------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_windows_on_the_gpu_pool_the_same_bins_as_on_the_cpu_and_bf16_stays_close():
    """roi_pool's CUDA kernel computes its bin edges with the same float32 arithmetic: the pooled features of the
    same conv maps are identical; bf16 autocast logits point where the fp32 ones do (cosine > 0.99)."""
    net = net_for("zf5", num_classes=21)
    image = real_image(500, 375)
    boxes = torch.tensor([[0, 0, 0, 500, 375], [0, 10, 20, 60, 90], [0, 100, 100, 330, 300], [0, 0, 150, 499, 160]],
                         dtype=torch.float32)
    scales = (480, 688, 1200)
    with torch.no_grad():
        cpu_maps = conv_maps(net, image, scales)
        on_cpu = pool_on_maps(net, cpu_maps, boxes, (375, 500), scales)
        net.cuda()
        on_gpu = pool_on_maps(net, [ScaledMaps(entry.maps.cuda(), entry.image_size) for entry in cpu_maps],
                              boxes.cuda(), (375, 500), scales)
        fp32 = net.forward_windows(image.cuda(), boxes.cuda(), scales)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = net.forward_windows(image.cuda(), boxes.cuda(), scales)
    assert torch.equal(on_gpu.cpu(), on_cpu)
    assert F.cosine_similarity(bf16.float(), fp32).min().item() > 0.99
