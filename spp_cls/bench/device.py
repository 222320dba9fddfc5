"""The device a bench runs on: its name, its datasheet peak FLOP/s, clock synchronisation, autocast."""
from __future__ import annotations

import platform
import re
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

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
