"""Figures of the GPU script (benchmarks/gpu_figures.sh) that no `spp-cls bench` run gives alone, each appended to
`--out` as one JSON line the moment it is measured (progress on stderr).

- `decode`: JPEG decode in the loader workers (`data.decode: cpu`) against nvImageCodec on the device (`data.decode:
  device`) per backend: the data path alone (shards -> uint8 batches on the device) and ZF-5's training step fed
  from the shards, beside the same step on batches already on the device (model only), on synthetic ImageNet-sized
  JPEG shards.
- `tenview`: the standard 10-view test of each paper SPP network, image crops against windows on the conv maps
  (`tenview_fmap`).

    python benchmarks/gpu_measure.py decode|tenview --out FILE.jsonl [--workers N] [--batch-size N] [--steps N]
        [--backends auto,hardware,cuda,hybrid,cpu] [--model zf5_spp ...] [--device cuda|cpu] [--width W]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (before spp_cls: the checkout's, installed or not)
import torch

from spp_cls.bench.data import decoder_description, measure_data_path, open_datamodule, shard_batches, synthetic_shards
from spp_cls.bench.data import prefetched_batches as prefetched
from spp_cls.bench.harness import bare_train_step
from spp_cls.bench.run import build_module
from spp_cls.bench.settings import NUM_CLASSES, BenchSettings, BenchUsageError, parse_settings
from spp_cls.bench.tenview import tenview_speed
from spp_cls.bench.timing import cycle, random_batches, timed_steps
from spp_cls.data.stream.nvimgcodec_decode import DECODE_BACKENDS

DEFAULT_MODELS = ("zf5_spp", "convnet5_spp", "overfeat5_spp", "overfeat7_spp")


def appender(out: Path) -> Callable[[dict[str, Any]], None]:
    """Appends one record to `out` as a JSON line, flushed at once, and shows it on stderr."""
    def append(record: dict[str, Any]) -> None:
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"gpu_measure: {json.dumps(record)}", file=sys.stderr, flush=True)
    return append


def settings_for(args: argparse.Namespace, *extra: str) -> BenchSettings:
    return parse_settings(["--device", args.device, "--precision", "bf16", "--channels-last", "--batch-size",
                           str(args.batch_size), "--workers", str(args.workers), "--steps", str(args.steps),
                           "--width", str(args.width), *extra])


def measure_decode(args: argparse.Namespace, append: Callable[[dict[str, Any]], None]) -> None:
    """Per decode path: the data path alone and ZF-5 fed from shards, beside ZF-5 on in-memory batches."""
    base = settings_for(args, "--model", "zf5_spp", "--sizes", "224")
    device = torch.device(base.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    [spec] = base.models
    module = build_module(spec, 224, base, NUM_CLASSES, device)
    step = bare_train_step(module, 224, base.batch_size, base.precision, device)
    model = timed_steps(step, cycle(random_batches(base.batch_size, NUM_CLASSES, device)), 5, base.steps, device)
    append({"figure": "model_only", "model": spec.name, "size": 224, "batch_size": base.batch_size,
            "images_per_s": model.images_per_s})
    with tempfile.TemporaryDirectory(prefix="spp-cls-gpu-decode-") as temp:
        started = time.perf_counter()
        source = synthetic_shards(Path(temp), base.batch_size, base.workers)
        append({"figure": "shards_written", "source": source.description, "seconds": time.perf_counter() - started})
        for decode, backend in [("cpu", "auto"), *(("device", name) for name in args.backends.split(","))]:
            record = {"decode": decode, "backend": backend if decode == "device" else None,
                      "workers": base.workers, "batch_size": base.batch_size}
            try:
                settings = settings_for(args, "--model", "zf5_spp", "--sizes", "224", "--decode", decode,
                                        "--decode-backend", backend)
                datamodule = open_datamodule(source, settings.batch_size, settings.workers, decode, backend)
                data = measure_data_path(datamodule, source, settings, device)
                append({"figure": "data_path", **record, "images_per_s": data["images_per_s"],
                        "decoder": data["decoder"]})
                warmup = max(5, prefetched(settings.workers))
                fed = timed_steps(step, shard_batches(datamodule, warmup + settings.steps, device), warmup,
                                  settings.steps, device)
                append({"figure": "fed_from_shards", **record, "model": spec.name, "size": 224,
                        "images_per_s": fed.images_per_s, "over_model_only": fed.images_per_s / model.images_per_s,
                        "decoder": decoder_description(datamodule, device)})
            except Exception as error:  # one backend that does not run here must not cost the others' figures
                append({"figure": "failed", **record, "error": f"{type(error).__name__}: {error}"[:500]})


def measure_tenview(args: argparse.Namespace, append: Callable[[dict[str, Any]], None]) -> None:
    for model in args.model:
        settings = settings_for(args, "--model", model, "--sizes", "224")
        [spec] = settings.models
        result = tenview_speed(spec, settings, torch.device(settings.device))
        append({"figure": "tenview", **result, "precision": "bf16", "channels_last": True})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("decode", "tenview"))
    parser.add_argument("--out", type=Path, required=True, help="append the figures here as JSON lines")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--backends", default=",".join(DECODE_BACKENDS), help="nvImageCodec backends to measure")
    parser.add_argument("--model", nargs="+", default=list(DEFAULT_MODELS), help="networks of the 10-view test")
    args = parser.parse_args(argv)
    try:
        (measure_decode if args.what == "decode" else measure_tenview)(args, appender(args.out))
    except BenchUsageError as error:
        print(f"gpu_measure: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
