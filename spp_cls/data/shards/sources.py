"""Listing an ImageNet source folder: the class list from `train/<wnid>/`, the labelled files of each split.

Layouts read: `train/<wnid>/*`; `val/<wnid>/*` folders and/or flat `val/*` files labelled by Kaggle's
`LOC_val_solution.csv`; class names from `LOC_synset_mapping.txt`. Both metadata files are looked for in SRC and the
three folders above it. Without a mapping file (ImageNet subsets such as fast.ai's Imagenette and Imagewoof ship none)
a class is named from its wnid by timm's table of the 1,000 ImageNet classes, else by the wnid itself.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from spp_cls.data.manifest import ClassEntry, SkippedFile
from spp_cls.data.shards.errors import ShardsInputError

SPLITS = ("train", "val")
SYNSET_MAPPING_NAME = "LOC_synset_mapping.txt"
VAL_SOLUTION_NAME = "LOC_val_solution.csv"


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


def imagenet_class_names(wnids: list[str]) -> dict[str, str]:
    """{wnid: name} for the wnids that are ImageNet-1k classes, from the class table timm ships (no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    known = set(info.label_names())
    return {wnid: info.label_name_to_description(wnid) for wnid in wnids if wnid in known}


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
    names = read_synset_names(mapping_path) if mapping_path else imagenet_class_names(wnids)
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
