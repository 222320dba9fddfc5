"""95% intervals for the table: a cell's error over its test images, and a gain over no SPP paired on the same images.

Method: a percentile bootstrap over test images (the images are the sample that a test set draws from the world),
paired: every replicate resamples one set of images and scores every run on that same set, so what the two cells
share (the hard images, the easy ones) cancels in their difference. With several seeds of a cell, each replicate
also resamples the seeds of each cell (with replacement) and averages over them, so the interval counts both
sources of noise: which images were drawn, and which training run.

The image resampling is exact and cheap: a run's outcome on an image is one bit (wrong or not), so the images fall
into at most 2^runs patterns of bits, and resampling n images with replacement is drawing pattern counts from a
multinomial over those patterns. Replicates and the generator's seed are fixed, so the same outcomes always give
the same interval.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spp_cls.outcomes import ImageOutcome

REPLICATES = 10_000
LEVEL = 0.95
GENERATOR_SEED = 0


class IntervalError(ValueError):
    """Outcomes that cannot be compared (different test images, no images)."""


@dataclass(frozen=True)
class Estimate:
    """A value (error or gain, in percent; a mean over seeds) with its 95% interval; `spread` is the standard deviation
    of a cell's error over its seeds (None for one seed, and for gains)."""

    value: float
    low: float
    high: float
    seeds: int
    spread: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def wrong(outcomes: Sequence[ImageOutcome], metric: str) -> dict[str, bool]:
    """{key: wrong} of one run under `metric` ("top1" or "top5")."""
    if metric == "top1":
        return {outcome.key: not outcome.top1_correct for outcome in outcomes}
    if metric == "top5":
        return {outcome.key: not outcome.top5_correct for outcome in outcomes}
    raise ValueError(f"unknown metric {metric!r}: top1 or top5")


def _matrix(runs: Sequence[dict[str, bool]]) -> np.ndarray:
    """Images x runs of wrong bits, over the images every run was tested on; they must be the same images."""
    keys = sorted(runs[0])
    for run in runs[1:]:
        if run.keys() != runs[0].keys():
            raise IntervalError(f"runs tested on different images ({len(run)} and {len(runs[0])}, "
                                f"{len(run.keys() ^ runs[0].keys())} not in both): no paired interval")
    if not keys:
        raise IntervalError("no test images")
    return np.array([[run[key] for run in runs] for key in keys], dtype=bool)


def _replicate_errors(bits: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates x runs of error rates (percent), each replicate on one resample of the images, shared by all runs."""
    patterns, counts = np.unique(bits, axis=0, return_counts=True)
    images = int(counts.sum())
    drawn = rng.multinomial(images, counts / images, size=replicates)  # replicates x patterns
    return 100.0 * drawn @ patterns.astype(np.float64) / images


def _seed_means(errors: np.ndarray, columns: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Per replicate, the mean error over a resample (with replacement) of the given seed columns."""
    if len(columns) == 1:
        return errors[:, columns[0]]
    picks = rng.integers(0, len(columns), size=(errors.shape[0], len(columns)))
    chosen = errors[:, list(columns)][np.arange(errors.shape[0])[:, None], picks]
    return chosen.mean(axis=1)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _spread(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1)) if len(values) > 1 else None


def error_estimate(seeds: Sequence[dict[str, bool]], replicates: int = REPLICATES) -> Estimate:
    """The error (percent, mean over seeds) of one cell and its 95% interval over images (and seeds)."""
    rng = np.random.default_rng(GENERATOR_SEED)
    bits = _matrix(seeds)
    per_seed = 100.0 * bits.mean(axis=0)
    samples = _seed_means(_replicate_errors(bits, replicates, rng), range(len(seeds)), rng)
    return Estimate(float(per_seed.mean()), *_interval(samples), len(seeds), _spread(per_seed))


def gain_estimate(baseline: Sequence[dict[str, bool]], variant: Sequence[dict[str, bool]],
                  replicates: int = REPLICATES) -> Estimate:
    """Error of the baseline minus error of the variant (percent; positive: the variant is better), means over
    seeds, with its paired 95% interval.

    Raises:
        IntervalError: the runs were not tested on the same images.
    """
    rng = np.random.default_rng(GENERATOR_SEED)
    bits = _matrix([*baseline, *variant])
    per_run = 100.0 * bits.mean(axis=0)
    errors = _replicate_errors(bits, replicates, rng)
    base_columns = range(len(baseline))
    variant_columns = range(len(baseline), len(baseline) + len(variant))
    samples = _seed_means(errors, base_columns, rng) - _seed_means(errors, variant_columns, rng)
    value = float(per_run[: len(baseline)].mean() - per_run[len(baseline):].mean())
    # no spread over seeds: the seeds of two cells are independent runs, and pairing seed i with seed i means nothing
    return Estimate(value, *_interval(samples), min(len(baseline), len(variant)), None)
