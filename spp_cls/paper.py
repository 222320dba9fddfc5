"""The SPP-net paper's published ImageNet-2012 numbers, as data.

He, Zhang, Ren, Sun, "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
arXiv 1406.4729 v4 (= TPAMI 2015). All values are errors in percent on ImageNet 2012 val.
This module is the single source that model configs, the table report and the tests read.
"""
from __future__ import annotations

from dataclasses import dataclass

from .protocol import SPP_MULTI, SPP_RANDOM, SPP_SINGLE, TABLE_VARIANTS

BACKBONES: tuple[str, ...] = ("zf5", "convnet5", "overfeat5", "overfeat7")

BACKBONE_TITLES: dict[str, str] = {
    "zf5": "ZF-5",
    "convnet5": "Convnet*-5",
    "overfeat5": "Overfeat-5",
    "overfeat7": "Overfeat-7",
}


@dataclass(frozen=True)
class PaperError:
    """Top-1 / top-5 error in percent, as printed in the paper (None where it prints only the other)."""

    top1: float | None
    top5: float | None


# Table 2 [P-6]: standard 10-view test (4 corners + center of the s=256 image, each flipped); per backbone the
# (top-1, top-5) errors of the rows (a) no SPP, (b) SPP single-size, (c) SPP multi-size, in TABLE_VARIANTS order.
_TABLE2_ROWS: dict[str, tuple[tuple[float, float], ...]] = {
    "zf5": ((35.99, 14.76), (34.98, 14.14), (34.60, 13.64)),
    "convnet5": ((34.93, 13.92), (34.38, 13.54), (33.94, 13.33)),
    "overfeat5": ((34.13, 13.52), (32.87, 12.80), (32.26, 12.33)),
    "overfeat7": ((32.01, 11.97), (30.36, 11.12), (29.68, 10.95)),
}
TABLE2: dict[tuple[str, str], PaperError] = {
    (backbone, variant): PaperError(*errors)
    for backbone, rows in _TABLE2_ROWS.items()
    for variant, errors in zip(TABLE_VARIANTS, rows)
}

# Section 2.3 [P-4, P-6]: Overfeat-7 trained with s ~ U[180, 224] per epoch, 10-view test.
RANDOM_SIZE: dict[tuple[str, str], PaperError] = {("overfeat7", SPP_RANDOM): PaperError(30.06, 10.96)}

# Section 2.1 [P-5]: ZF-5 single-size with a {4,3,2,1} (30-bin) pyramid, 10-view test.
ZF5_30BIN_PYRAMID = PaperError(35.06, 14.04)

# Table 3 [P-6]: single view, top-1 error only; key (backbone, variant, view) with view "crop" or "full".
TABLE3_TOP1: dict[tuple[str, str, str], float] = {
    ("zf5", SPP_SINGLE, "crop"): 38.01,
    ("zf5", SPP_SINGLE, "full"): 37.55,
    ("zf5", SPP_MULTI, "crop"): 37.57,
    ("zf5", SPP_MULTI, "full"): 37.07,
    ("overfeat7", SPP_SINGLE, "crop"): 33.18,
    ("overfeat7", SPP_SINGLE, "full"): 32.72,
    ("overfeat7", SPP_MULTI, "crop"): 32.57,
    ("overfeat7", SPP_MULTI, "full"): 31.25,
}

# Table 4 [P-7]: SPP Overfeat-7 (multi-size trained), 6 scales, 96 views + 2 full-image views.
TABLE4_MULTISCALE = PaperError(27.86, 9.14)
# Section 3.1 [P-7]: the same network with the 96 views alone (the `multiscale` protocol); only top-5 is printed.
MULTIVIEW_96_TOP5: dict[tuple[str, str], float] = {("overfeat7", SPP_MULTI): 9.36}

# Where the paper's column of `spp-cls table --protocol P` comes from; tenview_fmap, which the paper finds within
# 0.1 point of the crops, is set beside Table 2.
PROTOCOL_SOURCES: dict[str, str] = {
    "tenview": "Table 2, standard 10-view test",
    "tenview_fmap": "Table 2, standard 10-view test on image crops (the paper: 10 views on feature maps are within "
                    "0.1 point of top-5 error)",
    "center": "Table 3, 1 center crop (top-1 only)",
    "full": "Table 3, 1 full-image view (top-1 only)",
    "multiscale": f"section 3.1, 6 scales x 96 views (top-5 only; with 2 more full-image views, Table 4: "
                  f"{TABLE4_MULTISCALE.top1}/{TABLE4_MULTISCALE.top5})",
}


def paper_error(backbone: str, variant: str, protocol: str = "tenview") -> PaperError | None:
    """The paper's error for one cell under one test protocol, or None where the paper reports none."""
    if protocol in ("tenview", "tenview_fmap"):
        return TABLE2.get((backbone, variant)) or RANDOM_SIZE.get((backbone, variant))
    if protocol in ("center", "full"):
        top1 = TABLE3_TOP1.get((backbone, variant, "crop" if protocol == "center" else "full"))
        return None if top1 is None else PaperError(top1, None)
    if protocol == "multiscale" and (backbone, variant) in MULTIVIEW_96_TOP5:
        return PaperError(None, MULTIVIEW_96_TOP5[(backbone, variant)])
    return None


# ---- Tables 9 and 10 [P-10/11]: detection speed on Pascal VOC 2007 -----------------------------------------------
# GPU seconds per image with ~2,000 selective-search windows: SPP-net ZF-5 pools every window on the conv5 map of
# the whole image (1 scale s = 688, or 5 scales, each window at the scale where its area is nearest 224 x 224); R-CNN
# warps every window to 227 x 227 and runs the whole network on it. Table 9's R-CNN is AlexNet (its own paper's
# figures); Table 10 re-runs R-CNN with the same ZF-5 (average over 100 random VOC images). Keys are those of
# `spp-cls bench windows`.
@dataclass(frozen=True)
class PaperTiming:
    """GPU seconds per image, as printed: conv layers, fc layers (pooling, fc, SVM), total."""

    conv_s: float
    fc_s: float
    total_s: float


DETECTION_SCALES: tuple[int, ...] = (480, 576, 688, 864, 1200)
DETECTION_SINGLE_SCALE = 688
TABLE9_TIMES: dict[str, PaperTiming] = {
    "spp_1scale": PaperTiming(0.053, 0.089, 0.142),
    "spp_5scale": PaperTiming(0.293, 0.089, 0.382),
    "rcnn": PaperTiming(8.96, 0.07, 9.03),
}
TABLE9_SPEEDUPS: dict[str, float] = {"spp_1scale": 64, "spp_5scale": 24}
"""Total-time speed-up over R-CNN with AlexNet."""
TABLE10_TIMES: dict[str, PaperTiming] = {
    "spp_1scale": PaperTiming(0.053, 0.089, 0.142),
    "spp_5scale": PaperTiming(0.293, 0.089, 0.382),
    "rcnn": PaperTiming(14.37, 0.089, 14.46),
}
TABLE10_SPEEDUPS: dict[str, float] = {"spp_1scale": 102, "spp_5scale": 38}
"""Total-time speed-up over R-CNN with the same ZF-5."""
TABLE10_CONV_SPEEDUPS: dict[str, float] = {"spp_1scale": 270, "spp_5scale": 49}
"""Conv-time speed-up over R-CNN with the same ZF-5 (section 4.3 text)."""
