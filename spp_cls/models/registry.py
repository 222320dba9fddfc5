"""Model names, their default configs (with the paper's target errors) and the builders.

`create("zf5", head="spp")` builds a paper network; `create("resnet18", head="spp")` puts the pyramid + fc head on
any timm trunk. Every paper network is also registered in timm's registry as `{backbone}_{head}`, so
`timm.create_model("zf5_spp", num_classes=1000)` works.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..paper import BACKBONE_TITLES, RANDOM_SIZE, TABLE2, PaperError
from ..protocol import IMAGENET_PIXEL_STATISTICS, TRAIN_SIZES, VARIANTS
from .backbones import TRUNKS, build_trunk, conv_map_size, feature_map_geometry, min_input_size, scaled_width
from .init import Init, init_head, init_trunk
from .net import Head, SppNet, make_pool
from .spp import PAPER_LEVELS, SpatialPyramidPool2d

HEADS: tuple[str, ...] = ("nospp", "spp")
# The paper subtracts the per-channel mean in 0-255 scale and does not divide by a std. In timm's [0, 1] convention
# that is mean = ImageNet mean and std = 1/255: (x / 255 - mean) / (1 / 255) = x - 255 * mean.
TIMM_MEAN = tuple(channel / 255 for channel in IMAGENET_PIXEL_STATISTICS.mean_rgb)
TIMM_STD = (1 / 255, 1 / 255, 1 / 255)


@dataclass(frozen=True)
class SppModelCfg:
    """What a registered paper network is and which of the paper's cells it aims at."""

    name: str
    backbone: str
    head: Head
    input_size: int
    conv_map: dict[int, int]
    """Side of the last conv map per training size (224 and 180)."""
    pooled_features: int
    """Length of the fc6 input at width 1.0."""
    paper_errors: dict[str, PaperError]
    """The paper's 10-view top-1/top-5 errors per training variant (the variants of this head)."""


def _paper_errors(backbone: str, head: Head) -> dict[str, PaperError]:
    cells = {**TABLE2, **RANDOM_SIZE}
    return {
        variant: err
        for (cell_backbone, variant), err in cells.items()
        if cell_backbone == backbone and VARIANTS[variant].head == head
    }


def _model_cfg(backbone: str, head: Head) -> SppModelCfg:
    spec = TRUNKS[backbone]
    pool = make_pool(head, PAPER_LEVELS, (spec.nospp_pool.kernel, spec.nospp_pool.stride))
    return SppModelCfg(
        name=f"{backbone}_{head}",
        backbone=backbone,
        head=head,
        input_size=224,
        conv_map={size: conv_map_size(spec, size) for size in TRAIN_SIZES},
        pooled_features=pool.output_length(spec.out_channels),
        paper_errors=_paper_errors(backbone, head),
    )


MODEL_CFGS: dict[str, SppModelCfg] = {
    f"{backbone}_{head}": _model_cfg(backbone, head)  # type: ignore[arg-type]
    for backbone in TRUNKS
    for head in HEADS
}


def list_models() -> list[str]:
    return list(MODEL_CFGS)


def default_cfg(name: str) -> SppModelCfg:
    try:
        return MODEL_CFGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_CFGS)}") from None


@dataclass(frozen=True)
class NetOptions:
    """The options every network builder takes, written once: `create`, the builders and timm's entry points pass
    them through as keywords, so a new option is added here (and to `SppClassifier`, whose signature is the CLI's).

    Attributes:
        width: multiplies every conv and fc width of a paper net (only the fc widths of a timm trunk), no map size.
        init: "paper" (Gaussian 0.01, AlexNet biases) or "kaiming"; a timm trunk keeps timm's own init.
        levels: pyramid levels of the SPP head.
    """

    num_classes: int = 1000
    width: float = 1.0
    init: Init = "paper"
    levels: Sequence[int] = PAPER_LEVELS
    dropout: float = 0.5


def build_paper_net(backbone: str, head: Head = "spp", **options: Any) -> SppNet:
    """One of the paper's four networks (`options`: see `NetOptions`)."""
    if backbone not in TRUNKS:
        raise ValueError(f"unknown backbone {backbone!r}; known backbones: {', '.join(TRUNKS)}")
    opts = NetOptions(**options)
    spec = TRUNKS[backbone]
    trunk = build_trunk(spec, opts.width)
    pool = make_pool(head, opts.levels, (spec.nospp_pool.kernel, spec.nospp_pool.stride))
    net = SppNet(
        trunk,
        trunk_channels=scaled_width(spec.out_channels, opts.width),
        pool=pool,
        num_classes=opts.num_classes,
        fc_width=scaled_width(4096, opts.width),
        dropout=opts.dropout,
        min_input_size=min_input_size(spec),
        feature_geometry=feature_map_geometry(spec),
    )
    init_trunk(net.trunk, opts.init)
    init_head([m for m in (net.fc6, net.fc7, net.fc8) if isinstance(m, nn.Linear)], opts.init)
    return net


def build_timm_net(backbone: str, head: Head = "spp", **options: Any) -> SppNet:
    """The SPP (or 6x6 adaptive max-pool, for `nospp`) + fc head on a timm trunk without its own pooling.

    The trunk keeps timm's own init and has no pretrained weights (`options`: see `NetOptions`).
    """
    opts = NetOptions(**options)
    trunk = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
    pool = SpatialPyramidPool2d(opts.levels if head == "spp" else (6,))
    net = SppNet(
        _TimmTrunk(trunk),
        trunk_channels=trunk.num_features,
        pool=pool,
        num_classes=opts.num_classes,
        fc_width=scaled_width(4096, opts.width),
        dropout=opts.dropout,
    )
    init_head([m for m in (net.fc6, net.fc7, net.fc8) if isinstance(m, nn.Linear)], opts.init)
    return net


class _TimmTrunk(nn.Module):
    """A timm model used up to its last feature map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> Any:
        return self.model.forward_features(x)


def create(backbone: str, head: Head = "spp", **options: Any) -> SppNet:
    """Build a network by backbone name: one of the paper's four, or any timm model name.

    `options` go to the builder as they are (see `NetOptions`).
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}: choose one of {', '.join(HEADS)}")
    builder: Callable[..., SppNet]
    if backbone in TRUNKS:
        builder = build_paper_net
    elif timm.is_model(backbone):
        builder = build_timm_net
    else:
        raise ValueError(
            f"unknown backbone {backbone!r}; known backbones: {', '.join(TRUNKS)} "
            "(or any timm model name, see timm.list_models())"
        )
    return builder(backbone, head, **options)


# ---- timm registry -----------------------------------------------------------------------------------------------
def _timm_cfg(cfg: SppModelCfg) -> dict[str, Any]:
    smallest = 224 if cfg.head == "nospp" else min_input_size(TRUNKS[cfg.backbone])
    return {
        "input_size": (3, 224, 224),
        "min_input_size": (3, smallest, smallest),
        "fixed_input_size": cfg.head == "nospp",
        "num_classes": 1000,
        "mean": TIMM_MEAN,
        "std": TIMM_STD,
        "interpolation": "bilinear",
        "crop_pct": 224 / 256,
        "first_conv": "trunk.conv1",
        "classifier": "fc8",
        "paper_name": "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
        "paper_ids": "arXiv:1406.4729",
        "notes": tuple(f"{variant}: paper 10-view top-1/top-5 error {err.top1}/{err.top5}"
                       for variant, err in cfg.paper_errors.items()),
    }


default_cfgs = generate_default_cfgs({name: _timm_cfg(cfg) for name, cfg in MODEL_CFGS.items()})


def _timm_entrypoint(name: str) -> Callable[..., SppNet]:
    cfg = MODEL_CFGS[name]

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> SppNet:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights: train it with `spp-cls fit`")
        model_cls = partial(build_paper_net, cfg.backbone, cfg.head)
        # timm passes in_chans (and img_size for fixed-size models); the paper nets are RGB and size-agnostic
        return build_model_with_cfg(model_cls, name, pretrained=False, kwargs_filter=("in_chans", "img_size"), **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"{BACKBONE_TITLES[cfg.backbone]} with the {cfg.head} head (SPP-net, arXiv 1406.4729)."
    return entrypoint


for _name in MODEL_CFGS:
    register_model(_timm_entrypoint(_name))
