"""The manifest of one split of converted shards: what `spp-cls shards` wrote and what the datamodule reads.

One `manifest.json` per split directory (`OUT/train/manifest.json`, `OUT/val/manifest.json`). It lists the shards in
order with their sample counts, the class mapping (index = position of the wnid in the sorted train wnids), per-class
counts, every source file that was skipped and why, the settings used, and for train the pixel statistics that the
PCA colour noise and the mean subtraction need.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = "spp-cls-shards/1"
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that exists but cannot be used (wrong format, inconsistent counts)."""


@dataclass(frozen=True)
class ShardEntry:
    """One tar file of the split: its file name (relative to the split directory) and how many samples it holds."""

    name: str
    count: int


@dataclass(frozen=True)
class ClassEntry:
    """One class: `index` is the label stored in the shards, `name` the human-readable synset name."""

    index: int
    wnid: str
    name: str


@dataclass(frozen=True)
class SkippedFile:
    """A source file that is not in the shards: `path` relative to the source root, and the reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    """Everything known about one split of shards.

    Attributes:
        split: "train" or "val".
        shards: the tar files in order.
        total: number of samples over all shards.
        classes: the class mapping, ordered by index.
        class_counts: samples per class index.
        skipped: source files left out, each with its reason.
        settings: the conversion settings (shorter_side, quality, shard_size, seed, ...).
        mean_rgb: per-channel pixel mean in 0-255 scale (train only).
        pca_eigval: eigenvalues of the RGB pixel covariance (0-255 scale), descending (train only).
        pca_eigvec: `pca_eigvec[i]` is the unit RGB eigenvector of `pca_eigval[i]` (train only).
        split_dir: the directory the manifest was loaded from or saved to; not part of the file.
    """

    split: str
    shards: tuple[ShardEntry, ...]
    total: int
    classes: tuple[ClassEntry, ...]
    class_counts: tuple[int, ...]
    skipped: tuple[SkippedFile, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    mean_rgb: tuple[float, float, float] | None = None
    pca_eigval: tuple[float, float, float] | None = None
    pca_eigvec: tuple[tuple[float, float, float], ...] | None = None
    split_dir: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = self._consistency_problems()
        if problems:
            raise ManifestError(f"inconsistent {self.split} manifest: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shard_paths(self) -> list[Path]:
        """Absolute paths of the shards, in manifest order."""
        if self.split_dir is None:
            raise ManifestError("this manifest has no split_dir: load it with Manifest.load(dir) or save it first")
        root = self.split_dir.resolve()
        return [root / shard.name for shard in self.shards]

    @classmethod
    def load(cls, split_dir: str | Path) -> Manifest:
        """Read `split_dir/manifest.json`.

        Raises:
            FileNotFoundError: no manifest there; the message names the command that writes one.
            ManifestError: the file is not a usable spp-cls manifest.
        """
        split_dir = Path(split_dir)
        path = split_dir / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no shard manifest at {path}: convert the dataset first with "
                f"`spp-cls shards --src /path/to/imagenet --out {split_dir.parent}`"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ManifestError(f"cannot read {path}: {error}") from error
        try:
            return cls.from_dict(data, split_dir=split_dir)
        except ManifestError as error:
            raise ManifestError(f"{path}: {error}") from error

    def save(self, split_dir: str | Path) -> Manifest:
        """Write `split_dir/manifest.json` atomically and return the manifest bound to `split_dir`."""
        split_dir = Path(split_dir)
        split_dir.mkdir(parents=True, exist_ok=True)
        path = split_dir / MANIFEST_NAME
        temp = split_dir / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
        temp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(temp, path)
        return Manifest.from_dict(self.to_dict(), split_dir=split_dir)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "split": self.split,
            "shards": [{"name": s.name, "count": s.count} for s in self.shards],
            "total": self.total,
            "classes": [{"index": c.index, "wnid": c.wnid, "name": c.name} for c in self.classes],
            "class_counts": list(self.class_counts),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "settings": dict(self.settings),
        }
        if self.mean_rgb is not None:
            data["mean_rgb"] = list(self.mean_rgb)
            data["pca_eigval"] = list(self.pca_eigval or ())
            data["pca_eigvec"] = [list(row) for row in self.pca_eigvec or ()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], split_dir: str | Path | None = None) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        try:
            has_stats = "mean_rgb" in data
            return cls(
                split=str(data["split"]),
                shards=tuple(ShardEntry(str(s["name"]), int(s["count"])) for s in data["shards"]),
                total=int(data["total"]),
                classes=tuple(ClassEntry(int(c["index"]), str(c["wnid"]), str(c["name"])) for c in data["classes"]),
                class_counts=tuple(int(n) for n in data["class_counts"]),
                skipped=tuple(SkippedFile(str(s["path"]), str(s["reason"])) for s in data.get("skipped", ())),
                settings=dict(data.get("settings", {})),
                mean_rgb=_floats(data["mean_rgb"], 3) if has_stats else None,
                pca_eigval=_floats(data["pca_eigval"], 3) if has_stats else None,
                pca_eigvec=tuple(_floats(row, 3) for row in data["pca_eigvec"]) if has_stats else None,
                split_dir=Path(split_dir) if split_dir is not None else None,
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"malformed manifest ({type(error).__name__}: {error})") from error

    def _consistency_problems(self) -> list[str]:
        problems = []
        if sum(s.count for s in self.shards) != self.total:
            problems.append(f"shard counts add up to {sum(s.count for s in self.shards)}, total says {self.total}")
        if len(self.class_counts) != len(self.classes):
            problems.append(f"{len(self.class_counts)} class counts for {len(self.classes)} classes")
        elif sum(self.class_counts) != self.total:
            problems.append(f"class counts add up to {sum(self.class_counts)}, total says {self.total}")
        if [c.index for c in self.classes] != list(range(len(self.classes))):
            problems.append("class indices are not 0..N-1 in order")
        if len({s.name for s in self.shards}) != len(self.shards):
            problems.append("a shard name is listed twice")
        stats = (self.mean_rgb, self.pca_eigval, self.pca_eigvec)
        if any(s is not None for s in stats) and not all(s is not None for s in stats):
            problems.append("mean_rgb, pca_eigval and pca_eigvec must be given together")
        if self.pca_eigvec is not None and len(self.pca_eigvec) != 3:
            problems.append("pca_eigvec must hold 3 eigenvectors")
        if self.pca_eigval is not None and list(self.pca_eigval) != sorted(self.pca_eigval, reverse=True):
            problems.append("pca_eigval must be in descending order")
        return problems


def _floats(values: Any, length: int) -> tuple[float, ...]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != length or not all(math.isfinite(v) for v in numbers):
        raise ManifestError(f"expected {length} finite numbers, got {values!r}")
    return numbers
