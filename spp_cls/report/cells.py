"""The grid of the table: one cell per (backbone, variant) under one test protocol, holding its runs (one per seed)
and the paper's value, with their no-SPP baselines; the mean errors and gains, and their 95% intervals from the runs'
per-image outcomes (`spp_cls.report.intervals`)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import stdev

from spp_cls.outcomes import OutcomesError, read_outcomes
from spp_cls.paper import BACKBONES, PaperError, paper_error
from spp_cls.protocol import BASELINE, SPP_RANDOM, TABLE_VARIANTS
from spp_cls.protocol import TABLE_PROTOCOL as TENVIEW
from spp_cls.report.intervals import Estimate, IntervalError, error_estimate, gain_estimate, wrong
from spp_cls.report.results import ResultsError, RunResult, check_unique_runs

OutcomesFile = tuple[str, int]
"""An outcomes file and its modification time: the key under which what was read of it is kept."""


@lru_cache(maxsize=256)
def _wrong_by_image(file: OutcomesFile, metric: str) -> dict[str, bool]:
    return wrong(read_outcomes(Path(file[0])), metric)


def _wrong_of(files: tuple[OutcomesFile, ...], metric: str) -> list[dict[str, bool]]:
    try:
        return [_wrong_by_image(file, metric) for file in files]
    except OutcomesError as error:
        raise ResultsError(str(error)) from None


def _outcomes_files(runs: Sequence[RunResult]) -> tuple[OutcomesFile, ...] | None:
    """The runs' per-image outcomes files, or None unless every run has one."""
    if not runs or any(run.outcomes_file is None for run in runs):
        return None
    try:
        return tuple((str(run.outcomes_file), Path(str(run.outcomes_file)).stat().st_mtime_ns) for run in runs)
    except OSError as error:
        raise ResultsError(f"cannot read {error.filename}: {error.strerror}") from None


# The markdown, the csv and the plot of one table ask for the same intervals: each bootstrap runs once.
@lru_cache(maxsize=256)
def _cell_estimate(files: tuple[OutcomesFile, ...], metric: str) -> Estimate:
    return error_estimate(_wrong_of(files, metric))


@lru_cache(maxsize=256)
def _gain_estimate(base: tuple[OutcomesFile, ...], own: tuple[OutcomesFile, ...], metric: str) -> Estimate | None:
    try:
        return gain_estimate(_wrong_of(base, metric), _wrong_of(own, metric))
    except IntervalError:
        return None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class Cell:
    """One (backbone, variant) cell: its measured runs (one per seed) and the paper's value, with their no-SPP
    baselines."""

    backbone: str
    variant: str
    runs: tuple[RunResult, ...]
    base_runs: tuple[RunResult, ...]
    paper: PaperError | None
    paper_base: PaperError | None

    def measured_err(self, metric: str) -> float | None:
        """The error, averaged over the cell's seeds."""
        return _mean([getattr(run, f"{metric}_err") for run in self.runs]) if self.runs else None

    def paper_err(self, metric: str) -> float | None:
        return None if self.paper is None else getattr(self.paper, metric)

    def measured_gain(self, metric: str) -> float | None:
        """Error of the no-SPP runs minus error of this cell's (positive: this variant is better); None for row (a)."""
        if self.variant == BASELINE or not self.runs or not self.base_runs:
            return None
        return _mean([getattr(run, f"{metric}_err") for run in self.base_runs]) - self.measured_err(metric)

    def paper_gain(self, metric: str) -> float | None:
        if self.variant == BASELINE or self.paper is None or self.paper_base is None:
            return None
        base, err = getattr(self.paper_base, metric), getattr(self.paper, metric)
        return None if base is None or err is None else base - err

    def error_estimate(self, metric: str) -> Estimate | None:
        """The error with its 95% interval over images (and seeds); None without per-image outcomes."""
        files = _outcomes_files(self.runs)
        return None if files is None else _cell_estimate(files, metric)

    def error_spread(self, metric: str) -> float | None:
        """Standard deviation of the error over the cell's seeds; None for fewer than two."""
        return stdev([getattr(run, f"{metric}_err") for run in self.runs]) if len(self.runs) > 1 else None

    def gain_estimate(self, metric: str) -> Estimate | None:
        """The gain with its paired 95% interval; None for row (a), without outcomes, or on different images."""
        if self.variant == BASELINE:
            return None
        base, own = _outcomes_files(self.base_runs), _outcomes_files(self.runs)
        return None if base is None or own is None else _gain_estimate(base, own, metric)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(run.seed for run in self.runs))


@dataclass(frozen=True)
class Table:
    """The cells of one test protocol, plus the results left out because they were tested under another one."""

    protocol: str
    backbones: tuple[str, ...]
    variants: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]
    other_protocols: tuple[RunResult, ...]

    def cell(self, backbone: str, variant: str) -> Cell:
        return self.cells[(backbone, variant)]


def build_table(results: Iterable[RunResult], protocol: str = TENVIEW) -> Table:
    """Arrange results into the Table 2 grid for one test protocol.

    Raises:
        ResultsError: two results claim the same (backbone, variant, protocol) cell.
    """
    results = list(results)
    check_unique_runs(results)
    shown: dict[tuple[str, str], list[RunResult]] = {}
    for result in sorted(results, key=lambda r: r.seed):
        if result.test_protocol == protocol:
            shown.setdefault((result.backbone, result.variant), []).append(result)
    extra_backbones = sorted({backbone for backbone, _ in shown} - set(BACKBONES))
    backbones = BACKBONES + tuple(extra_backbones)
    variants = TABLE_VARIANTS + ((SPP_RANDOM,) if any(variant == SPP_RANDOM for _, variant in shown) else ())
    cells = {
        (backbone, variant): Cell(
            backbone=backbone,
            variant=variant,
            runs=tuple(shown.get((backbone, variant), ())),
            base_runs=tuple(shown.get((backbone, BASELINE), ())),
            paper=paper_error(backbone, variant, protocol),
            paper_base=paper_error(backbone, BASELINE, protocol),
        )
        for variant in variants
        for backbone in backbones
    }
    others = tuple(r for r in results if r.test_protocol != protocol)
    return Table(protocol, backbones, variants, cells, others)
