"""Writing one shard: its samples streamed into a tar, then its record, both renamed into place atomically.

A shard's record (`shard-info/{name}.json`) holds its count, class counts, skipped files and pixel statistics, with
the settings (fingerprint) and the digest of its file list, so that a rerun can tell a finished shard from one to redo.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spp_cls.data.manifest import SkippedFile
from spp_cls.data.shards.imageprep import UnreadableImage, normalise_image
from spp_cls.data.shards.pixelstats import STATS_PIXELS_PER_IMAGE, PixelStats, sample_pixels

SHARD_INFO_DIR = "shard-info"
# Fixed tar header fields so that the same input gives byte-identical shards (2000-01-01, not 0: GNU tar warns
# about "implausibly old" time stamps).
TAR_MTIME = 946_684_800
SAMPLE_EXTENSIONS = ("jpg", "cls", "json")


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
