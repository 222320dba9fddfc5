"""On-device input processing: uint8 crops -> the epoch's size, AlexNet PCA colour noise, mean subtraction.

The data pipeline hands over uint8 224x224 crops; everything in float happens here, on the accelerator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol import IMAGENET_PIXEL_STATISTICS, PixelStatistics


class InputTransform(nn.Module):
    """uint8 NCHW -> float, resized (antialiased bilinear), PCA colour noise (train), per-channel mean subtracted.

    PCA colour noise (AlexNet, section 4.1): add sum_i alpha_i * lambda_i * p_i to every pixel, alpha_i ~ N(0, std).
    lambda_i are the eigenvalues of the RGB covariance of pixels in [0, 1] (the scale the widely used
    implementations take), so in 0-255 scale the shift is alpha_i * lambda255_i / 255.
    """

    def __init__(self, pca_std: float = 0.1, statistics: PixelStatistics = IMAGENET_PIXEL_STATISTICS) -> None:
        super().__init__()
        self.pca_std = pca_std
        # buffers, so that a checkpoint carries the statistics its model was trained with
        self.register_buffer("mean_rgb", torch.tensor(statistics.mean_rgb))
        self.register_buffer("pca_eigval", torch.tensor(statistics.pca_eigval))
        self.register_buffer("pca_eigvec", torch.tensor(statistics.pca_eigvec))

    def color_shift(self, batch_size: int) -> torch.Tensor:
        """One RGB shift per image, (batch, 3), in 0-255 scale."""
        alpha = torch.randn(batch_size, 3, device=self.pca_eigval.device) * self.pca_std
        return (alpha * self.pca_eigval / 255.0) @ self.pca_eigvec

    def forward(self, images: torch.Tensor, size: int | None = None, train: bool = False) -> torch.Tensor:
        x = images.float()
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        shift = self.mean_rgb.expand(x.shape[0], 3)
        if train and self.pca_std > 0:
            shift = shift - self.color_shift(x.shape[0])
        return x - shift[:, :, None, None]
