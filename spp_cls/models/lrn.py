"""Local response normalisation as used by the four SPP-net trunks, each as one autograd operation.

Both modes compute Caffe's formula
    y = x / (k + alpha * mean of x^2 over a zero-padded window) ^ beta
with the mean's divisor always the full window size. The authors' released ZF-5 model (`Zeiler_conv5.prototxt`)
normalises WITHIN_CHANNEL over an n x n spatial window (k = 1); AlexNet and the other trunks ACROSS_CHANNELS over n
neighbouring channels (PyTorch's `nn.LocalResponseNorm`, which these forwards equal bit for bit in fp32).

Why one op: autograd over the plain formula saves three fp32 maps per LRN (x^2, the pooled mean, the power) and, as
`pow` is on CUDA autocast's fp32 list, hands fp32 to the pooling after it under bf16 autocast. `local_response_norm`
computes in fp32 internally, returns the input's dtype, saves only its input and recomputes the rest in backward.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Mode = Literal["within", "cross"]


def _autocast_off(device_type: str) -> AbstractContextManager[Any]:
    # The op chooses its own precision; autocast is not available for every device type (meta: FLOP counting).
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether the map's channels are its innermost axis in memory (and the map is not also plain contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _channel_window_mean(squares: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """Mean over `size` neighbouring channels (zero-padded), pooled along the axis that is contiguous in memory
    (`channels_last` says which), so that neither NCHW nor channels_last maps are copied into the other layout."""
    n, c, h, w = squares.shape
    if channels_last:
        pixels = squares.permute(0, 2, 3, 1).reshape(n, 1, h * w, c)
        pooled = F.avg_pool2d(pixels, (1, size), stride=1, padding=(0, size // 2))
        return pooled.view(n, h, w, c).permute(0, 3, 1, 2)
    planes = squares.reshape(n, 1, c, h * w)
    return F.avg_pool2d(planes, (size, 1), stride=1, padding=(size // 2, 0)).view(n, c, h, w)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least fp32 (bf16 and fp16 maps are computed in fp32, fp64 ones in fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def window_mean(squares: torch.Tensor, mode: Mode, size: int, channels_last: bool) -> torch.Tensor:
    """The zero-padded window mean of LRN's denominator. The window is symmetric (odd size), so this linear map is
    its own adjoint, which is what the backward below relies on."""
    if mode == "within":
        return F.avg_pool2d(squares, size, stride=1, padding=size // 2, count_include_pad=True)
    return _channel_window_mean(squares, size, channels_last)


class _LocalResponseNormFunction(torch.autograd.Function):
    """y = x * d^-beta with d = k + alpha * M(x^2) (M: the window mean).

    dL/dx = g * d^-beta - 2 * alpha * beta * x * M(g * x * d^-beta / d), M being self-adjoint.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mode: Mode, size: int, alpha: float, beta: float,
                k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        # The layout is read here, not in backward: a memory-format query there made dynamo abandon its first trace
        # of the backward with autocast left switched off, so the rest of a compiled net ran without autocast.
        channels_last = is_channels_last(x)
        ctx.lrn = (mode, size, alpha, beta, k, channels_last)
        with _autocast_off(x.device.type):
            x_wide = _wide(x)
            base = window_mean(x_wide * x_wide, mode, size, channels_last).mul_(alpha).add_(k)
            # the two multiplications of the formulas the trunks used so far: the fp32 forward stays bit for bit
            out = x_wide * base.pow_(-beta) if mode == "within" else x_wide / base.pow_(beta)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        mode, size, alpha, beta, k, channels_last = ctx.lrn
        with _autocast_off(x.device.type):
            x_wide = _wide(x)
            base = window_mean(x_wide * x_wide, mode, size, channels_last).mul_(alpha).add_(k)
            direct = _wide(grad) * base.pow(-beta)
            spread = window_mean(direct.mul(x_wide).div_(base), mode, size, channels_last)
            grad_x = torch.addcmul(direct, x_wide, spread, value=-2.0 * alpha * beta)
        return grad_x.to(x.dtype), None, None, None, None, None


def local_response_norm(x: torch.Tensor, mode: Mode, size: int, alpha: float, beta: float,
                        k: float) -> torch.Tensor:
    """Caffe's LRN of an (N, C, H, W) map in one autograd op (see the module docstring)."""
    if x.dim() != 4:
        raise ValueError(f"LRN takes (N, C, H, W) maps, got a tensor of shape {tuple(x.shape)}")
    return _LocalResponseNormFunction.apply(x, mode, size, alpha, beta, k)


class _LRN(nn.Module):
    mode: Mode

    def __init__(self, size: int, alpha: float, beta: float, k: float) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"{self.mode}-channel LRN needs an odd window size, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.mode, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class WithinChannelLRN(_LRN):
    """Caffe's WITHIN_CHANNEL LRN (defaults: the released ZF-5 model): y = x * (1 + alpha / n^2 * sum_{n x n} x^2)
    ^ -beta."""

    mode: Mode = "within"

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        super().__init__(size, alpha, beta, k=1.0)


class CrossChannelLRN(_LRN):
    """Caffe's ACROSS_CHANNELS LRN (defaults: AlexNet's size 5, alpha 1e-4, beta 0.75, k 2), alpha in the alpha / n
    form of Caffe and `nn.LocalResponseNorm`."""

    mode: Mode = "cross"

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__(size, alpha, beta, k)
