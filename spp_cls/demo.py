"""`spp-cls demo`: the whole path from an image folder to the paper-format table, on the CPU, in minutes.

It writes a synthetic ImageNet-layout folder of real JPEGs, converts it with `spp-cls shards`, trains the three ZF-5
variants (no SPP, SPP single-size, SPP multi-size) with configs/demo.yaml, runs the 10-view test on each and prints
the table. Every step is the one a real run takes; only the data and the recipe are small.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .protocol import TABLE_VARIANTS, VARIANTS

if TYPE_CHECKING:
    from .report.cells import Table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spp-cls demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="folder for data, shards and runs")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2, help="processes for the shards and loader workers")
    parser.add_argument("--verbose", action="store_true",
                        help="show everything Lightning and wandb print (as SPP_CLS_VERBOSE=1)")
    parser.add_argument("--variants", default=",".join(TABLE_VARIANTS),
                        help="comma-separated subset of " + ", ".join(TABLE_VARIANTS))
    return parser.parse_args(argv)


def gain_lines(table: Table) -> list[str]:
    """One line per SPP variant: its top-1 gain over no SPP with the paired 95% interval; then one line saying whether
    any gain is more than noise on this many test images."""
    lines, noise = [], []
    for variant in table.variants:
        gain = table.cell("zf5", variant).gain_estimate("top1")
        if gain is None:
            continue
        verdict = "more than noise" if gain.excludes_zero else "within noise"
        lines.append(f"ZF-5 {variant}: top-1 gain over no SPP {gain.value:+.1f} points, 95% interval "
                     f"[{gain.low:+.1f}, {gain.high:+.1f}]: {verdict}")
        noise.append(not gain.excludes_zero)
    if noise and all(noise):
        lines.append("Every gain here is within noise: on this few test images the intervals hold zero, so these "
                     "numbers cannot rank the variants (they show that the path works and learns).")
    if lines:
        lines.append("The intervals count which test images were drawn, not which training run: with one seed per "
                     "cell, a few epochs on a small set can move by more than they show (`--seed_everything` and "
                     "several seeds per cell put that noise in).")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(TABLE_VARIANTS))
    if unknown:
        choices = ", ".join(TABLE_VARIANTS)
        print(f"spp-cls demo: error: unknown variants {unknown}; choose from {choices}", file=sys.stderr)
        return 2
    if not CONFIG.is_file():
        print(f"spp-cls demo: error: {CONFIG} is missing; run the demo from a checkout of spp-cls", file=sys.stderr)
        return 2
    from .data.shards.convert import convert
    from .data.synthetic import make_imagenet_folder
    from .report.cells import build_table
    from .report.results import collect
    from .report.table import format_markdown
    from .train.console import VERBOSE_VARIABLE
    from .train.lightning_cli import run_lightning

    if args.verbose:
        os.environ[VERBOSE_VARIABLE] = "1"
    started = time.perf_counter()
    images, shards, runs = args.out / "imagenet", args.out / "shards", args.out / "runs"
    settings = f"{args.classes} classes, {args.train_per_class} train + {args.val_per_class} val images each"
    print(f"[1/4] synthetic ImageNet folder ({settings}) -> {images}", flush=True)
    shutil.rmtree(args.out, ignore_errors=True)
    make_imagenet_folder(images, num_classes=args.classes, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, seed=0)
    print(f"[2/4] spp-cls shards --src {images} --out {shards}", flush=True)
    convert(images, shards, shard_size=max(1, args.classes * args.train_per_class // 8), workers=args.workers)

    common = ["--config", str(CONFIG), "--data.root", str(shards), "--runs_dir", str(runs),
              "--trainer.max_epochs", str(args.epochs), "--data.num_workers", str(args.workers)]
    for number, variant in enumerate(variants, start=1):
        head, schedule = VARIANTS[variant].head, VARIANTS[variant].size_schedule
        run_args = [*common, "--model.head", head, "--model.size_schedule", schedule]
        print(f"[3/4] ({number}/{len(variants)}) ZF-5 {variant}: fit {args.epochs} epochs, then the 10-view test",
              flush=True)
        for command in ("fit", "test"):
            code = run_lightning([command, *run_args])
            if code != 0:
                return code

    print("[4/4] spp-cls table", runs, flush=True)
    results = collect([runs])
    print(format_markdown(results))
    chance = 100.0 * (1 - 1 / args.classes)
    for result in sorted(results, key=lambda r: r.variant):
        print(f"ZF-5 {result.variant}: top-1 error {result.top1_err:.1f}% (chance {chance:.1f}%)")
    for line in gain_lines(build_table(results)):
        print(line)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; runs, checkpoints and results in {runs}")
    return 0
