"""`spp-cls bench`: how fast the networks train here, what limits a run (data or compute), and what the harness costs.

For each network and training size it measures, on the device it is given (CPU here, CUDA on a GPU machine):
- model-only training throughput: forward + cross-entropy + backward + SGD step, exactly as `SppClassifier` trains
  (uint8 224 crops -> on-device resize to the size, colour noise, mean off -> network), from batches already on the
  device, after warm-up, with the device synchronised before each clock read;
- FLOPs per image counted with `torch.utils.flop_counter.FlopCounterMode` (forward, and forward + backward as trained),
  the achieved FLOP/s and, on a CUDA card of the peak table, the model FLOPs utilisation (MFU);
- the same step fed from shards through `ShardDataModule` (the whole train step), beside the data path alone
  (shards -> uint8 batches), so each row says whether the run is data-bound or compute-bound;
- the harness overhead: the first network at the first size trained by `SppClassifier.training_step` inside a real
  Lightning Trainer against a bare loop, on identical in-memory batches (target: Lightning / bare >= 0.95);
- the standard 10-view test of each paper SPP network: 10 image crops against the 10 windows on the conv maps of the
  image and its flip (`tenview_fmap`).

    spp-cls bench [--model NAME...] [--sizes 224,180] [--batch-size N] [--data synthetic|DIR] [--steps N]
                  [--warmup N] [--width W] [--workers N] [--device cpu|cuda] [--channels-last] [--precision 32|bf16]
                  [--compile] [--out FILE.json]

NOTE known limits: FlopCounterMode counts convolutions and matrix products only (not LRN, pooling, ReLU or the
input resize), which is how MFU is usually defined. Every timed window is short, so CPU figures vary by 10-25 %
from run to run; the harness ratio takes the best of two alternating rounds (bare, Lightning, Lightning, bare).
The Lightning run has no progress bar and no logger (a real `fit` has both). The 10-view timings are eager even
with --compile (test-time shapes vary).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .data.datamodule import ShardDataModule
from .data.device_decode import JpegBatch, decode_train_batch
from .data.shards import convert
from .data.synthetic import make_imagenet_folder
from .data.views import CROP, TEST_SHORTER_SIDE, ten_views
from .models import TRUNKS, create, list_models
from .models.registry import HEADS
from .train.augment import IMAGENET_MEAN_RGB, IMAGENET_PCA_EIGVAL_255, IMAGENET_PCA_EIGVEC
from .train.module import SppClassifier

Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_MODELS = ("zf5_spp", "convnet5_spp", "overfeat5_spp", "overfeat7_spp")
NUM_CLASSES = 1000
HARNESS_TARGET = 0.95
DISTINCT_BATCHES = 4
"""Pre-generated batches cycled through the in-memory measurements."""
TENVIEW_IMAGE_WIDTH = 341
"""The 10-view test image is 256 x 341 (a 4:3 image at s=256)."""
SYNTHETIC_CLASSES = 10
DATA_PATH_IMAGES = 1024
"""The data path alone is cheap to time: its window holds at least this many images."""
QUIET_LIGHTNING_WARNINGS = (r".*(validation_step. but have no .val_dataloader|isinstance\(treespec, LeafSpec\)"
                            r"|smaller than the logging interval|The .srun. command is available).*")
"""Lightning warnings expected in the harness run (no validation, few batches, one process where SLURM is installed)
or coming from its version pins."""
PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed"}
"""--precision -> Lightning's precision flag (bf16: autocast, fp32 weights)."""

# Dense (no sparsity) datasheet peaks in TFLOP/s: (device-name pattern, FP32, TF32 tensor, BF16 tensor). Patterns are
# tried in order against torch.cuda.get_device_name(), most specific first ("A100" must not match "A10").
PEAK_TFLOPS: tuple[tuple[str, float, float | None, float | None], ...] = (
    (r"H100.*PCIe", 51.0, 378.0, 756.0),
    (r"H100 NVL|H200 NVL", 60.0, 417.5, 835.0),
    (r"H100|H200", 67.0, 494.7, 989.4),  # SXM, and GH200
    (r"A100|A800", 19.5, 156.0, 312.0),
    (r"A30\b", 10.3, 82.0, 165.0),
    (r"A10\b", 31.2, 62.5, 125.0),
    (r"L40S", 91.6, 183.0, 362.0),
    (r"L40\b", 90.5, 90.5, 181.0),
    (r"L4\b", 30.3, 60.0, 121.0),
    (r"RTX 4090", 82.6, 82.6, 165.2),
    (r"RTX 3090", 35.6, 35.6, 71.0),
    (r"V100.*PCIE", 14.0, None, None),
    (r"V100", 15.7, None, None),
    (r"\bT4\b", 8.1, None, None),
)


class BenchUsageError(Exception):
    """Bad arguments: reported as one line and exit status 2."""


# ---- settings ------------------------------------------------------------------------------------------------------
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchUsageError(message)


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, smallest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < smallest:
        raise argparse.ArgumentTypeError(f"must be at least {smallest}, got {value}")
    return value


def _positive_float(text: str) -> float:
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
    parser = _Parser(prog="spp-cls bench", description="Throughput of models, data path and harness.",
                     epilog="Defaults on CUDA: batch 128, warmup 10, steps 50; on a CPU: batch 32, warmup 2, steps 5.")
    parser.add_argument("--model", nargs="+", action="extend", metavar="NAME",
                        help=f"networks to measure (default: {' '.join(DEFAULT_MODELS)}); see `spp-cls models`")
    parser.add_argument("--sizes", type=_sizes, default=(224, 180), help="training sizes, comma-separated")
    parser.add_argument("--batch-size", type=_positive_int, help="images per step")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (a small synthetic shard set in a temp dir) or an output root of `spp-cls "
                             "shards`")
    parser.add_argument("--steps", type=_positive_int, help="timed steps per measurement")
    parser.add_argument("--warmup", type=_non_negative_int, help="untimed steps before each measurement")
    parser.add_argument("--width", type=_positive_float, default=1.0, help="width multiplier of the networks")
    parser.add_argument("--workers", type=_non_negative_int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes of the data path")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="32", help="bf16: autocast, fp32 weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (one graph per size)")
    parser.add_argument("--decode", choices=("cpu", "device"), default="cpu",
                        help="where training JPEGs are decoded: in the loader workers, or batched on the device "
                             "(data.decode); run both on a GPU node to choose")
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
    if args.out is not None and not args.out.parent.is_dir():
        raise BenchUsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    return BenchSettings(
        models=tuple(model_spec(name) for name in dict.fromkeys(args.model or DEFAULT_MODELS)),
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
    )


# ---- device --------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_flops(name: str, precision: str) -> tuple[float | None, str | None]:
    """Datasheet peak FLOP/s of a CUDA card for the math the run uses, and which peak it is (fp32, tf32, bf16).

    fp32 runs use the TF32 peak when cuDNN may use TF32 (PyTorch's default for convolutions, which dominate these
    nets); None when the card is not in PEAK_TFLOPS or lacks the precision.
    """
    for pattern, fp32, tf32, bf16 in PEAK_TFLOPS:
        if re.search(pattern, name):
            if precision == "bf16":
                return (bf16 * 1e12, "bf16") if bf16 else (None, None)
            if tf32 and torch.backends.cudnn.allow_tf32:
                return tf32 * 1e12, "tf32"
            return fp32 * 1e12, "fp32"
    return None, None


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# ---- timing --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def timed_steps(step: Callable[[Batch], int], batches: Iterator[Batch], warmup: int, steps: int,
                device: torch.device) -> Timing:
    """Run `warmup` untimed then `steps` timed calls of `step` (which returns the images it took) on `batches`.

    Fetching each timed batch counts, so a loader's speed shows when the step is fed from one.
    """
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    started = time.perf_counter()
    images = sum(step(next(batches)) for _ in range(steps))
    synchronize(device)
    return Timing(images, time.perf_counter() - started)


class TrainStep:
    """Forward + cross-entropy + backward + SGD step of a `SppClassifier`, without Lightning.

    The same arithmetic as `SppClassifier.training_step` under Lightning's automatic optimisation: the module's own
    input processing and network, its optimiser settings (linearly scaled learning rate), autocast for bf16.
    """

    def __init__(self, module: SppClassifier, size: int, batch_size: int, precision: str,
                 device: torch.device) -> None:
        hp = module.hparams
        self.module = module
        self.size = size
        self.precision = precision
        self.device = device
        self.optimizer = torch.optim.SGD(module.parameters(), lr=hp.lr * batch_size / hp.reference_batch,
                                         momentum=hp.momentum, weight_decay=hp.weight_decay)

    def __call__(self, batch: Batch) -> int:
        images, labels = (tensor.to(self.device, non_blocking=True) for tensor in batch)
        with autocast(self.device, self.precision):
            loss = F.cross_entropy(self.module(images, size=self.size, train=True), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return labels.numel()


def random_batches(batch_size: int, num_classes: int, device: torch.device, count: int = DISTINCT_BATCHES,
                   seed: int = 0) -> list[Batch]:
    """uint8 224 crops and labels, made once on `device` (what the data path hands over)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 256, (batch_size, 3, CROP, CROP), dtype=torch.uint8, generator=generator).to(device),
         torch.randint(0, num_classes, (batch_size,), generator=generator).to(device))
        for _ in range(count)
    ]


def cycle(batches: Sequence[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


# ---- FLOPs ---------------------------------------------------------------------------------------------------------
def count_flops(spec: ModelSpec, width: float, size: int, num_classes: int = NUM_CLASSES) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs per image at `size`, counted on the meta device (no compute).

    The backward omits the input gradient of the first layer, as in training, so it is a little under 2x forward.
    Raises ValueError when the network does not take `size` (a no-SPP net at 180, too small an input).
    """
    with torch.device("meta"):
        net = create(spec.backbone, spec.head, num_classes=num_classes, width=width)
        images = torch.empty(1, 3, size, size)
        labels = torch.zeros(1, dtype=torch.int64)
    with FlopCounterMode(display=False) as forward:
        loss = F.cross_entropy(net(images), labels)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), forward.get_total_flops() + backward.get_total_flops()


# ---- data ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    root: Path
    description: str


def synthetic_shards(work: Path, batch_size: int, workers: int) -> DataSource:
    """A small synthetic ImageNet folder of real JPEGs converted to shards (the train stream resamples it)."""
    per_class = max(4, math.ceil(2 * batch_size / SYNTHETIC_CLASSES))
    total = per_class * SYNTHETIC_CLASSES
    make_imagenet_folder(work / "images", num_classes=SYNTHETIC_CLASSES, train_per_class=per_class, val_per_class=1,
                         seed=0, shorter_side_range=(256, 384))
    shard_size = max(1, total // max(8, 2 * workers))
    convert(work / "images", work / "shards", shard_size=shard_size, workers=max(1, min(workers, os.cpu_count() or 1)),
            seed=0)
    shards = math.ceil(total / shard_size)
    return DataSource(work / "shards", f"synthetic ({total} JPEGs in {shards} shards)")


def open_datamodule(source: DataSource, batch_size: int, workers: int, decode: str = "cpu") -> ShardDataModule:
    try:
        datamodule = ShardDataModule(str(source.root), batch_size=batch_size, num_workers=workers, decode=decode)
        datamodule.train_batches_per_rank(1)
    except ValueError as error:
        raise BenchUsageError(f"--data {source.root}: {str(error).splitlines()[0]}") from None
    return datamodule


def shard_batches(datamodule: ShardDataModule, count: int, device: torch.device) -> Iterator[Batch]:
    """`count` training batches of epoch 0 from one set of loader workers (the train stream is endless, resampled);
    with decode=device each batch is decoded, cropped and flipped on `device` here, as in training."""
    for batch in datamodule.train_loader(epoch=0).with_epoch(nbatches=count):
        yield decode_train_batch(batch, device, datamodule.decode_budget) if isinstance(batch, JpegBatch) else batch


# ---- Lightning harness ---------------------------------------------------------------------------------------------
class _InMemoryData(pl.LightningDataModule):
    """The datamodule interface `SppClassifier` reads during fit, over a fixed list of batches."""

    def __init__(self, batches: list[Batch], batch_size: int) -> None:
        super().__init__()
        self.batches = batches
        self.batch_size = batch_size
        self.mean_rgb = IMAGENET_MEAN_RGB
        self.pca_eigval = list(IMAGENET_PCA_EIGVAL_255)
        self.pca_eigvec = [list(row) for row in IMAGENET_PCA_EIGVEC]

    def train_dataloader(self) -> _BatchList:
        return _BatchList(self.batches)


class _BatchList:
    """An iterable over fixed batches (a plain list would be read by Lightning as a list of dataloaders)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _StepClock(pl.Callback):
    """Clock reads at the same points as `timed_steps`: before timed batch 0 runs, after the last one finished."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.started = self.finished = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            synchronize(self.device)
            self.finished = time.perf_counter()


def lightning_timing(module: SppClassifier, batches: list[Batch], settings: BenchSettings, device: torch.device,
                     work: Path) -> Timing:
    """Train `module` on `batches` with `SppClassifier.training_step` in a real Trainer; time the post-warm-up steps."""
    clock = _StepClock(settings.warmup, settings.steps, device)
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the accelerator lines and tips Lightning prints on every run
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=QUIET_LIGHTNING_WARNINGS)
            trainer = pl.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                precision=PRECISIONS[settings.precision], max_epochs=1, limit_train_batches=len(batches),
                limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, benchmark=device.type == "cuda",
                use_distributed_sampler=False, callbacks=[clock], default_root_dir=str(work),
            )
            trainer.fit(module, datamodule=_InMemoryData(batches, settings.batch_size))
    finally:
        lightning_log.setLevel(level)
    module.to(device)  # Lightning's teardown moves the module back to the CPU
    if clock.finished <= clock.started:
        raise RuntimeError(f"the Lightning run did not train the {len(batches)} batches it was given")
    return Timing(settings.steps * settings.batch_size, clock.finished - clock.started)


def harness_overhead(module: SppClassifier, size: int, settings: BenchSettings, device: torch.device,
                     work: Path) -> dict[str, Any]:
    """Lightning / bare loop on identical batches, best of two alternating rounds each (bare, L, L, bare)."""
    distinct = random_batches(settings.batch_size, NUM_CLASSES, device, seed=1)
    batches = [distinct[i % len(distinct)] for i in range(settings.warmup + settings.steps)]
    bare: list[float] = []
    lightning: list[float] = []
    for runner in ("bare", "lightning", "lightning", "bare"):
        if runner == "bare":
            step = TrainStep(module, size, settings.batch_size, settings.precision, device)
            bare.append(timed_steps(step, iter(batches), settings.warmup, settings.steps, device).images_per_s)
        else:
            lightning.append(lightning_timing(module, batches, settings, device, work).images_per_s)
    return {"bare_images_per_s": max(bare), "lightning_images_per_s": max(lightning),
            "ratio": max(lightning) / max(bare), "target": HARNESS_TARGET, "bare_rounds": bare,
            "lightning_rounds": lightning}


# ---- 10-view test --------------------------------------------------------------------------------------------------
def tenview_speed(spec: ModelSpec, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Test images/s of the 10 crops (one batch of views, as the test loader gives) against `tenview_fmap`."""
    module = SppClassifier(spec.backbone, spec.head, num_classes=NUM_CLASSES, width=settings.width,
                           channels_last=settings.channels_last).to(device).eval()
    per_batch = max(1, settings.batch_size // 10)  # the datamodule's test batch for 10 views
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (per_batch, 3, TEST_SHORTER_SIDE, TENVIEW_IMAGE_WIDTH), dtype=torch.uint8,
                           generator=generator).to(device)
    views = torch.stack([ten_views(image) for image in images])
    labels = torch.zeros(per_batch, dtype=torch.int64, device=device)

    def crops(batch: Batch) -> int:
        module.view_scores(batch[0])
        return len(batch[0])

    def feature_maps(batch: Batch) -> int:
        for image in batch[0]:
            module.tenview_fmap_scores(image[None])
        return len(batch[0])

    warmup = max(1, settings.warmup)
    with torch.inference_mode(), autocast(device, settings.precision):
        crop_timing = timed_steps(crops, cycle([(views, labels)]), warmup, settings.steps, device)
        fmap_timing = timed_steps(feature_maps, cycle([(images, labels)]), warmup, settings.steps, device)
    return {"model": spec.name, "images": crop_timing.images, "crops_images_per_s": crop_timing.images_per_s,
            "fmap_images_per_s": fmap_timing.images_per_s,
            "fmap_speedup": fmap_timing.images_per_s / crop_timing.images_per_s}


# ---- the run -------------------------------------------------------------------------------------------------------
def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def build_module(spec: ModelSpec, size: int, settings: BenchSettings, num_classes: int,
                 device: torch.device) -> SppClassifier:
    torch.manual_seed(0)
    module = SppClassifier(spec.backbone, spec.head, num_classes=num_classes, width=settings.width,
                           size_schedule="fixed", train_sizes=(size, size), channels_last=settings.channels_last,
                           compile=settings.compile)
    return module.to(device).train()


def measure_model(spec: ModelSpec, settings: BenchSettings, datamodule: ShardDataModule, num_classes: int,
                  device: torch.device, peak: float | None, work: Path, with_harness: bool,
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """Rows (one per size the network takes), skipped sizes, and (`with_harness`) the harness overhead at its first
    size."""
    rows, skipped = [], []
    module: SppClassifier | None = None
    harness: dict[str, Any] | None = None
    for size in settings.sizes:
        try:
            forward_flops, train_flops = count_flops(spec, settings.width, size, num_classes)
        except ValueError as error:
            skipped.append({"model": spec.name, "size": size, "reason": str(error).splitlines()[0]})
            continue
        if module is None:
            module = build_module(spec, size, settings, num_classes, device)
        step = TrainStep(module, size, settings.batch_size, settings.precision, device)
        _progress(f"{spec.name} at {size}: model only")
        model = timed_steps(step, cycle(random_batches(settings.batch_size, num_classes, device)), settings.warmup,
                            settings.steps, device)
        _progress(f"{spec.name} at {size}: fed from shards")
        fed_warmup = max(settings.warmup, prefetched_batches(settings.workers))
        fed = timed_steps(step, shard_batches(datamodule, fed_warmup + settings.steps, device), fed_warmup,
                          settings.steps, device)
        achieved = train_flops * model.images_per_s
        rows.append({
            "model": spec.name, "size": size, "batch_size": settings.batch_size, "steps": settings.steps,
            "model_images_per_s": model.images_per_s, "model_seconds": model.seconds,
            "step_ms": 1e3 * model.seconds / settings.steps,
            "forward_flops_per_image": forward_flops, "train_flops_per_image": train_flops,
            "achieved_flops_per_s": achieved, "mfu": achieved / peak if peak else None,
            "shards_images_per_s": fed.images_per_s, "shards_seconds": fed.seconds,
        })
        if with_harness and harness is None:
            _progress(f"{spec.name} at {size}: harness (bare loop vs Lightning Trainer)")
            harness = {"model": spec.name, "size": size, "steps": settings.steps,
                       **harness_overhead(module, size, settings, device, work)}
    return rows, skipped, harness


def prefetched_batches(workers: int) -> int:
    """Warm-up steps that drain what the loader workers prefetched while starting (prefetch_factor 2 each), so that
    a timed window fed from shards sees the steady state, not a queue filled while the first steps compiled."""
    return 1 + 2 * max(1, workers)


def measure_data_path(datamodule: ShardDataModule, source: DataSource, settings: BenchSettings,
                      device: torch.device) -> dict[str, Any]:
    """Images/s of shards -> uint8 batches alone, with the settings' loader workers."""
    # The window spans several batches per worker and at least DATA_PATH_IMAGES.
    warmup = prefetched_batches(settings.workers)
    batches = max(settings.steps, 5 * max(1, settings.workers), math.ceil(DATA_PATH_IMAGES / settings.batch_size))
    timing = timed_steps(lambda batch: len(batch[1]), shard_batches(datamodule, warmup + batches, device), warmup,
                         batches, device)
    return {"source": source.description, "workers": settings.workers, "batch_size": settings.batch_size,
            "decode": settings.decode,
            "batches": batches, "images": timing.images, "seconds": timing.seconds,
            "images_per_s": timing.images_per_s}


def run_bench(settings: BenchSettings) -> dict[str, Any]:
    """Every measurement of the settings; the report as `--out` writes it."""
    device = torch.device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = device_name(device)
    peak, peak_basis = peak_flops(name, settings.precision) if device.type == "cuda" else (None, None)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    harness: dict[str, Any] | None = None
    tenview: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spp-cls-bench-") as temp:
        work = Path(temp)
        if settings.data == "synthetic":
            _progress("writing a synthetic shard set")
            source = synthetic_shards(work, settings.batch_size, settings.workers)
        else:
            source = DataSource(Path(settings.data), settings.data)
        datamodule = open_datamodule(source, settings.batch_size, settings.workers, settings.decode)
        num_classes = max(NUM_CLASSES, datamodule.num_classes)
        _progress(f"data path ({settings.workers} workers)")
        data = measure_data_path(datamodule, source, settings, device)
        for spec in settings.models:
            if settings.compile:
                from torch import _dynamo  # loaded only when compiling

                _dynamo.reset()  # each network's graphs start from a clean cache (recompile limit)
            spec_rows, spec_skipped, spec_harness = measure_model(spec, settings, datamodule, num_classes, device,
                                                                  peak, work, with_harness=harness is None)
            rows += spec_rows
            skipped += spec_skipped
            harness = harness or spec_harness
            if spec.backbone in TRUNKS and spec.head == "spp":
                _progress(f"{spec.name}: 10-view test, crops vs feature maps")
                tenview.append(tenview_speed(spec, settings, device))
    for row in rows:
        row["data_over_model"] = data["images_per_s"] / row["model_images_per_s"]
        row["limited_by"] = "data-bound" if row["data_over_model"] < 1 else "compute-bound"
    plain_settings = {key: value for key, value in asdict(settings).items() if key not in ("models", "out")}
    return {
        "settings": {**plain_settings, "models": [spec.name for spec in settings.models],
                     "sizes": list(settings.sizes)},
        "device": {"type": device.type, "name": name, "threads": torch.get_num_threads(),
                   "peak_flops_per_s": peak, "peak_basis": peak_basis},
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__,
                     "python": platform.python_version()},
        "data_path": data,
        "rows": rows,
        "skipped": skipped,
        "harness": harness,
        "tenview": tenview,
    }


# ---- report --------------------------------------------------------------------------------------------------------
COLUMNS = ("model", "size", "batch", "model img/s", "step ms", "fwd GFLOP/img", "train GFLOP/img", "TFLOP/s", "MFU",
           "shards img/s", "data/model", "limited by")


def _cells(row: dict[str, Any]) -> tuple[str, ...]:
    mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    return (row["model"], str(row["size"]), str(row["batch_size"]), f"{row['model_images_per_s']:.1f}",
            f"{row['step_ms']:.1f}", f"{row['forward_flops_per_image'] / 1e9:.3f}",
            f"{row['train_flops_per_image'] / 1e9:.3f}", f"{row['achieved_flops_per_s'] / 1e12:.3f}", mfu,
            f"{row['shards_images_per_s']:.1f}", f"{row['data_over_model']:.2f}", row["limited_by"])


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """One line per (network, size): text columns left-aligned, numbers right-aligned."""
    cells = [COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    text_columns = (0, len(COLUMNS) - 1)
    lines = ["  ".join(cell.ljust(width) if i in text_columns else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _header(report: dict[str, Any]) -> list[str]:
    settings, device, data = report["settings"], report["device"], report["data_path"]
    switches = ", ".join(f"{switch} {'on' if settings[switch] else 'off'}" for switch in ("channels_last", "compile"))
    workers = f"{data['workers']} worker{'' if data['workers'] == 1 else 's'}"
    return [
        (f"device: {device['type']} ({device['name']}, {device['threads']} threads), torch "
         f"{report['versions']['torch']}; precision {settings['precision']}, {switches}, width {settings['width']:g}, "
         f"warmup {settings['warmup']}, steps {settings['steps']}"),
        (f"data path: {data['images_per_s']:.1f} img/s (shards -> uint8 batches of {data['batch_size']}, {workers}, "
         f"JPEG decode on {'the device' if data['decode'] == 'device' else 'the workers'}, "
         f"{data['batches']} batches; {data['source']})"),
    ]


def _peak_note(report: dict[str, Any]) -> list[str]:
    device, precision = report["device"], report["settings"]["precision"]
    if device["type"] != "cuda":
        return []
    if device["peak_flops_per_s"] is None:
        return [f"MFU: no {precision} peak for {device['name']!r} in spp_cls.bench.PEAK_TFLOPS"]
    peak = device["peak_flops_per_s"] / 1e12
    return [f"MFU against the {device['peak_basis']} datasheet peak of {device['name']}, {peak:.1f} TFLOP/s"]


def _ratio_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    harness, data_rate = report["harness"], report["data_path"]["images_per_s"]
    if harness is not None:
        lines.append(f"harness / bare: {harness['ratio']:.3f} (SppClassifier in a Lightning Trainer "
                     f"{harness['lightning_images_per_s']:.1f} img/s, bare loop {harness['bare_images_per_s']:.1f} "
                     f"img/s; {harness['model']} at {harness['size']}; target >= {harness['target']})")
    for row in report["rows"]:
        lines.append(f"data / model: {row['data_over_model']:.2f} for {row['model']} at {row['size']} "
                     f"({data_rate:.1f} / {row['model_images_per_s']:.1f} img/s): {row['limited_by']}")
    for item in report["tenview"]:
        lines.append(f"10-view test: {item['model']} crops {item['crops_images_per_s']:.1f} img/s, on feature maps "
                     f"{item['fmap_images_per_s']:.1f} img/s ({item['fmap_speedup']:.2f}x)")
    return lines


def format_report(report: dict[str, Any]) -> str:
    skipped = [f"skipped: {item['model']} at {item['size']}: {item['reason']}" for item in report["skipped"]]
    return "\n".join([*_header(report), "", format_table(report["rows"]), *skipped, *_peak_note(report), "",
                      *_ratio_lines(report)])


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except BenchUsageError as error:
        print(f"spp-cls bench: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    try:
        report = run_bench(settings)
    except BenchUsageError as error:
        print(f"spp-cls bench: error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    if settings.out is not None:
        settings.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {settings.out}")
    return 0
