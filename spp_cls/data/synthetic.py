"""Demo data: an ImageNet-layout folder of real JPEG files whose classes a small CNN learns within a few epochs.

Each class is a coloured shape (its own hue, and one of ten shapes or textures) on a noisy, tinted gradient
background. Sizes and aspect ratios vary like ImageNet's, and the noise keeps the files about as large as ImageNet
JPEGs, so the demo exercises `spp-cls shards` and the data pipeline as real data does. Everything is a function of
the seed.
"""
from __future__ import annotations

import colorsys
import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

SHAPES = ("disc", "square", "triangle", "ring", "cross", "horizontal stripes", "vertical stripes", "checkerboard",
          "diagonal stripes", "dots")
HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "spring green", "cyan", "azure", "blue", "violet",
             "magenta", "rose")
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticClass:
    """One demo class: its made-up wnid, a name saying what it looks like, its hue (0-1) and its shape."""

    wnid: str
    name: str
    hue: float
    shape: str


def synthetic_classes(num_classes: int, seed: int = 0) -> list[SyntheticClass]:
    """The demo classes in creation order: hues spread evenly around the colour wheel, shapes in turn.

    The wnids are random 8-digit numbers, so the sorted-wnid class index differs from the creation order.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    numbers = random.Random(f"spp-cls-synthetic:{seed}").sample(range(10_000_000, 100_000_000), num_classes)
    classes = []
    for i, number in enumerate(numbers):
        hue = i / num_classes
        shape = SHAPES[i % len(SHAPES)]
        colour = HUE_NAMES[round(hue * len(HUE_NAMES)) % len(HUE_NAMES)]
        classes.append(SyntheticClass(f"n{number:08d}", f"{colour} {shape} (synthetic class {i})", hue, shape))
    return classes


def _random_size(rng: np.random.Generator, shorter_side_range: tuple[int, int]) -> tuple[int, int]:
    shorter = int(rng.integers(shorter_side_range[0], shorter_side_range[1] + 1))
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.8)))  # width / height
    return (round(shorter * aspect), shorter) if aspect >= 1 else (shorter, round(shorter / aspect))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels of `shape` in object coordinates (u, v), where the object spans about [-1, 1]."""
    inside = np.maximum(np.abs(u), np.abs(v)) < 0.85
    radius = np.hypot(u, v)
    masks = {
        "disc": lambda: radius < 1.0,
        "square": lambda: inside,
        "triangle": lambda: (v < 0.8) & (np.abs(u) < (v + 1.0) * 0.55),
        "ring": lambda: (radius < 1.0) & (radius > 0.6),
        "cross": lambda: inside & ((np.abs(u) < 0.3) | (np.abs(v) < 0.3)),
        "horizontal stripes": lambda: inside & (np.sin(v * 9.0) > 0),
        "vertical stripes": lambda: inside & (np.sin(u * 9.0) > 0),
        "checkerboard": lambda: inside & (np.sin(u * 7.0) * np.sin(v * 7.0) > 0),
        "diagonal stripes": lambda: inside & (np.sin((u + v) * 7.0) > 0),
        "dots": lambda: inside & (np.hypot((u * 2.5 + 10) % 1.0 - 0.5, (v * 2.5 + 10) % 1.0 - 0.5) < 0.3),
    }
    return masks[shape]()


def render_image(cls: SyntheticClass, rng: np.random.Generator,
                 shorter_side_range: tuple[int, int] = (200, 500)) -> Image.Image:
    """One RGB image of `cls`: its shape in its hue (jittered), placed and sized at random on a noisy background."""
    width, height = _random_size(rng, shorter_side_range)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(direction) + ys * math.sin(direction)) / max(width, height)
    grey_start, grey_end = rng.uniform(50, 200, size=2)
    tint = rng.uniform(-25, 25, size=3)
    background = (grey_start + (grey_end - grey_start) * ramp)[..., None] + tint
    blotches = Image.fromarray(rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8), "RGB").resize(
        (width, height), Image.Resampling.BICUBIC)
    background += (np.asarray(blotches, np.float32) - 127.5) * 0.25

    side = min(width, height)
    radius = side * rng.uniform(0.22, 0.38)
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    angle = rng.uniform(-0.5, 0.5)
    du, dv = (xs - cx) / radius, (ys - cy) / radius
    u, v = du * math.cos(angle) + dv * math.sin(angle), -du * math.sin(angle) + dv * math.cos(angle)
    mask = _shape_mask(cls.shape, u, v)
    hue = (cls.hue + rng.uniform(-0.02, 0.02)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)), np.float32) * 255
    shading = (1.0 - 0.15 * np.clip(v, -1, 1))[..., None]
    pixels = np.where(mask[..., None], colour * shading, background)
    pixels += rng.normal(0.0, rng.uniform(12.0, 22.0), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _jpeg_bytes(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(88, 97)))
    return buffer.getvalue()


def _image_rng(seed: int, class_number: int, split: str, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, class_number, SPLIT_CODES[split], k])


def make_imagenet_folder(root: str | Path, num_classes: int = 10, train_per_class: int = 40, val_per_class: int = 10,
                         seed: int = 0, val_layout: Literal["folders", "flat"] = "folders", *,
                         shorter_side_range: tuple[int, int] = (200, 500)) -> Path:
    """Write a demo dataset in ImageNet's layout and return `root`.

    Writes `root/train/<wnid>/<wnid>_<k>.JPEG`, `root/LOC_synset_mapping.txt` and either
    `root/val/<wnid>/ILSVRC2012_val_<k>.JPEG` (val_layout "folders") or a flat `root/val/ILSVRC2012_val_<k>.JPEG`
    with `root/LOC_val_solution.csv` (val_layout "flat", Kaggle's format; val images in shuffled class order).

    Args:
        shorter_side_range: the shorter side of each image is drawn from this range (inclusive); the aspect ratio
            from 0.6 to 1.8, log-uniformly.
    """
    if val_layout not in ("folders", "flat"):
        raise ValueError(f"val_layout must be 'folders' or 'flat', got {val_layout!r}")
    root = Path(root)
    classes = synthetic_classes(num_classes, seed)
    (root / "val").mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{c.wnid} {c.name}\n" for c in sorted(classes,
                                                                                              key=lambda c: c.wnid)))
    for number, cls in enumerate(classes):
        folder = root / "train" / cls.wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            rng = _image_rng(seed, number, "train", k)
            (folder / f"{cls.wnid}_{k}.JPEG").write_bytes(_jpeg_bytes(render_image(cls, rng, shorter_side_range), rng))
    val_items = [(number, cls, k) for number, cls in enumerate(classes) for k in range(val_per_class)]
    random.Random(f"spp-cls-synthetic-val:{seed}").shuffle(val_items)
    solution_rows = []
    for position, (number, cls, k) in enumerate(val_items, start=1):
        rng = _image_rng(seed, number, "val", k)
        image = render_image(cls, rng, shorter_side_range)
        image_id = f"ILSVRC2012_val_{position:08d}"
        folder = root / "val" / cls.wnid if val_layout == "folders" else root / "val"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.JPEG").write_bytes(_jpeg_bytes(image, rng))
        width, height = image.size
        solution_rows.append((image_id, f"{cls.wnid} {width // 4} {height // 4} {3 * width // 4} {3 * height // 4}"))
    if val_layout == "flat":
        with (root / "LOC_val_solution.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(sorted(solution_rows))
    return root
