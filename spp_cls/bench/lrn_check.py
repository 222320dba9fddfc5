"""`spp-cls bench --lrn-check`: the one-op LRN against the formulas the trunks used before, in one run.

The baseline is autograd over the plain formulas: ZF-5's within-channel `x * (1 + alpha * avg_pool(x^2))^-beta` and
PyTorch's `nn.LocalResponseNorm` for the cross-channel LRN of the others. It lives here only, as the benchmark's
baseline. For each network and size the same weights train the model-only step with either LRN (best of three
alternating rounds each, see ROUNDS), and one forward counts the activation bytes autograd saves for backward.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CrossChannelLRN, WithinChannelLRN
from ..train.module import SppClassifier
from .device import autocast
from .harness import bare_train_step
from .run import build_module
from .settings import NUM_CLASSES, Batch, BenchSettings, BenchUsageError, ModelSpec
from .timing import cycle, random_batches, timed_steps

VARIANTS = ("old", "new")
ROUNDS = ("old", "new", "new", "old", "old", "new")
"""Timed rounds, alternating so that a drift of the machine's speed (a shared CPU) hits both alike; the best counts."""


class OldWithinChannelLRN(nn.Module):
    """The within-channel formula before the one-op LRN: autograd over x^2, avg_pool2d, pow and two products."""

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)


def swap_in_old_lrn(net: nn.Module) -> int:
    """Replace every LRN of `net` by its old formula (same settings) in place; returns how many were replaced."""
    targets = [(parent, name, child) for parent in net.modules() for name, child in parent.named_children()
               if isinstance(child, WithinChannelLRN | CrossChannelLRN)]
    for parent, name, child in targets:
        old = (OldWithinChannelLRN(child.size, child.alpha, child.beta) if isinstance(child, WithinChannelLRN)
               else nn.LocalResponseNorm(child.size, child.alpha, child.beta, child.k))
        setattr(parent, name, old)
    return len(targets)


def saved_activation_bytes(module: SppClassifier, batch: Batch, size: int, settings: BenchSettings,
                           device: torch.device) -> int:
    """Bytes of activations autograd keeps for the backward of one training forward: the distinct storages of the
    saved tensors (a ReLU output saved again by the LRN after it counts once), weights left out."""
    weights = {tensor.untyped_storage().data_ptr() for tensor in (*module.parameters(), *module.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    images, labels = batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(device, settings.precision):
        module.train_loss(images, labels, size)
    return sum(storages.values())


def _conv1_weight_gradient(module: SppClassifier, batch: Batch, size: int) -> torch.Tensor:
    """conv1's weight gradient of one fp32 loss (seeded: the same dropout and colour noise for both variants).

    In fp32 whatever --precision says: a bf16 step of a Gaussian-0.01 net differs from fp32 by tens of percent with
    either LRN, which would hide whether the two LRNs compute the same thing."""
    torch.manual_seed(0)
    module.zero_grad(set_to_none=True)
    loss = module.train_loss(*batch, size)
    loss.backward()
    gradient = module.net.trunk.conv1.weight.grad.detach().float().clone()
    module.zero_grad(set_to_none=True)
    return gradient


def check_model(spec: ModelSpec, size: int, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    new = build_module(spec, size, settings, NUM_CLASSES, device)
    old = build_module(spec, size, settings, NUM_CLASSES, device)  # seeded: the same weights
    if swap_in_old_lrn(old.net) == 0:
        raise BenchUsageError(f"--lrn-check: {spec.name} has no LRN (the paper's trunks zf5, convnet5, overfeat5 and "
                              "overfeat7 have)")
    modules = {"old": old, "new": new}
    batches = random_batches(settings.batch_size, NUM_CLASSES, device)
    gradients = {variant: _conv1_weight_gradient(modules[variant], batches[0], size)
                 for variant in VARIANTS}
    steps: dict[str, Callable[[Batch], int]] = {
        variant: bare_train_step(modules[variant], size, settings.batch_size, settings.precision, device)
        for variant in VARIANTS}
    rounds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for variant in ROUNDS:
        print(f"bench: {spec.name} at {size}: {variant} LRN", file=sys.stderr, flush=True)
        timing = timed_steps(steps[variant], cycle(batches), settings.warmup, settings.steps, device)
        rounds[variant].append(1e3 * timing.seconds / settings.steps)
    saved = {variant: saved_activation_bytes(modules[variant], batches[0], size, settings, device)
             / settings.batch_size
             for variant in VARIANTS}
    step_ms = {variant: min(rounds[variant]) for variant in VARIANTS}
    difference = (gradients["new"] - gradients["old"]).abs().max() / gradients["old"].abs().max()
    return {"model": spec.name, "size": size, "batch_size": settings.batch_size, "steps": settings.steps,
            "old_step_ms": step_ms["old"], "new_step_ms": step_ms["new"], "old_rounds_ms": rounds["old"],
            "new_rounds_ms": rounds["new"], "speedup": step_ms["old"] / step_ms["new"],
            "old_activation_bytes_per_image": saved["old"], "new_activation_bytes_per_image": saved["new"],
            "saved_ratio": saved["new"] / saved["old"], "conv1_grad_difference": float(difference)}


def run_lrn_check(settings: BenchSettings) -> dict[str, Any]:
    device = torch.device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = [check_model(spec, size, settings, device) for spec in settings.models for size in settings.sizes]
    return {"settings": {"precision": settings.precision, "channels_last": settings.channels_last,
                         "compile": settings.compile, "width": settings.width, "device": settings.device,
                         "threads": torch.get_num_threads()},
            "rows": rows}


def format_lrn_check(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [f"LRN check on {settings['device']} ({settings['threads']} threads): precision {settings['precision']}, "
             f"channels_last {'on' if settings['channels_last'] else 'off'}, compile "
             f"{'on' if settings['compile'] else 'off'}, width {settings['width']:g}; old = autograd over the plain "
             "formula, new = the one-op LRN"]
    for row in report["rows"]:
        lines += [
            f"{row['model']} at {row['size']}, batch {row['batch_size']}, {row['steps']} steps:",
            f"  training step: old {row['old_step_ms']:.1f} ms, new {row['new_step_ms']:.1f} ms: old / new "
            f"{row['speedup']:.3f}",
            f"  activations saved for backward per image: old {row['old_activation_bytes_per_image'] / 1e6:.2f} MB, "
            f"new "
            f"{row['new_activation_bytes_per_image'] / 1e6:.2f} MB: new / old {row['saved_ratio']:.3f}",
            f"  conv1 weight gradient in fp32, max |new - old| / max |old|: {row['conv1_grad_difference']:.2e}",
        ]
    return "\n".join(lines)
