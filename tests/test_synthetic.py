"""The demo dataset: ImageNet layout, real varied JPEGs, deterministic, and classes a thin CNN learns fast."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_quirk_files
from PIL import Image, ImageOps

from spp_cls.data.synthetic import make_imagenet_folder


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def open_jpeg(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def test_folder_layout_counts_and_synset_mapping(imagenet_folder):
    wnids = sorted(p.name for p in (imagenet_folder / "train").iterdir())
    assert len(wnids) == 5 and all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)
    for wnid in wnids:
        assert len(list((imagenet_folder / "train" / wnid).glob(f"{wnid}_*.JPEG"))) == 12
        assert len(list((imagenet_folder / "val" / wnid).glob("ILSVRC2012_val_*.JPEG"))) == 3
    lines = (imagenet_folder / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == wnids
    assert len({line.split(" ", 1)[1] for line in lines}) == 5


def test_images_are_baseline_rgb_jpegs_of_varied_size_and_aspect(imagenet_folder):
    sizes = []
    for path in sorted(imagenet_folder.rglob("*.JPEG")):
        image = open_jpeg(path)
        assert (image.format, image.mode) == ("JPEG", "RGB") and not image.info.get("progressive")
        width, height = image.size
        assert 64 <= min(width, height) <= 128
        assert 0.6 - 0.02 <= width / height <= 1.8 + 0.02
        sizes.append(image.size)
    assert len(set(sizes)) > len(sizes) // 2
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.85 and max(aspects) > 1.25


def test_default_images_are_imagenet_sized_files(tmp_path):
    root = make_imagenet_folder(tmp_path, num_classes=2, train_per_class=3, val_per_class=1)
    files = sorted(root.rglob("*.JPEG"))
    assert all(200 <= min(open_jpeg(p).size) <= 500 for p in files)
    assert np.mean([p.stat().st_size for p in files]) > 40_000


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = make_imagenet_folder(tmp_path / "a", num_classes=3, train_per_class=2, val_per_class=1,
                                 shorter_side_range=(32, 48))
    again = make_imagenet_folder(tmp_path / "b", num_classes=3, train_per_class=2, val_per_class=1,
                                 shorter_side_range=(32, 48))
    other = make_imagenet_folder(tmp_path / "c", num_classes=3, train_per_class=2, val_per_class=1, seed=1,
                                 shorter_side_range=(32, 48))
    assert tree_bytes(first) == tree_bytes(again)
    assert set(tree_bytes(first)).isdisjoint(p for p in tree_bytes(other) if p.startswith("train/"))


def test_flat_val_layout_has_a_kaggle_solution_file(tmp_path):
    root = make_imagenet_folder(tmp_path, num_classes=4, train_per_class=1, val_per_class=5, val_layout="flat",
                                shorter_side_range=(32, 48))
    with (root / "LOC_val_solution.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    files = sorted(p.stem for p in (root / "val").iterdir())
    assert all(p.is_file() for p in (root / "val").iterdir())
    assert sorted(row["ImageId"] for row in rows) == files and len(files) == 20
    wnids = [row["PredictionString"].split()[0] for row in sorted(rows, key=lambda r: r["ImageId"])]
    assert sorted(set(wnids)) == sorted(p.name for p in (root / "train").iterdir())
    assert all(wnids.count(w) == 5 for w in set(wnids))
    assert wnids != sorted(wnids)
    assert all(len(row["PredictionString"].split()) == 5 for row in rows)


def test_bad_val_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="val_layout"):
        make_imagenet_folder(tmp_path, num_classes=1, val_layout="nested")


def test_quirk_files_are_what_they_claim(tmp_path):
    quirks = write_quirk_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(q.name for q in quirks)
    for quirk in quirks:
        data = (tmp_path / quirk.name).read_bytes()
        if quirk.readable:
            image = ImageOps.exif_transpose(open_jpeg(tmp_path / quirk.name))
            assert image.size == quirk.display_size, quirk.what
        else:
            with pytest.raises((OSError, Image.DecompressionBombError)):
                Image.open(io.BytesIO(data)).load()
    modes = {q.name: Image.open(tmp_path / q.name).mode for q in quirks if q.readable}
    assert {modes["quirk_cmyk.JPEG"], modes["quirk_grey.JPEG"], modes["quirk_palette.JPEG"]} == {"CMYK", "L", "P"}
    assert Image.open(tmp_path / "quirk_png.JPEG").format == "PNG"


def _load_batch(paths: list[Path], side: int) -> torch.Tensor:
    images = [np.asarray(ImageOps.fit(open_jpeg(p), (side, side)), np.float32) for p in paths]
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) - 127.5) / 64.0


def test_a_thin_cnn_learns_the_classes_within_a_few_epochs(tmp_path):
    num_classes = 6
    root = make_imagenet_folder(tmp_path, num_classes=num_classes, train_per_class=24, val_per_class=8,
                                shorter_side_range=(64, 96))
    wnids = sorted(p.name for p in (root / "train").iterdir())

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        paths = sorted((root / name).rglob("*.JPEG"))
        labels = torch.tensor([wnids.index(p.parent.name) for p in paths])
        return _load_batch(paths, 64), labels

    (train_x, train_y), (val_x, val_y) = split("train"), split("val")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for batch in torch.randperm(len(train_y)).split(24):
            optimizer.zero_grad()
            F.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
    assert accuracy > 3 / num_classes, accuracy
