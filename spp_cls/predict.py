"""`spp-cls predict`: a trained checkpoint classifies image files at their own size, or windows of them.

    spp-cls predict --ckpt RUN_DIR/last.ckpt IMAGE... [--boxes FILE.json] [--manifest DIR] [--top 5]
                    [--shorter-side S] [--device cpu|cuda]

An SPP network takes any input size, so each image is classified whole, as it is on disk (EXIF orientation applied),
or resized first so that its shorter side is S. With `--boxes` it classifies windows instead, all windows of an image
on one trunk pass (`SppNet.forward_windows`). The box file is a JSON object mapping an image (as given on the command
line, or its file name) to its boxes, each [x0, y0, x1, y1] in pixels of that image as on disk: the half-open box
[x0, x1) x [y0, y1), cut at the image's edge (`spp_cls/box_file.py`). Class names come from the train manifest of the
data the run trained on (its run directory's config.yaml names it), or from `--manifest`.

Bad input (an unreadable image or checkpoint, a box wholly off its image, windows for a no-SPP network, a manifest
whose classes do not match the checkpoint) is one `spp-cls predict: error:` line and exit status 2.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as tvf

from .box_file import boxes_of, cut_at_edge, read_box_file
from .data.manifest import MANIFEST_NAME, ClassEntry, Manifest, ManifestError
from .data.stream.views import resize_shorter

RUN_CONFIG = "config.yaml"


class PredictError(ValueError):
    """Bad input to `spp-cls predict`: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise PredictError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spp-cls predict", description="Classify image files, or windows of them, with a checkpoint.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--ckpt", required=True, type=Path, help="a checkpoint written by `spp-cls fit`")
    parser.add_argument("--boxes", type=Path, help="JSON: image -> [[x0, y0, x1, y1], ...] in pixels of that image")
    parser.add_argument("--manifest", type=Path,
                        help="class names: a shards root, split directory or manifest.json (default: the run's data)")
    parser.add_argument("--top", type=int, default=5, help="classes printed per image or window")
    parser.add_argument("--shorter-side", type=int, help="resize each image to this shorter side first")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return parser


# ---- inputs --------------------------------------------------------------------------------------------------------
def read_image(path: Path) -> torch.Tensor:
    """A uint8 (3, H, W) RGB tensor of an image file, EXIF orientation applied."""
    try:
        with Image.open(path) as picture:
            rgb = ImageOps.exif_transpose(picture).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise PredictError(f"cannot read image {path}: {error}") from None
    return tvf.pil_to_tensor(rgb)


def run_classes(ckpt: Path, manifest: Path | None) -> tuple[ClassEntry, ...]:
    """The classes of the train manifest: `manifest` if given, else that of the data in the run's config.yaml."""
    if manifest is None:
        config_path = ckpt.parent / RUN_CONFIG
        try:
            root = (yaml.safe_load(config_path.read_text()) or {}).get("data", {}).get("root")
        except (OSError, yaml.YAMLError):
            root = None
        if not root:
            raise PredictError(f"no {RUN_CONFIG} naming data.root beside {ckpt}: give the class names with "
                               "--manifest (a shards root or its train/manifest.json)")
        manifest = Path(root)
    if manifest.is_file():
        manifest = manifest.parent
    if not (manifest / MANIFEST_NAME).is_file() and (manifest / "train" / MANIFEST_NAME).is_file():
        manifest = manifest / "train"
    try:
        return Manifest.load(manifest).classes
    except (FileNotFoundError, ManifestError) as error:
        raise PredictError(str(error).splitlines()[0]) from None


def load_module(ckpt: Path, device: str) -> Any:
    from .train.module import SppClassifier  # Lightning: imported once the arguments are known to be sound

    try:  # weights_only: a checkpoint holding pickled objects (which could run code when loaded) is refused
        return SppClassifier.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as error:
        raise PredictError(f"cannot load checkpoint {ckpt}: {type(error).__name__}: {error}".splitlines()[0]) from None


# ---- output --------------------------------------------------------------------------------------------------------
def top_classes(probabilities: torch.Tensor, classes: Sequence[ClassEntry], top: int) -> list[str]:
    values, indices = probabilities.topk(min(top, len(classes)))
    return [f"  {rank}. {100 * p:5.1f}%  {classes[i].wnid}  {classes[i].name}"
            for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()), start=1)]


def predict(args: argparse.Namespace) -> list[str]:
    """The printed lines for every image (or every window of every image)."""
    if args.top < 1:
        raise PredictError(f"--top must be at least 1, got {args.top}")
    if args.shorter_side is not None and args.shorter_side < 1:
        raise PredictError(f"--shorter-side must be at least 1, got {args.shorter_side}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PredictError("--device cuda: no CUDA device is available")
    if not args.ckpt.is_file():
        raise PredictError(f"no checkpoint {args.ckpt}")
    box_file = read_box_file(args.boxes) if args.boxes is not None else None
    images = {path: read_image(path) for path in args.images}
    boxes = {path: boxes_of(path, box_file, args.boxes) for path in args.images} if box_file is not None else {}
    windows = {path: cut_at_edge(image_boxes, images[path].shape[-1], images[path].shape[-2], path)
               for path, image_boxes in boxes.items()}
    classes = run_classes(args.ckpt, args.manifest)
    module = load_module(args.ckpt, args.device)
    if module.hparams.num_classes != len(classes):
        raise PredictError(f"the checkpoint has {module.hparams.num_classes} classes but the manifest "
                           f"{len(classes)}: give the manifest of the data it was trained on with --manifest")
    if boxes and module.net.head != "spp":
        raise PredictError(f"{args.ckpt} is a no-SPP network: it takes 224 x 224 crops only, not windows of any "
                           "size; classify windows with an SPP checkpoint")
    lines = []
    with torch.inference_mode():
        for path, image in images.items():
            height, width = image.shape[-2:]
            if args.shorter_side is not None:
                image = resize_shorter(image, args.shorter_side)
            batch = image[None].to(args.device)
            if path not in boxes:
                lines.append(f"{path} ({width}x{height})")
                lines += top_classes(module(batch).float().softmax(1)[0], classes, args.top)
                continue
            factor = torch.tensor([image.shape[-1] / width, image.shape[-2] / height] * 2)
            cut = torch.tensor(windows[path], dtype=torch.float32).reshape(-1, 4)
            logits = module.net.forward_windows(module.normalise(batch), [(cut * factor).to(args.device)])
            for box, probabilities in zip(boxes[path], logits.float().softmax(1)):
                lines.append(f"{path} ({width}x{height}) window {[round(v, 2) for v in box]}")
                lines += top_classes(probabilities, classes, args.top)
    return lines


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        lines = predict(args)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except (PredictError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"spp-cls predict: error: {message}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
