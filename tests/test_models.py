"""The four paper networks, both heads: Table 1 map sizes, fc6 input lengths, forward/backward, registry, golden
outputs."""
import json
import os
from pathlib import Path

import pytest
import timm
import torch

from spp_cls import paper
from spp_cls.models import MODEL_CFGS, TRUNKS, conv_map_size, create, default_cfg, list_models, map_sizes, total_stride
from spp_cls.paper import TABLE2

GOLDEN = Path(__file__).parent / "golden" / "model_outputs.json"

# Table 1 of the paper, map sizes at 224 input, keyed by the layer after which the paper states them
# (the "map size" row is after conv1's pool for ZF-5/Overfeat, after conv2's pool for Convnet*-5 and Overfeat).
TABLE1_MAPS_224 = {
    "zf5": {"pool1": 55, "conv2": 27, "conv3": 13, "conv4": 13, "conv5": 13},
    "convnet5": {"conv1": 55, "pool2": 27, "pool3": 13, "conv4": 13, "conv5": 13},
    "overfeat5": {"pool1": 36, "pool2": 18, "conv3": 18, "conv4": 18, "conv5": 18},
    "overfeat7": {"pool1": 36, "pool2": 18, "conv3": 18, "conv4": 18, "conv5": 18, "conv6": 18, "conv7": 18},
}
# 180 input: 10x10 for ZF-5 / Convnet*-5 as the paper states; Overfeat gives 14x14 in floor mode (paper silent).
CONV_MAP_180 = {"zf5": 10, "convnet5": 10, "overfeat5": 14, "overfeat7": 14}
FC6_INPUT = {"nospp": {256: 9216, 512: 18432}, "spp": {256: 12800, 512: 25600}}


@pytest.mark.parametrize("backbone", list(TRUNKS))
def test_map_sizes_are_those_of_table_1(backbone):
    sizes = dict(map_sizes(TRUNKS[backbone], 224))
    assert {layer: sizes[layer] for layer in TABLE1_MAPS_224[backbone]} == TABLE1_MAPS_224[backbone]
    assert conv_map_size(TRUNKS[backbone], 180) == CONV_MAP_180[backbone]
    assert total_stride(TRUNKS[backbone]) == (16 if backbone in ("zf5", "convnet5") else 12)


@pytest.mark.parametrize("backbone", list(TRUNKS))
def test_the_built_trunk_produces_the_computed_map_sizes(backbone):
    net = create(backbone, head="spp", num_classes=10, width=0.125)
    for size in (224, 180):
        x = torch.randn(1, 3, size, size)
        seen = {}
        for name, layer in net.trunk.named_children():
            x = layer(x)
            seen[name] = x.shape[-1]
        expected = dict(map_sizes(TRUNKS[backbone], size))
        assert {name: seen[name] for name in expected} == expected


@pytest.mark.parametrize("name", list_models())
def test_fc6_input_length_and_registry_cfg(name):
    cfg = default_cfg(name)
    net = create(cfg.backbone, head=cfg.head)
    channels = TRUNKS[cfg.backbone].out_channels
    assert net.fc6.in_features == cfg.pooled_features == FC6_INPUT[cfg.head][channels]
    assert (net.fc6.out_features, net.fc7.out_features, net.fc8.out_features) == (4096, 4096, 1000)
    assert cfg.conv_map == {224: conv_map_size(TRUNKS[cfg.backbone], 224), 180: CONV_MAP_180[cfg.backbone]}
    for variant, err in cfg.paper_errors.items():
        assert TABLE2.get((cfg.backbone, variant), err) == err


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_at_both_training_sizes(name):
    cfg = default_cfg(name)
    net = create(cfg.backbone, head=cfg.head, num_classes=7, width=0.125, init="kaiming")
    sizes = (224,) if cfg.head == "nospp" else (224, 180)
    for size in sizes:
        x = torch.randn(2, 3, size, size, requires_grad=True)
        features = net.forward_features(x)
        assert features.shape[-1] == cfg.conv_map[size]
        assert net.pool(features).shape == (2, net.pooled_features)
        logits = net(x)
        assert logits.shape == (2, 7)
        logits.logsumexp(1).sum().backward()
        assert torch.isfinite(logits).all() and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", list_models())
def test_timm_create_model_builds_every_registered_network(name):
    net = timm.create_model(name, num_classes=5)
    assert net.head == default_cfg(name).head
    assert net.fc8.out_features == 5
    assert net.pretrained_cfg["architecture"] == name
    assert net.pretrained_cfg["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


def test_paper_init_statistics_and_biases():
    net = create("zf5", head="spp", init="paper")
    conv1, conv2 = net.trunk.conv1, net.trunk.conv2
    assert abs(conv1.weight.std().item() - 0.01) < 1e-3 and abs(net.fc6.weight.std().item() - 0.01) < 1e-4
    assert torch.all(conv1.bias == 0) and torch.all(conv2.bias == 1) and torch.all(net.trunk.conv3.bias == 0)
    assert all(torch.all(m.bias == 1) for m in (net.trunk.conv4, net.trunk.conv5, net.fc6, net.fc7, net.fc8))
    kaiming = create("zf5", head="spp", init="kaiming")
    assert torch.all(kaiming.trunk.conv2.bias == 0) and kaiming.trunk.conv3.weight.std() > 0.02


def test_width_scales_channels_but_no_map_size():
    thin = create("overfeat7", head="spp", width=0.25)
    assert thin.trunk.conv7.out_channels == 128 and thin.fc6.out_features == 1024
    assert thin.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 128, 18, 18)


def test_spp_head_on_a_timm_backbone():
    net = create("resnet18", head="spp", num_classes=3, width=0.125)
    assert net.pooled_features == 512 * 50
    for size in (64, 97):
        out = net(torch.randn(2, 3, size, size))
        assert out.shape == (2, 3)
    nospp = create("resnet18", head="nospp", num_classes=3, width=0.125)
    assert nospp.pooled_features == 512 * 36


def test_bad_names_and_sizes_give_clear_errors():
    with pytest.raises(ValueError, match="known backbones: zf5, convnet5, overfeat5, overfeat7"):
        create("zf6")
    with pytest.raises(ValueError, match="known models: zf5_nospp"):
        default_cfg("zf5")
    with pytest.raises(ValueError, match="unknown head"):
        create("zf5", head="pyramid")
    net = create("zf5", head="spp", width=0.125)
    conv1_calls = []
    net.trunk.conv1.register_forward_hook(lambda *args: conv1_calls.append(1))
    with pytest.raises(ValueError, match="smallest input that works is 31x31"):
        net(torch.randn(1, 3, 30, 30))
    assert not conv1_calls
    assert net(torch.randn(1, 3, 31, 31)).shape == (1, 1000)
    with pytest.raises(ValueError, match="only takes its training size"):
        create("zf5", head="nospp", width=0.125)(torch.randn(1, 3, 180, 180))


def _logits_summary(name: str) -> dict[str, list[float] | float | int]:
    cfg = default_cfg(name)
    torch.manual_seed(0)
    net = create(cfg.backbone, head=cfg.head).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 224, 224, generator=generator) * 60  # mean-subtracted pixels in 0-255 scale
    with torch.no_grad():
        logits = net(x)[0].double()
    return {
        "mean": logits.mean().item(),
        "std": logits.std().item(),
        "first": logits[:4].tolist(),
        "argmax": int(logits.argmax()),
    }


@pytest.mark.parametrize("name", list(MODEL_CFGS))
def test_golden_logits(name):
    """Any change of architecture or init changes these numbers. SPP_CLS_UPDATE_GOLDEN=1 rewrites the file."""
    got = _logits_summary(name)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("SPP_CLS_UPDATE_GOLDEN") == "1":
        stored[name] = got
        GOLDEN.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    expected = stored[name]
    assert got["argmax"] == expected["argmax"]
    assert got["mean"] == pytest.approx(expected["mean"], rel=1e-4, abs=1e-6)
    assert got["std"] == pytest.approx(expected["std"], rel=1e-4)
    assert got["first"] == pytest.approx(expected["first"], rel=1e-4, abs=1e-6)


def test_the_trunks_are_the_paper_s_networks_under_its_names():
    """One list of networks: the trunks are keyed by the paper's names, which also key its numbers and titles."""
    assert tuple(TRUNKS) == paper.BACKBONES == tuple(paper.BACKBONE_TITLES)
    assert {backbone for backbone, _ in paper.TABLE2} == set(TRUNKS)
    assert list_models() == [f"{backbone}_{head}" for backbone in TRUNKS for head in ("nospp", "spp")]
