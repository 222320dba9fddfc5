"""`spp-cls shards --verify`: re-read every shard and compare it with its manifest."""
from __future__ import annotations

import io
import json
import multiprocessing
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from spp_cls.data.manifest import Manifest, ManifestError
from spp_cls.data.shards.sources import SPLITS
from spp_cls.data.shards.writer import SAMPLE_EXTENSIONS


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
