"""`spp-cls bench` command line: the settings of a run, and one clear error for bad ones."""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from ..data.stream.nvimgcodec_decode import DECODE_BACKENDS, check_backend
from ..models import TRUNKS, list_models
from ..models.registry import HEADS
from ..protocol import TRAIN_SIZES

Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_MODELS = ("zf5_spp", "convnet5_spp", "overfeat5_spp", "overfeat7_spp")
NUM_CLASSES = 1000
PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed"}
"""--precision -> Lightning's precision flag (bf16: autocast, fp32 weights)."""



class BenchUsageError(Exception):
    """Bad arguments: reported as one line and exit status 2."""


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked network: a registered name like `zf5_spp`, or `{timm model}_{spp|nospp}`."""

    name: str
    backbone: str
    head: str


@dataclass(frozen=True)
class BenchSettings:
    models: tuple[ModelSpec, ...]
    sizes: tuple[int, ...]
    batch_size: int
    data: str
    steps: int
    warmup: int
    width: float
    workers: int
    device: str
    channels_last: bool
    precision: str
    compile: bool
    out: Path | None
    decode: str = "cpu"
    decode_backend: str = "auto"
    profile: bool = False
    lrn_check: bool = False
    old_lrn: bool = False


class BenchParser(argparse.ArgumentParser):
    """argparse whose errors are BenchUsageError: one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchUsageError(message)


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, smallest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < smallest:
        raise argparse.ArgumentTypeError(f"must be at least {smallest}, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(_int_at_least(part.strip(), 1) for part in text.split(",") if part.strip())
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 224,180, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def model_spec(name: str) -> ModelSpec:
    """Resolve a --model name, or raise BenchUsageError naming the known ones."""
    registered = list_models()
    if name in registered:
        backbone, head = name.rsplit("_", 1)
        return ModelSpec(name, backbone, head)
    backbone, _, head = name.rpartition("_")
    if head in HEADS and backbone not in TRUNKS and timm.is_model(backbone):
        return ModelSpec(name, backbone, head)
    raise BenchUsageError(f"unknown model {name!r}; known models: {', '.join(registered)} "
                          "(or a timm model name with _spp or _nospp, e.g. resnet18_spp)")


def build_parser() -> argparse.ArgumentParser:
    parser = BenchParser(prog="spp-cls bench", description="Throughput of models, data path and harness.",
                     epilog="Defaults on CUDA: batch 128, warmup 10, steps 50; on a CPU: batch 32, warmup 2, steps 5.")
    parser.add_argument("--model", nargs="+", action="extend", metavar="NAME",
                        help=f"networks to measure (default: {' '.join(DEFAULT_MODELS)}); see `spp-cls models`")
    parser.add_argument("--sizes", type=_sizes, default=TRAIN_SIZES, help="training sizes, comma-separated")
    parser.add_argument("--batch-size", type=positive_int, help="images per step")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (a small synthetic shard set in a temp dir) or an output root of `spp-cls "
                             "shards`")
    parser.add_argument("--steps", type=positive_int, help="timed steps per measurement")
    parser.add_argument("--warmup", type=non_negative_int, help="untimed steps before each measurement")
    parser.add_argument("--width", type=positive_float, default=1.0, help="width multiplier of the networks")
    parser.add_argument("--workers", type=non_negative_int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes of the data path")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="32", help="bf16: autocast, fp32 weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (one graph per size)")
    parser.add_argument("--decode", choices=("cpu", "device"), default="cpu",
                        help="where training JPEGs are decoded: in the loader workers, or batched on the device "
                             "(data.decode); run both on a GPU node to choose")
    parser.add_argument("--decode-backend", choices=DECODE_BACKENDS, default="auto",
                        help="nvImageCodec's backend with --decode device (data.decode_backend); only cpu on a CPU")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--profile", action="store_true",
                       help="instead: profile the model-only step (time by kernel family, top kernels, Chrome trace)")
    modes.add_argument("--lrn-check", action="store_true",
                       help="instead: the one-op LRN against the old formula (step time, saved bytes; default model "
                            "zf5_spp)")
    parser.add_argument("--old-lrn", action="store_true", help="with --profile: the old LRN formula (the baseline)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    return parser


def parse_settings(argv: Sequence[str]) -> BenchSettings:
    args = build_parser().parse_args(list(argv))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchUsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    on_gpu = device == "cuda"
    if args.data != "synthetic":
        for split in ("train", "val"):
            if not (Path(args.data) / split / "manifest.json").is_file():
                raise BenchUsageError(f"--data {args.data}: no {split}/manifest.json there; give 'synthetic' or the "
                                      "output root of `spp-cls shards`")
    if args.decode == "device":
        try:
            check_backend(args.decode_backend, torch.device(device))
        except ValueError as error:
            raise BenchUsageError(f"--decode-backend: {error}") from None
    if args.old_lrn and not args.profile:
        raise BenchUsageError("--old-lrn goes with --profile")
    if args.out is not None and not args.out.parent.is_dir():
        raise BenchUsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    return BenchSettings(
        models=tuple(model_spec(name) for name in
                     dict.fromkeys(args.model or (("zf5_spp",) if args.lrn_check else DEFAULT_MODELS))),
        sizes=args.sizes,
        batch_size=args.batch_size or (128 if on_gpu else 32),
        data=args.data,
        steps=args.steps or (50 if on_gpu else 5),
        warmup=args.warmup if args.warmup is not None else (10 if on_gpu else 2),
        width=args.width,
        workers=args.workers,
        device=device,
        channels_last=args.channels_last,
        precision=args.precision,
        compile=args.compile,
        out=args.out,
        decode=args.decode,
        decode_backend=args.decode_backend,
        profile=args.profile,
        lrn_check=args.lrn_check,
        old_lrn=args.old_lrn,
    )
