"""The SPP-net paper's published ImageNet-2012 numbers, as data.

He, Zhang, Ren, Sun, "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
arXiv 1406.4729 v4 (= TPAMI 2015). All values are errors in percent on ImageNet 2012 val.
This module is the single source that model configs, the table report and the tests read.
"""
from __future__ import annotations

from dataclasses import dataclass

BACKBONES: tuple[str, ...] = ("zf5", "convnet5", "overfeat5", "overfeat7")
VARIANTS: tuple[str, ...] = ("nospp", "spp_single", "spp_multi")

BACKBONE_TITLES: dict[str, str] = {
    "zf5": "ZF-5",
    "convnet5": "Convnet*-5",
    "overfeat5": "Overfeat-5",
    "overfeat7": "Overfeat-7",
}
VARIANT_TITLES: dict[str, str] = {
    "nospp": "(a) no SPP",
    "spp_single": "(b) SPP single-size trained",
    "spp_multi": "(c) SPP multi-size trained",
    "spp_random": "SPP random-size trained [180, 224]",
}


@dataclass(frozen=True)
class PaperError:
    """Top-1 / top-5 error in percent, as printed in the paper."""

    top1: float
    top5: float


# Table 2 [P-6]: standard 10-view test (4 corners + center of the s=256 image, each flipped).
TABLE2: dict[tuple[str, str], PaperError] = {
    ("zf5", "nospp"): PaperError(35.99, 14.76),
    ("convnet5", "nospp"): PaperError(34.93, 13.92),
    ("overfeat5", "nospp"): PaperError(34.13, 13.52),
    ("overfeat7", "nospp"): PaperError(32.01, 11.97),
    ("zf5", "spp_single"): PaperError(34.98, 14.14),
    ("convnet5", "spp_single"): PaperError(34.38, 13.54),
    ("overfeat5", "spp_single"): PaperError(32.87, 12.80),
    ("overfeat7", "spp_single"): PaperError(30.36, 11.12),
    ("zf5", "spp_multi"): PaperError(34.60, 13.64),
    ("convnet5", "spp_multi"): PaperError(33.94, 13.33),
    ("overfeat5", "spp_multi"): PaperError(32.26, 12.33),
    ("overfeat7", "spp_multi"): PaperError(29.68, 10.95),
}

# Section 2.3 [P-4, P-6]: Overfeat-7 trained with s ~ U[180, 224] per epoch, 10-view test.
RANDOM_SIZE: dict[tuple[str, str], PaperError] = {("overfeat7", "spp_random"): PaperError(30.06, 10.96)}

# Section 2.1 [P-5]: ZF-5 single-size with a {4,3,2,1} (30-bin) pyramid, 10-view test.
ZF5_30BIN_PYRAMID = PaperError(35.06, 14.04)

# Table 3 [P-6]: single view, top-1 error only; key (backbone, variant, view) with view "crop" or "full".
TABLE3_TOP1: dict[tuple[str, str, str], float] = {
    ("zf5", "spp_single", "crop"): 38.01,
    ("zf5", "spp_single", "full"): 37.55,
    ("zf5", "spp_multi", "crop"): 37.57,
    ("zf5", "spp_multi", "full"): 37.07,
    ("overfeat7", "spp_single", "crop"): 33.18,
    ("overfeat7", "spp_single", "full"): 32.72,
    ("overfeat7", "spp_multi", "crop"): 32.57,
    ("overfeat7", "spp_multi", "full"): 31.25,
}

# Table 4 [P-7]: SPP Overfeat-7, 6 scales, 96 views + 2 full-image views.
TABLE4_MULTISCALE = PaperError(27.86, 9.14)


def paper_error(backbone: str, variant: str) -> PaperError | None:
    """The paper's 10-view error for one cell, or None where the paper reports none."""
    return TABLE2.get((backbone, variant)) or RANDOM_SIZE.get((backbone, variant))
