"""What oversubscribed CPU threads cost a 2-rank DDP run, in one run: `spp-cls fit` on 2 gloo ranks on the CPU, the
same data, model and seed, once with every rank taking all usable cores for torch's intra-op pool (torch's own default
for a process; `--oversubscribed-threads N` for more, e.g. 4 x cores for what 8 ranks that each take every core make
of a node) and once with the threads spp-cls sizes per rank (usable cores / 2).

The rate is `train_images_per_s` of `summary.csv` (global images over the slowest rank's training time, validation
excluded), the median over the epochs after the first (start-up, loader workers and the forkserver excluded); the two
settings alternate `--rounds` times so that a drift of the machine touches both. Prints one JSON line per run, then
the medians and the ratio (sized / oversubscribed: above 1 means sizing helps).

    python benchmarks/rank_threads.py [--epochs 4] [--images-per-class 64] [--width 0.25] [--rounds 1]
                                      [--oversubscribed-threads N] [--work DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import checkout  # noqa: F401  (before spp_cls: the checkout's, installed or not)

from spp_cls.data.shards.convert import convert
from spp_cls.data.synthetic import make_imagenet_folder

CONFIG = checkout.ROOT / "configs" / "table1" / "zf5_spp_multi.yaml"
RANKS = 2


def fit_args(shards: Path, runs: Path, epochs: int, width: float) -> list[str]:
    return ["--config", str(CONFIG), "--data.root", str(shards), "--runs_dir", str(runs), "--experiment", "bench",
            "--trainer.accelerator", "cpu", "--trainer.devices", str(RANKS), "--trainer.strategy", "ddp",
            "--trainer.precision", "32-true", "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar",
            "false", "--model.width", str(width), "--model.init", "kaiming", "--model.channels_last", "false",
            "--model.reference_batch", "16", "--data.batch_size", "16", "--data.num_workers", "1",
            "--data.eval_workers", "0", "--wandb", "false"]


def run_fit(label: str, threads: int | None, shards: Path, runs: Path, epochs: int, width: float) -> float:
    """One `spp-cls fit`; the median train images/s of its epochs after the first."""
    env = {key: value for key, value in os.environ.items() if key not in ("SPP_CLS_RANK_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout.ROOT), env.get("PYTHONPATH")]))  # this checkout's
    if threads is not None:
        env["SPP_CLS_RANK_THREADS"] = str(threads)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spp_cls", "fit", *fit_args(shards, runs, epochs, width)],
                          env=env, capture_output=True, text=True, check=False, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label}: spp-cls fit exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with (runs / "bench" / "zf5-spp_multi" / "summary.csv").open() as handle:
        rates = [float(row["train_images_per_s"]) for row in csv.DictReader(handle)][1:]
    rate = statistics.median(rates)
    said = [line for line in (done.stdout + done.stderr).splitlines() if "CPU thread(s) per rank" in line]
    print(json.dumps({"run": label, "rank_threads": threads, "images_per_s": round(rate, 2),
                      "epochs_images_per_s": [round(r, 2) for r in rates], "wall_s": round(wall, 1),
                      "log": said[0] if said else None}), flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images-per-class", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--oversubscribed-threads", type=int, help="threads per rank of the baseline (default: cores)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    over_threads = args.oversubscribed_threads or cores
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        make_imagenet_folder(work / "images", num_classes=5, train_per_class=args.images_per_class,
                             val_per_class=4, seed=0, shorter_side_range=(256, 320))
        convert(work / "images", work / "shards", shard_size=32, workers=1)
        rates: dict[str, list[float]] = {"oversubscribed": [], "sized": []}
        for round_index in range(args.rounds):
            for label, threads in (("oversubscribed", over_threads), ("sized", None)):
                runs = work / f"runs-{label}-{round_index}"
                rates[label].append(run_fit(label, threads, work / "shards", runs, args.epochs, args.width))
    over, sized = (statistics.median(rates[label]) for label in ("oversubscribed", "sized"))
    print(f"{RANKS} ranks on {cores} usable cores: {over:.1f} images/s with {over_threads} torch threads per rank, "
          f"{sized:.1f} with {max(1, cores // RANKS)} (sized); ratio sized / oversubscribed {sized / over:.2f}")


if __name__ == "__main__":
    main()
