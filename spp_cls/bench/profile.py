"""`spp-cls bench --profile`: where the model-only training step spends its time, by kernel family and by kernel.

torch.profiler records `--steps` steps (after `--warmup` untimed ones) of exactly the step the bench times: uint8
crops -> on-device resize, colour noise and mean -> network -> cross-entropy -> backward -> SGD step. On a CPU each
ATen op's self CPU time is attributed to a family by its name; on CUDA the device time of the kernels each op
launched. A Chrome trace of the recorded steps is written for chrome://tracing or https://ui.perfetto.dev.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

from .device import synchronize
from .harness import bare_train_step
from .lrn_check import swap_in_old_lrn
from .run import build_module
from .settings import NUM_CLASSES, BenchSettings, ModelSpec
from .timing import cycle, random_batches, timed_steps

FAMILIES = ("convolution", "matmul", "pooling", "LRN/elementwise", "optimizer", "copies and casts", "other")
TOP_KERNELS = 15
# (family, pattern on the lowercased op or kernel name); the first match wins. Average pooling appears in these
# networks only inside the LRNs, so it counts as LRN. Inductor's fused kernels (triton_poi/red/per_*) are elementwise
# unless they fuse a max pool; their names mention "convolution" for a fused bias, so the convolution rule skips them.
# cuDNN's convolution kernels are implicit GEMMs: the convolution rule comes before the matmul one.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((family, re.compile(pattern)) for family, pattern in (
    ("optimizer", r"^optimizer\.(step|zero_grad)|_foreach_|fused_sgd"),
    ("copies and casts", r"^aten::(copy_|_to_copy|to|clone|contiguous|fill_|zero_|constant_pad_nd|"
                         r"_local_scalar_dense)$|memcpy|memset"),
    ("convolution", r"^(?!triton_(poi|red|per)_).*(conv|fprop|dgrad|wgrad|implicit_gemm)"),
    ("matmul", r"^aten::(mm|addmm|bmm|matmul|linear)$|gemm|^triton_tem_.*mm"),
    ("pooling", r"max_pool|adaptive_max"),
    ("LRN/elementwise", r"avg_pool|localresponsenorm|relu|threshold|dropout|bernoulli|^triton_(poi|red|per)_|"
                        r"^aten::(mul|add|sub|div|pow|addcmul|addcdiv|neg|exp|sqrt|rsqrt|reciprocal|where|clamp|"
                        r"sum|mean)_?$"),
))


def family_of(name: str) -> str:
    """The kernel family of an op or kernel name (see `_RULES`); "other" when no rule matches."""
    lowered = name.lower()
    return next((family for family, pattern in _RULES if pattern.search(lowered)), "other")


def _family_in_context(event: FunctionEvent) -> str:
    """An op inside the optimiser's step or zero_grad counts as optimizer whatever it is (the single-tensor SGD is
    add_/mul_)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            return "optimizer"
        parent = parent.cpu_parent
    return family_of(event.name)


def _host_ops(events: list[FunctionEvent]) -> list[FunctionEvent]:
    """Ops and annotated regions run by the host (the optimiser's Python time sits in its annotation's self time)."""
    return [event for event in events if event.device_type == torch.autograd.DeviceType.CPU and not event.is_async]


def _device_microseconds(events: list[FunctionEvent]) -> float:
    return sum(event.time_range.elapsed_us() for event in events
               if event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation)


def breakdown(events: list[FunctionEvent], steps: int, on_device: bool) -> dict[str, Any]:
    """Milliseconds per step by family and the top kernels, from the profiler's events.

    CPU: every op's self CPU time, attributed to the op. CUDA: every kernel's device time, attributed to the op that
    launched it (the family of that op, or of the kernel's name when the launcher says nothing, as in compiled code).
    """
    families: dict[str, float] = dict.fromkeys(FAMILIES, 0.0)
    kernels: dict[str, dict[str, Any]] = {}
    for event in _host_ops(events):
        family = _family_in_context(event)
        if on_device:
            timed = [(kernel.name, kernel.duration) for kernel in event.kernels]
        else:
            timed = [(event.name, event.self_cpu_time_total)]
        for name, microseconds in timed:
            kernel_family = family if family != "other" else family_of(name)
            families[kernel_family] += microseconds
            entry = kernels.setdefault(f"{name} {kernel_family}",
                                       {"name": name, "family": kernel_family, "calls": 0, "us": 0.0})
            entry["calls"] += 1
            entry["us"] += microseconds
    if on_device:  # kernels no host op claims (none expected): counted, as "other", so that the total is right
        families["other"] += max(_device_microseconds(events) - sum(families.values()), 0.0)
    total = sum(families.values())
    top = sorted(kernels.values(), key=lambda entry: entry["us"], reverse=True)[:TOP_KERNELS]
    return {
        "profiled_ms_per_step": total / 1e3 / steps,
        "families_ms_per_step": {family: microseconds / 1e3 / steps for family, microseconds in families.items()},
        "top_kernels": [{"name": entry["name"], "family": entry["family"], "calls_per_step": entry["calls"] / steps,
                         "ms_per_step": entry["us"] / 1e3 / steps, "share": entry["us"] / total if total else 0.0}
                        for entry in top],
    }


def trace_path(settings: BenchSettings, spec: ModelSpec, size: int) -> Path:
    """Next to --out (named after it) when given, else in the current directory."""
    variant = f"{spec.name}-{size}{'-old-lrn' if settings.old_lrn else ''}"
    if settings.out is not None:
        return settings.out.with_name(f"{settings.out.stem}.{variant}.trace.json")
    return Path.cwd() / f"spp-cls-profile.{variant}.trace.json"


def profile_step(spec: ModelSpec, size: int, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Profile `settings.steps` model-only training steps of `spec` at `size`; write their Chrome trace."""
    module = build_module(spec, size, settings, NUM_CLASSES, device)
    if settings.old_lrn:
        swap_in_old_lrn(module.net)
    step = bare_train_step(module, size, settings.batch_size, settings.precision, device)
    batches = cycle(random_batches(settings.batch_size, NUM_CLASSES, device))
    # the unprofiled window: warm-up (and compilation), then the wall time of the steps the profile records
    wall = timed_steps(step, batches, max(settings.warmup, 1), settings.steps, device)
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_device else [])]
    with profile(activities=activities) as recorded:
        for _ in range(settings.steps):
            step(next(batches))
        synchronize(device)
    trace = trace_path(settings, spec, size)
    recorded.export_chrome_trace(str(trace))
    return {"model": spec.name, "size": size, "batch_size": settings.batch_size, "steps": settings.steps,
            "old_lrn": settings.old_lrn, "time": "cuda" if on_device else "cpu",
            "wall_ms_per_step": 1e3 * wall.seconds / settings.steps,
            **breakdown(list(recorded.events()), settings.steps, on_device), "trace": str(trace)}


def run_profile(settings: BenchSettings) -> dict[str, Any]:
    device = torch.device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    profiles = []
    for spec in settings.models:
        for size in settings.sizes:
            print(f"bench: profiling {spec.name} at {size}", file=sys.stderr, flush=True)
            profiles.append(profile_step(spec, size, settings, device))
    return {"settings": {"precision": settings.precision, "channels_last": settings.channels_last,
                         "compile": settings.compile, "width": settings.width, "device": settings.device},
            "profiles": profiles}


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], text_columns: int = 1) -> list[str]:
    """Rows under a header: the first `text_columns` columns left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < text_columns else cell.rjust(width) for i, (cell, width)
                       in enumerate(zip(row, widths))).rstrip() for row in (header, *rows)]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def format_profile(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [f"profile: precision {settings['precision']}, channels_last {'on' if settings['channels_last'] else 'off'}"
             f", compile {'on' if settings['compile'] else 'off'}, width {settings['width']:g}"]
    for item in report["profiles"]:
        total = item["profiled_ms_per_step"]
        lrn = ", old LRN formula" if item["old_lrn"] else ""
        lines += ["", f"{item['model']} at {item['size']}, batch {item['batch_size']}{lrn}: {item['time'].upper()} "
                      f"time {total:.2f} ms per step profiled over {item['steps']} steps (wall, unprofiled: "
                      f"{item['wall_ms_per_step']:.2f} ms)"]
        families = item["families_ms_per_step"]
        lines += _table(("family", "ms/step", "share"),
                        [(family, f"{ms:.3f}", f"{100 * ms / total if total else 0:.1f}%")
                         for family, ms in families.items()])
        lines += ["", f"top {len(item['top_kernels'])} kernels"]
        lines += _table(("kernel", "family", "calls/step", "ms/step", "share"),
                        [(entry["name"][:90], entry["family"], f"{entry['calls_per_step']:g}",
                          f"{entry['ms_per_step']:.3f}", f"{100 * entry['share']:.1f}%")
                         for entry in item["top_kernels"]], text_columns=2)
        lines.append(f"trace: {item['trace']}")
    return "\n".join(lines)
