"""Local response normalisation as used by the four SPP-net trunks.

PyTorch only ships cross-channel LRN (`nn.LocalResponseNorm`), while the authors' released ZF-5 model
(`Zeiler_conv5.prototxt`) normalises within each channel over a spatial window, as Caffe's WITHIN_CHANNEL mode:
    y = x * (1 + alpha / n^2 * sum_{n x n window} x^2) ^ (-beta),
with the window zero-padded at the borders (Caffe averages over the padded window, so the divisor is always n^2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WithinChannelLRN(nn.Module):
    """Caffe's WITHIN_CHANNEL local response normalisation (defaults: the released ZF-5 model)."""

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"within-channel LRN needs an odd window size, got {size}")
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # avg_pool2d with count_include_pad=True divides by n^2 everywhere, the zero-padded window sum / n^2.
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def cross_channel_lrn() -> nn.LocalResponseNorm:
    """AlexNet's cross-channel LRN (size 5, alpha 1e-4, beta 0.75, k 2), in PyTorch's (= Caffe's) alpha/n form."""
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
