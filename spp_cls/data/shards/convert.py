"""`spp-cls shards`: convert an ImageNet folder into webdataset shards once, and `--verify` them.

Output, per split: `OUT/{split}/{split}-{i:06d}.tar` and `OUT/{split}/manifest.json` (see `manifest.py`). Each sample
holds the standard webdataset keys `__key__`, `jpg` (RGB baseline JPEG), `cls` (class index as ASCII) and `json`
({"wnid", "source", "orig_size"}); nothing is pickled.

How it works:
- The source files are listed and sorted, then shuffled with a fixed seed, then cut into consecutive runs of
  `shard_size` files (val: `val_shard_size`): shard i always gets the same files, so a rerun can skip every shard that
  is already written. A file that cannot be read is skipped (named, with its reason), so a shard may hold fewer.
- One task per shard. A worker process reads, decodes, normalises and re-encodes the files of its shard one at a time
  and streams them into `.{name}.tmp-{pid}`; then it writes the shard's record (`shard-info/{name}.json`: count,
  class counts, skipped files, pixel statistics) and renames both into place. A shard counts as finished only when
  its tar and its record exist and the record matches the current settings and file list.
- `manifest.json` is assembled from the records once every shard is finished; it is the last file written, and it is
  removed before any shard of its split is (re)written, so a manifest always sits next to a complete set of shards.

Where the parts live (all in `spp_cls/data/shards/`): `sources.py` lists SRC, `imageprep.py` turns one file into the
JPEG to store, `pixelstats.py` estimates the mean and PCA, `writer.py` writes one shard and its record, `verify.py` is
`--verify`, and `errors.py` holds the errors; this module plans the shards, resumes, assembles the manifests and is the
command line. Everything a caller needs is importable from here.

NOTE known limits: one conversion per OUT at a time (a second one would delete the first one's temp files); the
file list is held in memory (about 150 MB of paths for ImageNet's 1.28 M training files), images are not; CMYK is
converted without ICC colour management; a shard whose every file is unreadable is written empty and listed with
count 0.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from spp_cls.data.manifest import MANIFEST_NAME, Manifest, ShardEntry, SkippedFile
from spp_cls.data.shards.errors import ShardsInputError, ShardsStateError, StrictSkipError
from spp_cls.data.shards.imageprep import UnreadableImage, normalise_image
from spp_cls.data.shards.pixelstats import STATS_IMAGES, STATS_PIXELS_PER_IMAGE, PixelStats
from spp_cls.data.shards.sources import (
    SPLITS,
    SYNSET_MAPPING_NAME,
    VAL_SOLUTION_NAME,
    SourceLayout,
    SplitListing,
    find_layout,
    list_train,
    list_val,
)
from spp_cls.data.shards.verify import verify
from spp_cls.data.shards.writer import SHARD_INFO_DIR, TAR_MTIME, ShardReport, ShardTask, shard_name, write_shard

# The public API stays importable from here, wherever it is defined.
__all__ = [
    "SPLITS", "TAR_MTIME", "ShardsInputError", "ShardsStateError", "StrictSkipError", "UnreadableImage", "convert",
    "find_layout", "main", "normalise_image", "verify",
]

log = logging.getLogger(__name__)

VAL_SHARD_SIZE = 100
"""Val files per shard unless given (or `shard_size`, if smaller). Each evaluation stream (rank x eval loader worker)
reads whole val shards, so the shard count is how many streams a validation can use and how evenly it spreads:
ImageNet's 50,000 val images make 500 shards, which feed 16 GPUs x 6 eval workers (96 streams) with the busiest
stream reading 600 images, 15% above the mean of 521 (1,000-image shards made 50: 48 streams at most, 2 of them
reading twice as much as the others); a shard of 100 full-size val images is about 13 MB."""


# ---------------------------------------------------------------------------------------------------------------
# Planning shards and resuming
# ---------------------------------------------------------------------------------------------------------------


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
        raise ShardsInputError("--shard-size, --val-shard-size and --workers must be at least 1")


def convert(src: str | Path, out: str | Path, splits: Sequence[str] = SPLITS, shorter_side: int = 256,
            val_shorter_side: int | None = None, quality: int = 90, shard_size: int = 1000, workers: int = 1,
            strict: bool = False, seed: int = 0, *, val_shard_size: int | None = None,
            val_labels: str | Path | None = None, synset_mapping: str | Path | None = None) -> dict[str, Manifest]:
    """Convert an ImageNet-layout folder into shards and manifests under `out`, resuming what a previous run began.

    Args:
        src: folder with `train/<wnid>/*` and `val/` (sorted into `<wnid>/` folders, or flat with
            LOC_val_solution.csv).
        out: output root; `out/{split}/` receives the shards and the manifest.
        shorter_side: train images are resized so that their shorter side is exactly this.
        val_shorter_side: the same for val; None keeps val images at full size.
        quality: JPEG quality of re-encoded images.
        shard_size: source files per train shard (a shard holds fewer when some of its files are skipped).
        val_shard_size: the same for val; None: `min(shard_size, VAL_SHARD_SIZE)`.
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
    val_shard_size = min(shard_size, VAL_SHARD_SIZE) if val_shard_size is None else val_shard_size
    _check_options(splits, shorter_side, val_shorter_side, quality, min(shard_size, val_shard_size), workers)
    layout = find_layout(src, val_labels, synset_mapping)
    out = Path(out)
    plans: dict[str, tuple[SplitListing, list[ShardTask], dict[str, Any]]] = {}
    for split in splits:
        listing = list_train(layout) if split == "train" else list_val(layout)
        side = shorter_side if split == "train" else val_shorter_side
        tasks = plan_split(split, listing, layout, out, shorter_side=side, quality=quality,
                           shard_size=shard_size if split == "train" else val_shard_size, seed=seed)
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
    parser.add_argument("--shard-size", type=int, default=1000, help="train files per shard")
    parser.add_argument("--val-shard-size", type=int, default=None,
                        help=f"val files per shard (default: {VAL_SHARD_SIZE}, or --shard-size if smaller; "
                             "small val shards feed many GPUs x eval workers)")
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
                            strict=args.strict, seed=args.seed, val_shard_size=args.val_shard_size,
                            val_labels=args.val_labels,
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

