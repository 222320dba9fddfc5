"""Pixel statistics of the training set: per-channel mean and the PCA of the RGB covariance (0-255 scale)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# Pixel statistics (mean, PCA) come from up to STATS_IMAGES training images (the first ones of the shuffled order,
# a random subset) and STATS_PIXELS_PER_IMAGE random pixels of each, after the resize.
STATS_IMAGES = 10_000
STATS_PIXELS_PER_IMAGE = 1_000


@dataclass
class PixelStats:
    """Running sums over sampled pixels (0-255 scale), mergeable across shards in a fixed order."""

    count: int = 0
    total: list[float] = field(default_factory=lambda: [0.0] * 3)
    outer: list[list[float]] = field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])

    def add_pixels(self, pixels: np.ndarray) -> None:
        pixels = pixels.astype(np.float64)
        self.count += len(pixels)
        self.total = (np.asarray(self.total) + pixels.sum(axis=0)).tolist()
        self.outer = (np.asarray(self.outer) + pixels.T @ pixels).tolist()

    def merge(self, other: PixelStats) -> None:
        self.count += other.count
        self.total = (np.asarray(self.total) + np.asarray(other.total)).tolist()
        self.outer = (np.asarray(self.outer) + np.asarray(other.outer)).tolist()

    def mean_and_pca(self) -> tuple[list[float], list[float], list[list[float]]]:
        """Mean, eigenvalues (descending) and eigenvectors (rows, unit, largest component positive)."""
        if self.count == 0:
            raise ValueError("no training pixels were sampled")
        mean = np.asarray(self.total) / self.count
        covariance = np.asarray(self.outer) / self.count - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(covariance)
        order = np.argsort(eigval)[::-1]
        eigval, rows = np.clip(eigval[order], 0.0, None), eigvec[:, order].T
        rows = rows * np.sign(rows[np.arange(3), np.abs(rows).argmax(axis=1)])[:, None]
        return mean.tolist(), eigval.tolist(), rows.tolist()


def sample_pixels(rgb: Image.Image, count: int, seed: int, index: int) -> np.ndarray:
    """`count` pixels (with replacement) of an RGB image, chosen by a generator seeded with (seed, index)."""
    pixels = np.asarray(rgb).reshape(-1, 3)
    return pixels[np.random.default_rng([seed, index]).integers(0, len(pixels), count)]
