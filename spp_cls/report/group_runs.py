"""The runs of an experiment (a wandb group) as the dashboard sees them: from results files or from wandb, checked
to be the cells `{backbone}-{variant}` of one group."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spp_cls.protocol import (
    DASHBOARD_JOB_TYPE,
    EPOCH,
    VARIANTS,
    run_name,
    split_run_name,
    top1_metric,
    top5_metric,
)
from spp_cls.report.results import ResultsError, RunResult, collect, result_from_wandb_run

VAL_METRICS = (top1_metric("val"), top5_metric("val"))
TEST_METRICS = (top1_metric("test"), top5_metric("test"))


class DashboardError(ValueError):
    """Input the dashboard cannot be built from, or a wandb server it cannot reach; the message is one line."""


@dataclass(frozen=True)
class GroupRun:
    """One run as the dashboard lists it: name, group, how far it got, and its 10-view result once tested.

    Attributes:
        name: the run's wandb name, `{backbone}-{variant}` for a run of this harness.
        state: wandb's run state (running, finished, crashed...), or "tested" for a run read from a results file.
        epochs: epochs trained, from the results file, else the last logged epoch + 1; None if unknown.
        val_top1_err, val_top5_err: the last validation errors logged (center crop, percent).
    """

    name: str
    group: str | None
    job_type: str | None = None
    state: str | None = None
    epochs: int | None = None
    val_top1_err: float | None = None
    val_top5_err: float | None = None
    result: RunResult | None = None

    @property
    def cell(self) -> tuple[str, str] | None:
        """(backbone, variant) of a run named by `run_name`: the seeds of a cell share it."""
        parts = split_run_name(self.name)
        return None if parts is None else parts[:2]


def runs_from_results(paths: Iterable[str | Path]) -> list[GroupRun]:
    """The runs whose results files lie under `paths` (as `spp-cls table` reads them); the group is the experiment.

    Raises:
        ResultsError: a path is missing, a results file is bad, or two results claim one cell.
    """
    return [
        GroupRun(name=run_name(result.backbone, result.variant, result.seed), group=result.experiment, state="tested",
                 epochs=result.epochs, result=result)
        for result in collect(paths)
    ]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def group_run_from_wandb(run: Any) -> GroupRun:
    """One wandb run (a `wandb.apis.public.Run`, or a live `wandb.Run`) as a GroupRun: its last logged val errors,
    and its result if it was tested, read as `spp-cls table --wandb` reads it."""
    try:
        result: RunResult | None = result_from_wandb_run(run)
    except ResultsError:
        result = None  # still training, or never tested: listed without test errors
    summary = run.summary
    last_epoch = _number(summary.get(EPOCH))
    epochs = result.epochs if result is not None and result.epochs is not None else (
        None if last_epoch is None else int(last_epoch) + 1)
    return GroupRun(
        name=run.name or run.id, group=run.group, job_type=run.job_type,
        state=getattr(run, "state", None),  # a run of the public API has one; a live `wandb.Run` does not
        epochs=epochs, val_top1_err=_number(summary.get(VAL_METRICS[0])),
        val_top5_err=_number(summary.get(VAL_METRICS[1])), result=result,
    )


def runs_from_wandb(api: Any, entity: str, project: str) -> list[GroupRun]:
    """Every run of the wandb project `entity/project` (needs the server: see `connect`)."""
    return [group_run_from_wandb(run) for run in api.runs(f"{entity}/{project}", per_page=200)]


def select_group(runs: Sequence[GroupRun], group: str, source: str) -> tuple[list[GroupRun], list[str]]:
    """The runs of one group that the dashboard shows, and one line for each run of the group it leaves out.

    The figure run of an earlier `spp-cls dashboard` is neither shown nor reported; a run whose name is not
    `{backbone}-{variant}` is left out with a line saying so.

    Raises:
        DashboardError: `source` holds no runs, none in `group` (the message lists the groups there), or only runs
            the dashboard cannot place.
    """
    runs = [run for run in runs if run.job_type != DASHBOARD_JOB_TYPE]
    if not runs:
        raise DashboardError(f"no runs in {source}")
    in_group = [run for run in runs if run.group == group]
    if not in_group:
        counts: dict[str, int] = {}
        for run in runs:
            counts[str(run.group)] = counts.get(str(run.group), 0) + 1
        known = ", ".join(f"{name} ({count} runs)" for name, count in sorted(counts.items()))
        raise DashboardError(f"no runs in group {group!r} of {source}; its groups: {known}")
    shown = [run for run in in_group if run.cell is not None]
    left_out = [f"run {run.name!r} left out: its name is not {{backbone}}-{{variant}} with a variant of "
                f"{', '.join(VARIANTS)}" for run in in_group if run.cell is None]
    if not shown:
        raise DashboardError(f"none of the {len(in_group)} runs in group {group!r} of {source} is named "
                             "{backbone}-{variant}")
    return shown, left_out
