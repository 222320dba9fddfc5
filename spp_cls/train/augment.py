"""On-device input processing: uint8 crops -> the epoch's size, AlexNet PCA colour noise, mean subtraction.

The data pipeline hands over uint8 224x224 crops; everything in float happens here, on the accelerator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Fallback statistics (ImageNet, 0-255 scale) used only when no train manifest is at hand, e.g. a bare model
# evaluated outside the datamodule. Runs read theirs from the train manifest, and checkpoints carry them.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_PCA_EIGVAL_255 = (14144.0, 1222.5, 292.6)  # covariance eigenvalues in 0-255 scale (0.2175, 0.0188, 0.0045 x 255^2)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class InputTransform(nn.Module):
    """uint8 NCHW -> float, resized (antialiased bilinear), PCA colour noise (train), per-channel mean subtracted.

    PCA colour noise (AlexNet, section 4.1): add sum_i alpha_i * lambda_i * p_i to every pixel, alpha_i ~ N(0, std).
    lambda_i are the eigenvalues of the RGB covariance of pixels in [0, 1] (the scale the widely used
    implementations take), so in 0-255 scale the shift is alpha_i * lambda255_i / 255.
    """

    def __init__(self, pca_std: float = 0.1) -> None:
        super().__init__()
        self.pca_std = pca_std
        self.register_buffer("mean_rgb", torch.tensor(IMAGENET_MEAN_RGB))
        self.register_buffer("pca_eigval", torch.tensor(IMAGENET_PCA_EIGVAL_255))
        self.register_buffer("pca_eigvec", torch.tensor(IMAGENET_PCA_EIGVEC))

    def set_statistics(self, mean_rgb: list[float], eigval: list[float], eigvec: list[list[float]]) -> None:
        """Take the train manifest's mean (0-255) and covariance eigen-decomposition (rows of eigvec = vectors)."""
        for name, value in (("mean_rgb", mean_rgb), ("pca_eigval", eigval), ("pca_eigvec", eigvec)):
            buffer = getattr(self, name)
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype, device=buffer.device))

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
