"""`spp-cls bench windows`: the paper's Table 9 (detection speed) measured here.

    spp-cls bench windows [--images N] [--windows W] [--boxes FILE.json] [--width W] [--device cpu|cuda]
                          [--precision 32|bf16] [--seed N] [--out FILE.json]

For N images of 500 x 375 (Pascal VOC's usual size, 4:3; demo-class pictures) with W windows each, the same ZF-5
SPP network (21 classes, as the paper's fine-tuned detector) classifies every window three ways, and each way is
timed per image between device synchronisations:
- SPP 1-scale: the image resized to s = 688, the trunk once, every window pooled on its conv5 map (Appendix A);
- SPP 5-scale: the trunk once per scale in {480, 576, 688, 864, 1200}, each window pooled at the one scale where
  its area is nearest 224 x 224;
- R-CNN: every window cut out of the image and warped (bilinear) to 224 x 224, the whole network on those crops in
  batches of 100.
"conv" is everything up to the conv5 maps (resizing or warping included), "fc" the pooling and fc6-fc8. The windows
are drawn reproducibly (seed) with the spread of selective-search proposals: square root of the area log-uniform from
16 pixels to the image's, aspect ratio log-uniform in [1/3, 3], position uniform; or read from a JSON file (the
`spp-cls predict --boxes` format, one image per entry in order, boxes on 500 x 375, cut at its edge). Every way runs
untimed on the first image's first 100 windows first (warm-up). The paper's GPU seconds (Tables 9 and 10) are
printed beside. No mAP: Pascal VOC and selective search are not part of this harness.

NOTE: R-CNN warps with 16 pixels of context around each box and to 227 x 227 (AlexNet); here the warp is the bare box
to 224 x 224, the size this network classifies, and the fc time has no SVMs (the paper's includes them).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from ..box_file import BoxFileError, cut_at_edge, read_box_file
from ..data.synthetic import render_image, synthetic_classes
from ..models import create
from ..models.windows import conv_maps, pool_on_maps
from ..paper import (
    DETECTION_SCALES,
    DETECTION_SINGLE_SCALE,
    TABLE9_TIMES,
    TABLE10_CONV_SPEEDUPS,
    TABLE10_SPEEDUPS,
    TABLE10_TIMES,
)
from ..protocol import IMAGENET_PIXEL_STATISTICS
from ..view_protocols import CROP
from .device import autocast, device_name, synchronize
from .settings import PRECISIONS, BenchParser, BenchUsageError, positive_float, positive_int

IMAGE_SIZE = (375, 500)
"""(height, width) of the bench images."""
DETECTION_CLASSES = 21
"""Pascal VOC's 20 classes and background: the fc8 of the paper's fine-tuned detector."""
RCNN_BATCH = 100
SMALLEST_PROPOSAL = 16
WAYS = ("spp_1scale", "spp_5scale", "rcnn")
TITLES = {"spp_1scale": "SPP 1-scale", "spp_5scale": "SPP 5-scale", "rcnn": "R-CNN"}


@dataclass(frozen=True)
class WindowsSettings:
    images: int | None
    windows: int
    width: float
    device: str
    precision: str
    seed: int
    boxes: Path | None
    out: Path | None


def parse_settings(argv: Sequence[str]) -> WindowsSettings:
    parser = BenchParser(prog="spp-cls bench windows", description="Detection speed (paper Table 9): SPP-net "
                         "windows on conv maps against R-CNN crops.")
    parser.add_argument("--images", type=positive_int,
                        help="images timed (default 2, or every image of the --boxes file)")
    parser.add_argument("--windows", type=positive_int, default=2000, help="windows per image (default 2000)")
    parser.add_argument("--boxes", type=Path, help="JSON of boxes per image instead of drawn ones")
    parser.add_argument("--width", type=positive_float, default=1.0,
                        help="width multiplier of ZF-5 (1.0 = the paper's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="32", help="bf16: autocast")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn windows and images")
    parser.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(list(argv))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchUsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if args.out is not None and not args.out.parent.is_dir():
        raise BenchUsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    return WindowsSettings(args.images, args.windows, args.width, device, args.precision, args.seed, args.boxes,
                           args.out)


# ---- inputs --------------------------------------------------------------------------------------------------------
def proposal_boxes(count: int, image_size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(count, 4) integer-valued boxes (x0, y0, x1, y1) spread like selective-search proposals (module docstring)."""
    height, width = image_size
    uniform = torch.rand(count, 4, generator=generator, dtype=torch.float64)
    side = torch.exp(math.log(SMALLEST_PROPOSAL) + uniform[:, 0] * math.log(math.sqrt(height * width)
                                                                             / SMALLEST_PROPOSAL))
    aspect = torch.exp((uniform[:, 1] * 2 - 1) * math.log(3))
    box_width = (side * aspect.sqrt()).round().clamp(1, width)
    box_height = (side / aspect.sqrt()).round().clamp(1, height)
    x0 = (uniform[:, 2] * (width - box_width + 1)).floor()
    y0 = (uniform[:, 3] * (height - box_height + 1)).floor()
    return torch.stack([x0, y0, x0 + box_width, y0 + box_height], 1).float()


def bench_images(count: int, seed: int) -> torch.Tensor:
    """uint8 (count, 3, 375, 500) demo-class pictures (a coloured shape on a textured background)."""
    rng = np.random.default_rng(seed)
    classes = synthetic_classes(10, seed)
    pictures = []
    for index in range(count):
        picture = render_image(classes[index % len(classes)], rng, (IMAGE_SIZE[0], IMAGE_SIZE[0]))
        resized = picture.resize((IMAGE_SIZE[1], IMAGE_SIZE[0]))
        pictures.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))
    return torch.stack(pictures)


def windows_per_image(settings: WindowsSettings) -> list[torch.Tensor]:
    if settings.boxes is None:
        generator = torch.Generator().manual_seed(settings.seed)
        return [proposal_boxes(settings.windows, IMAGE_SIZE, generator) for _ in range(settings.images or 2)]
    try:
        per_image = list(read_box_file(settings.boxes).items())
        if not per_image:
            raise BoxFileError(f"box file {settings.boxes} holds no images")
        if settings.images is not None and len(per_image) < settings.images:
            raise BoxFileError(f"box file {settings.boxes} holds boxes for {len(per_image)} images, --images asks "
                               f"for {settings.images}")
        for name, boxes in per_image:
            if not boxes:
                raise BoxFileError(f"box file {settings.boxes}: {name!r} has no boxes")
        cut = [cut_at_edge(boxes, IMAGE_SIZE[1], IMAGE_SIZE[0], name) for name, boxes in per_image[:settings.images]]
    except BoxFileError as error:
        raise BenchUsageError(str(error)) from None
    return [torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) for boxes in cut]


# ---- the three ways ------------------------------------------------------------------------------------------------
def _timed(device: torch.device, work: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    synchronize(device)
    started = time.perf_counter()
    result = work(*args)
    synchronize(device)
    return result, time.perf_counter() - started


def spp_times(net: torch.nn.Module, image: torch.Tensor, boxes: torch.Tensor, scales: Sequence[int],
              device: torch.device) -> tuple[float, float]:
    """(conv, fc) seconds of one image's windows: trunk once per scale, then pooling + fc6-fc8 on all windows."""
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1).to(device)
    scaled, conv_s = _timed(device, conv_maps, net, image, scales)
    _, fc_s = _timed(device, lambda: net.forward_pooled(pool_on_maps(net, scaled, rois, IMAGE_SIZE, scales)))
    return conv_s, fc_s


def warped_conv_maps(net: torch.nn.Module, image: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """The conv5 maps of the (K, 5) boxes of `image`, each warped to 224 x 224.

    roi_align with one bilinear sample per output pixel (aligned=True: pixel centres at +0.5) is the box resized to
    224 x 224 (bilinear, no antialiasing), as cropping and resizing each box would give, but batched; only the
    outermost output pixels of an enlarged box differ (they blend in the image pixel beyond the box edge).
    """
    return net.forward_features(roi_align(image, rois, CROP, spatial_scale=1.0, sampling_ratio=1, aligned=True))


def rcnn_times(net: torch.nn.Module, image: torch.Tensor, boxes: torch.Tensor,
               device: torch.device) -> tuple[float, float]:
    """(conv, fc) seconds of one image's windows the R-CNN way: warp each to 224, the whole net in batches of 100."""
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1).to(device)
    conv_s = fc_s = 0.0
    for start in range(0, len(rois), RCNN_BATCH):
        maps, seconds = _timed(device, warped_conv_maps, net, image, rois[start:start + RCNN_BATCH])
        conv_s += seconds
        fc_s += _timed(device, net.forward_head, maps)[1]
    return conv_s, fc_s


def run_windows_bench(settings: WindowsSettings) -> dict[str, Any]:
    device = torch.device(settings.device)
    boxes = windows_per_image(settings)
    torch.manual_seed(0)
    net = create("zf5", head="spp", num_classes=DETECTION_CLASSES, width=settings.width).to(device).eval()
    mean = torch.tensor(IMAGENET_PIXEL_STATISTICS.mean_rgb, device=device)[:, None, None]
    images = [(image.to(device).float() - mean)[None] for image in bench_images(len(boxes), settings.seed)]
    ways: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]] = {
        "spp_1scale": lambda image, b: spp_times(net, image, b, (DETECTION_SINGLE_SCALE,), device),
        "spp_5scale": lambda image, b: spp_times(net, image, b, DETECTION_SCALES, device),
        "rcnn": lambda image, b: rcnn_times(net, image, b, device),
    }
    sums = {way: [0.0, 0.0] for way in WAYS}
    with torch.inference_mode(), autocast(device, settings.precision):
        for measure in ways.values():  # warm-up: every way once on the first image's first windows
            measure(images[0], boxes[0][:RCNN_BATCH])
        for index, (image, image_boxes) in enumerate(zip(images, boxes)):
            print(f"bench windows: image {index + 1}/{len(images)} ({len(image_boxes)} windows)", file=sys.stderr,
                  flush=True)
            for way, measure in ways.items():
                conv_s, fc_s = measure(image, image_boxes)
                sums[way][0] += conv_s
                sums[way][1] += fc_s
    report: dict[str, Any] = {
        way: {"conv_s": conv / len(images), "fc_s": fc / len(images), "total_s": (conv + fc) / len(images)}
        for way, (conv, fc) in sums.items()
    }
    for way in ("spp_1scale", "spp_5scale"):
        suffix = way.removeprefix("spp_")
        report[f"speedup_{suffix}"] = report["rcnn"]["total_s"] / report[way]["total_s"]
        report[f"conv_speedup_{suffix}"] = report["rcnn"]["conv_s"] / report[way]["conv_s"]
    report["settings"] = {
        **{key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()},
        "images": len(boxes),
        "network": "zf5_spp", "classes": DETECTION_CLASSES, "image_size": list(IMAGE_SIZE),
        "windows_per_image": [len(b) for b in boxes], "scales_1": [DETECTION_SINGLE_SCALE],
        "scales_5": list(DETECTION_SCALES), "rcnn_batch": RCNN_BATCH, "device_name": device_name(device),
        "torch": torch.__version__,
    }
    return report


# ---- report --------------------------------------------------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    counts = settings["windows_per_image"]
    lines = [
        (f"spp-cls bench windows: ZF-5 SPP at width {settings['width']:g} ({settings['classes']} classes) on "
         f"{settings['device']} ({settings['device_name']}), precision {settings['precision']}; {len(counts)} images "
         f"of {settings['image_size'][1]}x{settings['image_size'][0]}, {round(sum(counts) / len(counts))} windows "
         "per image"),
        ("seconds per image; paper: GPU, Pascal VOC, ~2,000 selective-search windows (Table 10 re-runs R-CNN with "
         "the same ZF-5, Table 9 quotes R-CNN with AlexNet)"),
        "",
    ]
    header = ("", *(TITLES[way] for way in WAYS), "|", *(f"paper {TITLES[way]}" for way in WAYS), "paper R-CNN Alex-5")
    rows = [header]
    for key, title in (("conv_s", "conv time"), ("fc_s", "fc time"), ("total_s", "total time")):
        rows.append((title, *(f"{report[way][key]:.4f}" for way in WAYS), "|",
                     *(f"{getattr(TABLE10_TIMES[way], key):.3f}" for way in WAYS),
                     f"{getattr(TABLE9_TIMES['rcnn'], key):.3f}"))
    rows.append(("speed-up (total)", f"{report['speedup_1scale']:.1f}x", f"{report['speedup_5scale']:.1f}x", "-",
                 "|", f"{TABLE10_SPEEDUPS['spp_1scale']:g}x", f"{TABLE10_SPEEDUPS['spp_5scale']:g}x", "-", ""))
    rows.append(("speed-up (conv)", f"{report['conv_speedup_1scale']:.1f}x", f"{report['conv_speedup_5scale']:.1f}x",
                 "-", "|", f"{TABLE10_CONV_SPEEDUPS['spp_1scale']:g}x", f"{TABLE10_CONV_SPEEDUPS['spp_5scale']:g}x",
                 "-", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              .rstrip() for row in rows]
    lines.append("No mAP: Pascal VOC and selective search are not part of this harness; this measures speed only.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        settings = parse_settings(argv)
        report = run_windows_bench(settings)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except BenchUsageError as error:
        print(f"spp-cls bench windows: error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    if settings.out is not None:
        settings.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {settings.out}")
    return 0
