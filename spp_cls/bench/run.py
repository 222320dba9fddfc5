"""Every measurement of a bench run, assembled into the report that `--out` writes."""
from __future__ import annotations

import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..data.stream.datamodule import ShardDataModule
from ..models import TRUNKS
from ..train.module import SppClassifier
from .data import DataSource, measure_data_path, open_datamodule, prefetched_batches, shard_batches, synthetic_shards
from .device import device_name, peak_flops
from .flops import count_flops
from .harness import bare_train_step, harness_overhead
from .settings import NUM_CLASSES, BenchSettings, ModelSpec
from .tenview import tenview_speed
from .timing import cycle, random_batches, timed_steps


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
        step = bare_train_step(module, size, settings.batch_size, settings.precision, device)
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
        datamodule = open_datamodule(source, settings.batch_size, settings.workers, settings.decode,
                                     settings.decode_backend)
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
