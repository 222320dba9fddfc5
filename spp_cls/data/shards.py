"""`spp-cls shards`: convert an ImageNet folder into webdataset shards once, and `--verify` them.

Output, per split: `OUT/{split}/{split}-{i:06d}.tar` and `OUT/{split}/manifest.json` (see `manifest.py`). Each sample
holds the standard webdataset keys `__key__`, `jpg` (RGB baseline JPEG), `cls` (class index as ASCII) and `json`
({"wnid", "source", "orig_size"}); nothing is pickled.

How it works:
- The source files are listed and sorted, then shuffled with a fixed seed, then cut into consecutive runs of
  `shard_size` files: shard i always gets the same files, so a rerun can skip every shard that is already written.
  A file that cannot be read is skipped (named, with its reason), so a shard may hold fewer than `shard_size` samples.
- One task per shard. A worker process reads, decodes, normalises and re-encodes the files of its shard one at a time
  and streams them into `.{name}.tmp-{pid}`; then it writes the shard's record (`shard-info/{name}.json`: count,
  class counts, skipped files, pixel statistics) and renames both into place. A shard counts as finished only when
  its tar and its record exist and the record matches the current settings and file list.
- `manifest.json` is assembled from the records once every shard is finished; it is the last file written, and it is
  removed before any shard of its split is (re)written, so a manifest always sits next to a complete set of shards.

NOTE known limits: one conversion per OUT at a time (a second one would delete the first one's temp files); the
file list is held in memory (about 150 MB of paths for ImageNet's 1.28 M training files), images are not; CMYK is
converted without ICC colour management; a shard whose every file is unreadable is written empty and listed with
count 0.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import re
import sys
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from spp_cls.data.manifest import MANIFEST_NAME, ClassEntry, Manifest, ManifestError, ShardEntry, SkippedFile

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
SHARD_INFO_DIR = "shard-info"
SYNSET_MAPPING_NAME = "LOC_synset_mapping.txt"
VAL_SOLUTION_NAME = "LOC_val_solution.csv"
# Fixed tar header fields so that the same input gives byte-identical shards (2000-01-01, not 0: GNU tar warns
# about "implausibly old" time stamps).
TAR_MTIME = 946_684_800
# Pixel statistics (mean, PCA) come from up to STATS_IMAGES training images (the first ones of the shuffled order,
# a random subset) and STATS_PIXELS_PER_IMAGE random pixels of each, after the resize.
STATS_IMAGES = 10_000
STATS_PIXELS_PER_IMAGE = 1_000
MAX_JPEG_SIDE = 65_500
EXIF_ORIENTATION_TAG = 0x0112
SAMPLE_EXTENSIONS = ("jpg", "cls", "json")


class ShardsInputError(ValueError):
    """The source folder or an option is unusable; the command exits with status 2."""


class ShardsStateError(RuntimeError):
    """OUT already holds shards that another conversion (other settings or files) wrote; exit status 2."""


class StrictSkipError(RuntimeError):
    """`strict=True` and files were skipped; the shards are written but no manifest is.

    Attributes:
        manifests: the manifests that would have been written, per split (not saved).
    """

    def __init__(self, manifests: dict[str, Manifest]):
        self.manifests = manifests
        count = sum(len(m.skipped) for m in manifests.values())
        super().__init__(
            f"--strict: {count} source file(s) skipped, so no manifest was written; the shards are kept and a "
            f"rerun without --strict finishes in seconds"
        )


class UnreadableImage(Exception):
    """A source file that does not give an image; the message is the reason recorded in the manifest."""


# ---------------------------------------------------------------------------------------------------------------
# Listing the source folder
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitListing:
    """The labelled source files of one split (paths relative to SRC, sorted) and the files left out while listing.

    `labels_file` is the LOC_val_solution.csv that labelled flat val files, if one was used.
    """

    files: list[tuple[str, int]]
    skipped: list[SkippedFile]
    labels_file: Path | None = None


@dataclass(frozen=True)
class SourceLayout:
    """What was found in SRC: classes from `train/`, and where the optional ImageNet metadata files are."""

    src: Path
    classes: tuple[ClassEntry, ...]
    synset_mapping: Path | None
    val_solution: Path | None


def _find_metadata_file(src: Path, name: str, explicit: str | Path | None) -> Path | None:
    """Find `name` in SRC or up to three folders above it (Kaggle keeps it above ILSVRC/Data/CLS-LOC)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ShardsInputError(f"{path} does not exist")
        return path
    for folder in [src, *list(src.resolve().parents)[:3]]:
        if (folder / name).is_file():
            return folder / name
    return None


def read_synset_names(path: Path) -> dict[str, str]:
    """Read `LOC_synset_mapping.txt` lines like "n01440764 tench, Tinca tinca" into {wnid: name}."""
    names = {}
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name.strip() or wnid
    return names


def read_val_solution(path: Path) -> dict[str, str]:
    """Read Kaggle's `LOC_val_solution.csv` (ImageId,PredictionString) into {ImageId: wnid}.

    The first token of PredictionString is the wnid; the rest are boxes.
    """
    labels = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ShardsInputError(f"{path}: expected the columns ImageId,PredictionString")
        for line_number, row in enumerate(reader, start=2):
            tokens = (row["PredictionString"] or "").split()
            if not row["ImageId"] or not tokens:
                raise ShardsInputError(f"{path}:{line_number}: row without ImageId or wnid")
            labels[row["ImageId"]] = tokens[0]
    return labels


def _files_under(folder: Path) -> list[Path]:
    """Every non-directory entry below `folder`, sorted (os.walk avoids one stat per file on network file systems)."""
    found = []
    for directory, _, names in os.walk(folder, followlinks=True):
        found.extend(Path(directory) / name for name in names)
    return sorted(found)


def find_layout(src: str | Path, val_solution: str | Path | None = None,
                synset_mapping: str | Path | None = None) -> SourceLayout:
    """Check SRC and read the class list: one class per folder of `SRC/train`, indexed in sorted wnid order."""
    src = Path(src)
    if not src.is_dir():
        raise ShardsInputError(f"--src {src} is not a directory")
    train = src / "train"
    if not train.is_dir():
        raise ShardsInputError(f"no train/ folder in {src}: expected {src}/train/<wnid>/*.JPEG (ImageNet layout)")
    wnids = sorted(path.name for path in train.iterdir() if path.is_dir())
    if not wnids:
        raise ShardsInputError(f"no class folders in {train}: expected {train}/<wnid>/*.JPEG")
    mapping_path = _find_metadata_file(src, SYNSET_MAPPING_NAME, synset_mapping)
    names = read_synset_names(mapping_path) if mapping_path else {}
    classes = tuple(ClassEntry(index, wnid, names.get(wnid, wnid)) for index, wnid in enumerate(wnids))
    return SourceLayout(src, classes, mapping_path, _find_metadata_file(src, VAL_SOLUTION_NAME, val_solution))


def list_train(layout: SourceLayout) -> SplitListing:
    """All files under `train/<wnid>/` with the class index of their folder; stray files are named as skipped."""
    train = layout.src / "train"
    files, skipped = [], []
    for path in sorted(train.iterdir()):
        if path.is_file():
            skipped.append(SkippedFile(path.relative_to(layout.src).as_posix(), "not inside a class folder"))
    for entry in layout.classes:
        for path in _files_under(train / entry.wnid):
            files.append((path.relative_to(layout.src).as_posix(), entry.index))
    if not files:
        raise ShardsInputError(f"no files found in the class folders of {train}")
    return SplitListing(files, skipped)


def list_val(layout: SourceLayout) -> SplitListing:
    """Val files from `val/<wnid>/*` folders and/or flat `val/*` files labelled by LOC_val_solution.csv."""
    val = layout.src / "val"
    if not val.is_dir():
        raise ShardsInputError(f"no val/ folder in {layout.src}; convert train only with --splits train")
    index_of = {entry.wnid: entry.index for entry in layout.classes}
    files, skipped = [], []
    flat = sorted(path for path in val.iterdir() if path.is_file() and path.name != VAL_SOLUTION_NAME)
    for folder in sorted(path for path in val.iterdir() if path.is_dir()):
        for path in _files_under(folder):
            relative = path.relative_to(layout.src).as_posix()
            if folder.name in index_of:
                files.append((relative, index_of[folder.name]))
            else:
                skipped.append(SkippedFile(relative, f"class folder {folder.name!r} is not one of the train classes"))
    if flat:
        if layout.val_solution is None:
            raise ShardsInputError(
                f"{val} holds {len(flat)} files directly and no {VAL_SOLUTION_NAME} was found in {layout.src} or "
                f"the three folders above it; pass --val-labels PATH or sort val into val/<wnid>/ folders"
            )
        labels = read_val_solution(layout.val_solution)
        for path in flat:
            relative = path.relative_to(layout.src).as_posix()
            wnid = labels.pop(path.stem, None)
            if wnid is None:
                skipped.append(SkippedFile(relative, f"not listed in {layout.val_solution.name}"))
            elif wnid not in index_of:
                reason = f"wnid {wnid} from {layout.val_solution.name} is not a train class"
                skipped.append(SkippedFile(relative, reason))
            else:
                files.append((relative, index_of[wnid]))
        for image_id in sorted(labels):
            skipped.append(SkippedFile(f"val/{image_id}.JPEG", f"listed in {layout.val_solution.name}, file missing"))
    if not files:
        raise ShardsInputError(f"no labelled images found in {val}")
    files.sort()
    return SplitListing(files, skipped, layout.val_solution if flat else None)


# ---------------------------------------------------------------------------------------------------------------
# One image: bytes in, RGB baseline JPEG out
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class NormalisedImage:
    """The JPEG to store, the source size after EXIF orientation, and the RGB image the JPEG was made from."""

    jpeg: bytes
    orig_size: tuple[int, int]
    rgb: Image.Image


def shorter_side_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """(w, h) scaled so that min(w, h) == shorter_side, keeping the aspect ratio (rounded to the nearest pixel)."""
    if width <= height:
        return shorter_side, max(1, round(height * shorter_side / width))
    return max(1, round(width * shorter_side / height)), shorter_side


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # NOTE: 32-bit "I" images are assumed to hold 16-bit values, as PNG and most TIFF files do.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def normalise_image(data: bytes, shorter_side: int | None, quality: int) -> NormalisedImage:
    """Decode any image PIL reads, apply its EXIF orientation, make it RGB, resize it and encode a baseline JPEG.

    Transparent images are composited on white; 16-bit greyscale is scaled to 8 bits; CMYK is converted without ICC
    colour management. With `shorter_side` None the size is kept. An RGB baseline JPEG that needs no change (no
    rotation, no resize) is stored as its original bytes, so full-size val images lose nothing.

    Raises:
        UnreadableImage: the data is empty, not an image, truncated, too large or too elongated to store as JPEG.
    """
    if not data:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning (over 89 Mpixel) is fine for a one-off conversion; PIL still raises
            # DecompressionBombError beyond twice that, which is reported below. EXIF warnings are noise.
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            source_format, source_mode = image.format, image.mode
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
            rotated = orientation in (5, 6, 7, 8)
            width, height = (image.height, image.width) if rotated else image.size
            target = shorter_side_size(width, height, shorter_side) if shorter_side else (width, height)
            if source_format == "JPEG" and target[0] < width:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays at least as large as the target.
                image.draft(None, (target[1], target[0]) if rotated else target)
            image.load()
            image = ImageOps.exif_transpose(image) if orientation != 1 else image
            rgb = _to_rgb(image)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (no format PIL recognises)") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f"too many pixels: {error}") from None
    except Exception as error:  # noqa: BLE001 - PIL plugins raise many types; every one means "cannot decode"
        raise UnreadableImage(f"cannot decode: {type(error).__name__}: {error}") from None
    if max(target) > MAX_JPEG_SIDE:
        raise UnreadableImage(f"{width}x{height} resized to {target[0]}x{target[1]} exceeds JPEG's size limit")
    unchanged = source_format == "JPEG" and source_mode == "RGB" and not progressive and orientation == 1
    if unchanged and target == (width, height):
        return NormalisedImage(data, (width, height), rgb)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return NormalisedImage(buffer.getvalue(), (width, height), rgb)


# ---------------------------------------------------------------------------------------------------------------
# Pixel statistics (mean, PCA of the RGB covariance)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PixelStats:
    """Running sums over sampled pixels (0-255 scale), mergeable across shards in a fixed order."""

    count: int = 0
    total: list[float] = field(default_factory=lambda: [0.0] * 3)
    outer: list[list[float]] = field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])

    def add_pixels(self, pixels: np.ndarray) -> None:
        pixels = pixels.astype(np.float64)
        self.count += len(pixels)
        self.total = (np.asarray(self.total) + pixels.sum(axis=0)).tolist()
        self.outer = (np.asarray(self.outer) + pixels.T @ pixels).tolist()

    def merge(self, other: PixelStats) -> None:
        self.count += other.count
        self.total = (np.asarray(self.total) + np.asarray(other.total)).tolist()
        self.outer = (np.asarray(self.outer) + np.asarray(other.outer)).tolist()

    def mean_and_pca(self) -> tuple[list[float], list[float], list[list[float]]]:
        """Mean, eigenvalues (descending) and eigenvectors (rows, unit, largest component positive)."""
        if self.count == 0:
            raise ValueError("no training pixels were sampled")
        mean = np.asarray(self.total) / self.count
        covariance = np.asarray(self.outer) / self.count - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(covariance)
        order = np.argsort(eigval)[::-1]
        eigval, rows = np.clip(eigval[order], 0.0, None), eigvec[:, order].T
        rows = rows * np.sign(rows[np.arange(3), np.abs(rows).argmax(axis=1)])[:, None]
        return mean.tolist(), eigval.tolist(), rows.tolist()


def sample_pixels(rgb: Image.Image, count: int, seed: int, index: int) -> np.ndarray:
    """`count` pixels (with replacement) of an RGB image, chosen by a generator seeded with (seed, index)."""
    pixels = np.asarray(rgb).reshape(-1, 3)
    return pixels[np.random.default_rng([seed, index]).integers(0, len(pixels), count)]


# ---------------------------------------------------------------------------------------------------------------
# Planning shards and writing one shard
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker process needs to write one shard; `entries` are (index, path relative to SRC, label)."""

    split: str
    name: str
    split_dir: str
    src: str
    entries: tuple[tuple[int, str, int], ...]
    wnids: tuple[str, ...]
    fingerprint: dict[str, Any]
    shorter_side: int | None
    quality: int
    seed: int
    stats_images: int

    @property
    def tar_path(self) -> Path:
        return Path(self.split_dir) / self.name

    @property
    def info_path(self) -> Path:
        return Path(self.split_dir) / SHARD_INFO_DIR / f"{Path(self.name).stem}.json"

    @property
    def inputs_digest(self) -> str:
        text = "\n".join(f"{index}\t{path}\t{label}" for index, path, label in self.entries)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ShardReport:
    """What a worker tells the main process about a finished shard (for progress only)."""

    split: str
    name: str
    written: int
    skipped: int


def shard_name(split: str, shard_index: int) -> str:
    return f"{split}-{shard_index:06d}.tar"


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:08d}"


def plan_split(split: str, listing: SplitListing, layout: SourceLayout, out: Path, *, shorter_side: int | None,
               quality: int, shard_size: int, seed: int) -> list[ShardTask]:
    """Shuffle the split's files with the seed and cut them into shards of `shard_size` consecutive files."""
    files = list(listing.files)
    random.Random(f"spp-cls:{split}:{seed}").shuffle(files)
    fingerprint = {"split": split, "shorter_side": shorter_side, "quality": quality, "shard_size": shard_size,
                   "seed": seed, "stats_images": STATS_IMAGES if split == "train" else 0,
                   "stats_pixels_per_image": STATS_PIXELS_PER_IMAGE, "resample": "bicubic", "jpeg_draft": True}
    wnids = tuple(entry.wnid for entry in layout.classes)
    return [
        ShardTask(split=split, name=shard_name(split, start // shard_size), split_dir=str(out / split),
                  src=str(layout.src), entries=tuple((start + i, *item) for i, item in
                                                     enumerate(files[start:start + shard_size])),
                  wnids=wnids, fingerprint=fingerprint, shorter_side=shorter_side, quality=quality, seed=seed,
                  stats_images=fingerprint["stats_images"])
        for start in range(0, len(files), shard_size)
    ]


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_samples(tar: tarfile.TarFile, task: ShardTask) -> tuple[Counter[int], list[SkippedFile], PixelStats]:
    class_counts: Counter[int] = Counter()
    skipped, stats = [], PixelStats()
    for index, relative, label in task.entries:
        try:
            image = normalise_image((Path(task.src) / relative).read_bytes(), task.shorter_side, task.quality)
        except UnreadableImage as error:
            skipped.append(SkippedFile(relative, str(error)))
            continue
        except OSError as error:
            skipped.append(SkippedFile(relative, f"cannot read file: {error.strerror or error}"))
            continue
        key = sample_key(task.split, index)
        meta = {"wnid": task.wnids[label], "source": relative, "orig_size": list(image.orig_size)}
        for extension, payload in (("jpg", image.jpeg), ("cls", str(label).encode()),
                                   ("json", json.dumps(meta).encode())):
            tar.addfile(_tar_member(f"{key}.{extension}", len(payload)), io.BytesIO(payload))
        class_counts[label] += 1
        if index < task.stats_images:
            stats.add_pixels(sample_pixels(image.rgb, STATS_PIXELS_PER_IMAGE, task.seed, index))
    return class_counts, skipped, stats


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _sync(handle: io.BufferedWriter) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def write_shard(task: ShardTask) -> ShardReport:
    """Write one shard and its record atomically (runs in a worker process)."""
    temp_tar = _temp_path(task.tar_path)
    with temp_tar.open("wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            class_counts, skipped, stats = _write_samples(tar, task)
        _sync(handle)
    record = {
        "name": task.name,
        "fingerprint": task.fingerprint,
        "inputs_sha256": task.inputs_digest,
        "tar_bytes": temp_tar.stat().st_size,
        "count": sum(class_counts.values()),
        "class_counts": sorted(class_counts.items()),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "pixel_stats": {"count": stats.count, "total": stats.total, "outer": stats.outer} if stats.count else None,
    }
    # The record goes into place before the tar: a tar without a record is redone by a rerun.
    task.info_path.parent.mkdir(parents=True, exist_ok=True)
    temp_info = _temp_path(task.info_path)
    with temp_info.open("wb") as handle:
        handle.write(json.dumps(record).encode())
        _sync(handle)
    os.replace(temp_info, task.info_path)
    os.replace(temp_tar, task.tar_path)
    return ShardReport(task.split, task.name, record["count"], len(skipped))


def _read_record(task: ShardTask) -> dict[str, Any] | None:
    """The shard's record if the shard is finished for exactly this task, else None.

    Raises:
        ShardsStateError: the record was written with other settings or for another file list.
    """
    if not task.info_path.is_file():
        return None
    try:
        record = json.loads(task.info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != task.fingerprint or record.get("inputs_sha256") != task.inputs_digest:
        what = "other settings" if record.get("fingerprint") != task.fingerprint else "another list of source files"
        raise ShardsStateError(
            f"{task.tar_path} was written with {what} (settings now: {task.fingerprint}); convert into an empty "
            f"--out, or delete {task.split_dir} first"
        )
    if not task.tar_path.is_file() or task.tar_path.stat().st_size != record.get("tar_bytes"):
        return None
    return record


def _check_no_strays(split_dir: Path, tasks: Sequence[ShardTask]) -> None:
    expected = {task.name for task in tasks}
    strays = sorted(p.name for p in split_dir.glob("*.tar") if p.name not in expected) if split_dir.is_dir() else []
    if strays:
        raise ShardsStateError(
            f"{split_dir} holds shards this conversion would not write ({', '.join(strays[:3])}"
            f"{', ...' if len(strays) > 3 else ''}); convert into an empty --out, or delete {split_dir} first"
        )


def _remove_stale_temp_files(split_dir: Path) -> None:
    for folder in (split_dir, split_dir / SHARD_INFO_DIR):
        if folder.is_dir():
            for path in folder.glob(".*.tmp-*"):
                path.unlink()


def _run_tasks(tasks: list[ShardTask], workers: int) -> Iterator[ShardReport]:
    if workers == 1 or len(tasks) <= 1:
        yield from map(write_shard, tasks)
        return
    with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(write_shard, tasks, chunksize=1)


# ---------------------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------------------


def _assemble_manifest(split: str, tasks: Sequence[ShardTask], listing: SplitListing, layout: SourceLayout,
                       settings: dict[str, Any]) -> Manifest:
    shards, skipped = [], list(listing.skipped)
    class_counts = [0] * len(layout.classes)
    stats = PixelStats()
    for task in tasks:
        record = _read_record(task)
        if record is None:
            raise ShardsStateError(f"{task.tar_path} or its record disappeared while converting")
        shards.append(ShardEntry(task.name, record["count"]))
        for label, count in record["class_counts"]:
            class_counts[label] += count
        skipped.extend(SkippedFile(s["path"], s["reason"]) for s in record["skipped"])
        if record["pixel_stats"]:
            stats.merge(PixelStats(**record["pixel_stats"]))
    pixel_fields: dict[str, Any] = {}
    if split == "train":
        mean, eigval, eigvec = stats.mean_and_pca()
        pixel_fields = {"mean_rgb": tuple(mean), "pca_eigval": tuple(eigval),
                        "pca_eigvec": tuple(tuple(row) for row in eigvec)}
    return Manifest(split=split, shards=tuple(shards), total=sum(s.count for s in shards), classes=layout.classes,
                    class_counts=tuple(class_counts), skipped=tuple(skipped), settings=settings,
                    split_dir=Path(tasks[0].split_dir) if tasks else None, **pixel_fields)


def _check_options(splits: Sequence[str], shorter_side: int, val_shorter_side: int | None, quality: int,
                   shard_size: int, workers: int) -> None:
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ShardsInputError(f"--splits must be a non-empty subset of {','.join(SPLITS)}, got {','.join(splits)}")
    if shorter_side < 1 or (val_shorter_side is not None and val_shorter_side < 1):
        raise ShardsInputError("--shorter-side and --val-shorter-side must be positive")
    if not 1 <= quality <= 100:
        raise ShardsInputError(f"--quality must be within 1..100, got {quality}")
    if shard_size < 1 or workers < 1:
        raise ShardsInputError("--shard-size and --workers must be at least 1")


def convert(src: str | Path, out: str | Path, splits: Sequence[str] = SPLITS, shorter_side: int = 256,
            val_shorter_side: int | None = None, quality: int = 90, shard_size: int = 1000, workers: int = 1,
            strict: bool = False, seed: int = 0, *, val_labels: str | Path | None = None,
            synset_mapping: str | Path | None = None) -> dict[str, Manifest]:
    """Convert an ImageNet-layout folder into shards and manifests under `out`, resuming what a previous run began.

    Args:
        src: folder with `train/<wnid>/*` and `val/` (sorted into `<wnid>/` folders, or flat with
            LOC_val_solution.csv).
        out: output root; `out/{split}/` receives the shards and the manifest.
        shorter_side: train images are resized so that their shorter side is exactly this.
        val_shorter_side: the same for val; None keeps val images at full size.
        quality: JPEG quality of re-encoded images.
        shard_size: source files per shard (a shard holds fewer when some of its files are skipped).
        workers: worker processes, one shard at a time each.
        strict: raise StrictSkipError (and write no manifest) when any file was skipped.
        seed: seed of the sample order and of the pixel sampling for the statistics.
        val_labels: LOC_val_solution.csv; by default looked for in src and the three folders above it.
        synset_mapping: LOC_synset_mapping.txt for class names; looked for like val_labels.

    Returns:
        The saved manifest of each split.

    Raises:
        ShardsInputError: unusable source folder or options.
        ShardsStateError: `out` holds shards of a different conversion.
        StrictSkipError: `strict` and some file was skipped.
    """
    splits = tuple(splits)
    _check_options(splits, shorter_side, val_shorter_side, quality, shard_size, workers)
    layout = find_layout(src, val_labels, synset_mapping)
    out = Path(out)
    plans: dict[str, tuple[SplitListing, list[ShardTask], dict[str, Any]]] = {}
    for split in splits:
        listing = list_train(layout) if split == "train" else list_val(layout)
        side = shorter_side if split == "train" else val_shorter_side
        tasks = plan_split(split, listing, layout, out, shorter_side=side, quality=quality, shard_size=shard_size,
                           seed=seed)
        settings = {**tasks[0].fingerprint, "src": str(layout.src.resolve()),
                    "synset_mapping": str(layout.synset_mapping) if layout.synset_mapping else None,
                    "val_labels": str(listing.labels_file) if listing.labels_file else None,
                    "jpeg_subsampling": "4:2:0", "unchanged_jpeg_kept": True, "alpha": "composited on white",
                    "orig_size": "source size after EXIF orientation"}
        _check_no_strays(out / split, tasks)
        plans[split] = (listing, tasks, settings)
    pending = []
    for split, (_, tasks, _) in plans.items():
        _remove_stale_temp_files(out / split)
        todo = [task for task in tasks if _read_record(task) is None]
        (out / split).mkdir(parents=True, exist_ok=True)
        if todo:
            # A manifest is only ever present next to a complete set of shards.
            (out / split / MANIFEST_NAME).unlink(missing_ok=True)
        if len(todo) < len(tasks):
            log.info("%s: %d of %d shards already written, writing the other %d", split, len(tasks) - len(todo),
                     len(tasks), len(todo))
        pending.extend(todo)
    _write_pending(pending, workers)
    manifests = {split: _assemble_manifest(split, tasks, listing, layout, settings)
                 for split, (listing, tasks, settings) in plans.items()}
    if strict and any(manifest.skipped for manifest in manifests.values()):
        raise StrictSkipError(manifests)
    return {split: manifest.save(out / split) for split, manifest in manifests.items()}


def _write_pending(tasks: list[ShardTask], workers: int) -> None:
    started = last_log = time.monotonic()
    done = images = 0
    for report in _run_tasks(tasks, workers):
        done, images = done + 1, images + report.written
        now = time.monotonic()
        if now - last_log > 10 or done == len(tasks):
            last_log = now
            log.info("%d/%d shards written (%d images, %.0f images/s)", done, len(tasks), images,
                     images / max(now - started, 1e-9))


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardCheckTask:
    path: str
    split: str
    wnids: tuple[str, ...]
    shorter_side: int | None


@dataclass
class ShardCheck:
    """What one shard actually holds, and what is wrong with it."""

    count: int = 0
    labels: Counter[int] = field(default_factory=Counter)
    indices: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _grouped_samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: payload}) for consecutive members sharing a key, as webdataset groups them."""
    key, sample = None, {}
    for member in tar:
        if not member.isfile():
            continue
        member_key, _, extension = member.name.rpartition("/")[2].partition(".")
        if member_key != key and key is not None:
            yield key, sample
            sample = {}
        key = member_key
        handle = tar.extractfile(member)
        sample[extension] = handle.read() if handle else b""
    if key is not None:
        yield key, sample


def _sample_problems(task: ShardCheckTask, key: str, sample: dict[str, bytes]) -> tuple[int | None, list[str]]:
    """The sample's label (None if unusable) and its problems."""
    if set(sample) != set(SAMPLE_EXTENSIONS):
        return None, [f"{key}: members {sorted(sample)}, expected {list(SAMPLE_EXTENSIONS)}"]
    problems = []
    try:
        label = int(sample["cls"].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, [f"{key}: cls {sample['cls'][:20]!r} is not an integer"]
    if not 0 <= label < len(task.wnids):
        return None, [f"{key}: label {label} outside 0..{len(task.wnids) - 1}"]
    try:
        meta = json.loads(sample["json"])
        orig_size = tuple(meta["orig_size"])
        if meta["wnid"] != task.wnids[label]:
            problems.append(f"{key}: json wnid {meta['wnid']} but label {label} is {task.wnids[label]}")
    except (ValueError, KeyError, TypeError) as error:
        return label, [f"{key}: unreadable json ({error})"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(sample["jpg"]))
            image.load()
    except Exception as error:  # noqa: BLE001 - any decoding failure is the finding
        return label, [*problems, f"{key}: image does not decode ({type(error).__name__}: {error})"]
    if image.format != "JPEG" or image.mode != "RGB":
        problems.append(f"{key}: image is {image.format} {image.mode}, expected JPEG RGB")
    if task.shorter_side is not None and min(image.size) != task.shorter_side:
        problems.append(f"{key}: shorter side {min(image.size)}, expected {task.shorter_side}")
    if task.shorter_side is None and image.size != orig_size:
        problems.append(f"{key}: size {image.size} differs from the source's {orig_size}")
    return label, problems


def check_shard(task: ShardCheckTask) -> ShardCheck:
    """Read one shard from start to end and check every sample (runs in a worker process)."""
    check = ShardCheck()
    name = f"{task.split}/{Path(task.path).name}"
    key_pattern = re.compile(rf"{re.escape(task.split)}-(\d{{8}})")
    try:
        with tarfile.open(task.path, mode="r|") as tar:
            for key, sample in _grouped_samples(tar):
                check.count += 1
                match = key_pattern.fullmatch(key)
                if match:
                    check.indices.append(int(match.group(1)))
                else:
                    check.problems.append(f"{name}: key {key!r} is not {task.split}-<8 digits>")
                label, problems = _sample_problems(task, key, sample)
                if label is not None:
                    check.labels[label] += 1
                check.problems.extend(f"{name}: {problem}" for problem in problems)
    except (tarfile.TarError, OSError, EOFError) as error:
        check.problems.append(f"{name}: cannot read the tar after {check.count} samples ({error})")
    return check


def _verify_split(split_dir: Path, workers: int) -> list[str]:
    try:
        manifest = Manifest.load(split_dir)
    except (FileNotFoundError, ManifestError) as error:
        return [str(error)]
    split = split_dir.name
    problems = [] if manifest.split == split else [f"{split_dir}: manifest is for split {manifest.split!r}"]
    listed = {shard.name for shard in manifest.shards}
    problems += [f"{split}/{p.name}: not listed in the manifest" for p in sorted(split_dir.glob("*.tar"))
                 if p.name not in listed]
    missing = [shard.name for shard in manifest.shards if not (split_dir / shard.name).is_file()]
    problems += [f"{split}/{name}: listed in the manifest but missing" for name in missing]
    wnids = tuple(entry.wnid for entry in manifest.classes)
    side = manifest.settings.get("shorter_side")
    tasks = [ShardCheckTask(str(split_dir / shard.name), split, wnids, side)
             for shard in manifest.shards if shard.name not in missing]
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
            checks = pool.map(check_shard, tasks, chunksize=1)
    else:
        checks = [check_shard(task) for task in tasks]
    labels: Counter[int] = Counter()
    indices: list[int] = []
    counts = {shard.name: shard.count for shard in manifest.shards}
    for task, check in zip(tasks, checks):
        problems += check.problems
        name = Path(task.path).name
        if check.count != counts[name]:
            problems.append(f"{split}/{name}: {check.count} samples, the manifest says {counts[name]}")
        labels += check.labels
        indices += check.indices
    if len(set(indices)) != len(indices):
        problems.append(f"{split}: {len(indices) - len(set(indices))} duplicate sample keys")
    for index, expected in enumerate(manifest.class_counts):
        if labels[index] != expected:
            problems.append(f"{split}: class {index} ({wnids[index]}) has {labels[index]} samples, manifest says "
                            f"{expected}")
    return problems


def verify(out: str | Path, *, workers: int = 1) -> list[str]:
    """Re-read every shard under `out` and compare it with its manifest.

    Checks, per split present: the manifest loads; every listed shard exists and no unlisted one does; each shard
    reads to its end; each sample has jpg/cls/json, a label in range whose wnid matches the json, an image that
    decodes as RGB JPEG with the recorded size; keys are unique; counts per shard and per class match the manifest.

    Returns:
        One line per problem; empty when everything matches.
    """
    out = Path(out)
    split_dirs = [out / split for split in SPLITS if (out / split).is_dir()]
    if not split_dirs:
        return [f"{out}: no train/ or val/ shard folder (write them with `spp-cls shards --src SRC --out {out}`)"]
    return [problem for split_dir in split_dirs for problem in _verify_split(split_dir, workers)]


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

MAX_SKIPPED_PRINTED = 50


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spp-cls shards",
        description="Convert an ImageNet folder into webdataset shards with manifests (once), or --verify them.",
    )
    parser.add_argument("--src", type=Path, help="ImageNet folder with train/<wnid>/ and val/")
    parser.add_argument("--out", type=Path, help="output folder; OUT/train and OUT/val receive shards + manifest")
    parser.add_argument("--verify", type=Path, metavar="DIR", help="re-read the shards under DIR against manifests")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated subset of train,val")
    parser.add_argument("--shorter-side", type=int, default=256, help="train images: shorter side after resize")
    parser.add_argument("--val-shorter-side", type=int, default=None, help="resize val too (default: full size)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    parser.add_argument("--shard-size", type=int, default=1000, help="source files per shard")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order and pixel sampling")
    parser.add_argument("--strict", action="store_true", help="exit non-zero (and write no manifest) on any skip")
    parser.add_argument("--val-labels", type=Path, help=f"{VAL_SOLUTION_NAME} for a flat val/ (default: searched)")
    parser.add_argument("--synset-mapping", type=Path, help=f"{SYNSET_MAPPING_NAME} for class names")
    return parser


def _print_summary(manifests: dict[str, Manifest], seconds: float, workers: int) -> None:
    for split, manifest in manifests.items():
        print(f"{split}: {manifest.total} images in {len(manifest.shards)} shards, {manifest.num_classes} classes, "
              f"{len(manifest.skipped)} skipped")
    skipped = [(split, item) for split, manifest in manifests.items() for item in manifest.skipped]
    for split, item in skipped[:MAX_SKIPPED_PRINTED]:
        print(f"skipped ({split}) {item.path}: {item.reason}")
    if len(skipped) > MAX_SKIPPED_PRINTED:
        print(f"... and {len(skipped) - MAX_SKIPPED_PRINTED} more skipped files, all listed in the manifests")
    counts = ", ".join(f"{split} {manifest.total}" for split, manifest in manifests.items())
    print(f"done: {counts} images; {len(skipped)} skipped; {seconds:.1f} s with {workers} worker(s)")


def _run_verify(directory: Path, workers: int) -> int:
    started = time.monotonic()
    problems = verify(directory, workers=workers)
    for problem in problems:
        print(problem)
    seconds = time.monotonic() - started
    if problems:
        print(f"verify: {len(problems)} problem(s) in {directory} ({seconds:.1f} s)")
        return 1
    totals = ", ".join(f"{s} {Manifest.load(directory / s).total}" for s in SPLITS if (directory / s).is_dir())
    print(f"verify: {directory} is consistent ({totals} images; {seconds:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`spp-cls shards ...`; returns the exit status (0 fine, 1 problems found or --strict skips, 2 bad input)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.verify is None and (args.src is None or args.out is None):
            raise _UsageError("--src and --out are required (or --verify DIR)")
    except _UsageError as error:
        print(f"spp-cls shards: error: {error} (see --help)", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.verify is not None:
        return _run_verify(args.verify, args.workers)
    started = time.monotonic()
    try:
        manifests = convert(args.src, args.out, splits=[s.strip() for s in args.splits.split(",") if s.strip()],
                            shorter_side=args.shorter_side, val_shorter_side=args.val_shorter_side,
                            quality=args.quality, shard_size=args.shard_size, workers=args.workers,
                            strict=args.strict, seed=args.seed, val_labels=args.val_labels,
                            synset_mapping=args.synset_mapping)
    except (ShardsInputError, ShardsStateError) as error:
        print(f"spp-cls shards: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. --out not writable, disk full
        print(f"spp-cls shards: error: {error}", file=sys.stderr)
        return 1
    except StrictSkipError as error:
        _print_summary(error.manifests, time.monotonic() - started, args.workers)
        print(f"spp-cls shards: error: {error}", file=sys.stderr)
        return 1
    _print_summary(manifests, time.monotonic() - started, args.workers)
    return 0

