"""`spp-cls dashboard`: one wandb report that compares the cells of an experiment (a wandb group) side by side.

The report, found again by its title so that a rerun updates it, holds: val top-1 / top-5 error against epoch, one
panel grid per backbone with its variants and the paper's 10-view numbers in the panel titles; the training curves
(input size, learning rate, images/s); the runs table (final val and test errors, the paper's, gains over no SPP);
and the figure `spp-cls table --plot` draws, uploaded by a small run of its own once results exist.

Every metric, run name and results key comes from `spp_cls.protocol`, the paper's numbers from `spp_cls.paper`.
Building the report objects needs no network (`build_report`); listing runs, uploading and saving do.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import wandb
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from spp_cls.paper import BACKBONE_TITLES, BACKBONES, paper_error
from spp_cls.protocol import (
    BASELINE,
    DASHBOARD_JOB_TYPE,
    EPOCH,
    LR,
    TABLE_PROTOCOL,
    TRAIN_IMAGES_PER_S,
    TRAIN_SIZE,
    VARIANTS,
    WANDB_PROJECT,
    run_name,
    split_run_name,
)
from spp_cls.report.cells import Cell, build_table
from spp_cls.report.group_runs import (
    TEST_METRICS,
    VAL_METRICS,
    DashboardError,
    GroupRun,
    runs_from_results,
    runs_from_wandb,
    select_group,
)
from spp_cls.report.results import ResultsError
from spp_cls.report.table import plot, table_notes

DEFAULT_GROUP = "table1"
API_TIMEOUT_S = 10
"""How long a wandb request may take before the command gives up: without a network, wandb retries for minutes."""
FIGURE_KEY = "table/figure"
FIGURE_RUN_NAME = "table-figure"
LOGIN_HINT = "run `wandb login` (the report is saved on the wandb server, so this needs a network)"
MISSING = "—"
WANDB_ERRORS = (wandb.errors.Error, ValueError, OSError)
"""What wandb's client raises for a missing login, an unreachable server or an unknown project (requests' errors
are OSErrors)."""

TRAINING_CURVES = (TRAIN_SIZE, LR, TRAIN_IMAGES_PER_S)
RUNS_TABLE_COLUMNS = (
    "backbone", "variant", "state", "epochs", "val top-1", "val top-5", "test top-1", "test top-5",
    "gain top-1", "gain top-5", "paper top-1", "paper top-5", "paper gain top-1", "paper gain top-5",
)


# ---- the report ---------------------------------------------------------------------------------------------------
def report_title(group: str) -> str:
    """The report's title, by which a later run of the command finds and updates it."""
    return f"spp-cls {group}: SPP-net Table 2, measured vs paper"


def backbones_of(runs: Iterable[GroupRun]) -> list[str]:
    """The backbones the runs use: the paper's four in the paper's order, then any other (a timm model) by name."""
    used = {run.cell[0] for run in runs if run.cell is not None}
    return [b for b in BACKBONES if b in used] + sorted(used - set(BACKBONES))


def run_seeds(runs: Iterable[GroupRun]) -> tuple[int, ...]:
    """The seeds the runs were trained with (0 for names without a seed), so the report's filters include each."""
    return tuple(sorted({parts[2] for run in runs if (parts := split_run_name(run.name)) is not None} | {0}))


def backbone_run_names(backbone: str, seeds: Iterable[int] = (0,)) -> list[str]:
    """Every run name a backbone can have for the given seeds: one per variant and seed, so a run started after the
    report was built shows too (a seed started after it shows once the report is built again)."""
    return [run_name(backbone, variant, seed) for seed in sorted(set(seeds)) for variant in VARIANTS]


def runs_filter(group: str, names: Sequence[str]) -> str:
    """The runset filter: runs of `group` with one of `names` (no other run, nor the figure run, can match)."""
    filters = expr.And(expr.Metric("Group") == group, expr.Metric("Name").isin(list(names)))
    return wr.Runset(filters=filters).filters  # the library's own string form, as a saved report holds it


def _title(backbone: str) -> str:
    return BACKBONE_TITLES.get(backbone, backbone)


def val_panel_title(backbone: str, metric: str) -> str:
    """`ZF-5: val top-1 error (%), center crop; paper, 10-view: nospp 35.99 · spp_single 34.98 · spp_multi 34.60`."""
    rank = "top-1" if metric == VAL_METRICS[0] else "top-5"
    published = [(variant, paper_error(backbone, variant)) for variant in VARIANTS]
    numbers = " · ".join(f"{variant} {getattr(error, rank.replace('-', '')):.2f}"
                         for variant, error in published if error is not None)
    return f"{_title(backbone)}: val {rank} error (%), center crop" + (
        f"; paper, 10-view: {numbers}" if numbers else "; not in the paper")


def _runset(entity: str, project: str, name: str, filters: str, pinned_columns: Sequence[str] = ()) -> wr.Runset:
    return wr.Runset(entity=entity, project=project, name=name, filters=filters, pinned_columns=list(pinned_columns))


def backbone_grid(entity: str, project: str, group: str, backbone: str, seeds: Iterable[int] = (0,)) -> wr.PanelGrid:
    """Val top-1 and top-5 error against epoch for the variants (and seeds) of one backbone."""
    return wr.PanelGrid(
        runsets=[_runset(entity, project, _title(backbone),
                         runs_filter(group, backbone_run_names(backbone, seeds)))],
        panels=[wr.LinePlot(title=val_panel_title(backbone, metric), x=EPOCH, y=[metric], title_x=EPOCH,
                            title_y=metric, layout=wr.Layout(x=12 * i, y=0, w=12, h=8))
                for i, metric in enumerate(VAL_METRICS)],
    )


def training_grid(entity: str, project: str, group: str, backbones: Sequence[str],
                  seeds: Iterable[int] = (0,)) -> wr.PanelGrid:
    """Input size (the 224/180 alternation), LR (the plateau drops) and images/s against epoch, images/s per run,
    over the group's runs; its runs table shows each run's final errors (live, unlike the table below)."""
    seeds = tuple(seeds)
    names = [name for backbone in backbones for name in backbone_run_names(backbone, seeds)]
    columns = [f"summary:{key}" for key in (*VAL_METRICS, *TEST_METRICS, "epochs", TRAIN_IMAGES_PER_S)]
    curves = [wr.LinePlot(title=f"{key} vs epoch", x=EPOCH, y=[key], log_y=True if key == LR else None,
                          title_x=EPOCH, title_y=key, layout=wr.Layout(x=8 * i, y=0, w=8, h=6))
              for i, key in enumerate(TRAINING_CURVES)]
    per_run = wr.BarPlot(title=f"{TRAIN_IMAGES_PER_S} per run (last epoch)", metrics=[TRAIN_IMAGES_PER_S],
                         layout=wr.Layout(x=0, y=6, w=24, h=8))
    return wr.PanelGrid(runsets=[_runset(entity, project, group, runs_filter(group, names), columns)],
                        panels=[*curves, per_run])


def figure_filter(group: str) -> str:
    filters = expr.And(expr.Metric("Group") == group, expr.Metric("JobType") == DASHBOARD_JOB_TYPE)
    return wr.Runset(filters=filters).filters


def figure_grid(entity: str, project: str, group: str) -> wr.PanelGrid:
    """The uploaded `spp-cls table --plot` figure, shown from the figure run's media."""
    return wr.PanelGrid(
        runsets=[_runset(entity, project, "table figure", figure_filter(group))],
        panels=[wr.MediaBrowser(title="spp-cls table --plot", media_keys=[FIGURE_KEY], num_columns=1,
                                layout=wr.Layout(x=0, y=0, w=24, h=18))],
    )


def _format(value: float | str | None) -> str:
    if value is None:
        return MISSING
    return f"{round(value, 2) + 0.0:.2f}" if isinstance(value, float) else str(value)  # + 0.0: no "-0.00"


def runs_table_markdown(runs: Sequence[GroupRun]) -> str:
    """One row per run: backbone, variant, state, epochs, final val and test errors, the paper's, and gains over
    (a) no SPP of the same backbone (error of no SPP minus the row's; measured from 10-view results only).

    Raises:
        ResultsError: two runs hold a result for the same cell.
    """
    results = [run.result for run in runs if run.result is not None]
    table = build_table(results, TABLE_PROTOCOL)
    order = {backbone: i for i, backbone in enumerate(backbones_of(runs))}
    variant_order = {variant: i for i, variant in enumerate(VARIANTS)}
    rows = sorted(runs, key=lambda run: (order[run.cell[0]], variant_order[run.cell[1]], run.name))  # type: ignore
    lines = ["| " + " | ".join(RUNS_TABLE_COLUMNS) + " |", "|---|---|---|" + "---:|" * (len(RUNS_TABLE_COLUMNS) - 3)]
    for run in rows:
        backbone, variant = run.cell  # type: ignore[misc]  # select_group keeps named runs only
        tested = run.result if run.result is not None and run.result.test_protocol == TABLE_PROTOCOL else None
        cell = table.cells.get((backbone, variant)) or Cell(backbone, variant, (), (), paper_error(backbone, variant),
                                                            paper_error(backbone, BASELINE))
        values = [
            _title(backbone), VARIANTS[variant].title, run.state, run.epochs, run.val_top1_err, run.val_top5_err,
            None if tested is None else tested.top1_err, None if tested is None else tested.top5_err,
            # the gain of the cell (its seeds averaged): one seed's gain alone would hide the spread
            cell.measured_gain("top1") if tested else None, cell.measured_gain("top5") if tested else None,
            cell.paper_err("top1"), cell.paper_err("top5"), cell.paper_gain("top1"), cell.paper_gain("top5"),
        ]
        lines.append("| " + " | ".join(_format(value) for value in values) + " |")
    notes = table_notes(table) if results else []
    return "\n".join([*lines, "", *(f"**Note:** {note}" for note in notes)]).rstrip() + "\n"


def build_report(entity: str, project: str, group: str, runs: Sequence[GroupRun], *, figure: bool) -> wr.Report:
    """The report for the runs of one group, built offline (nothing is saved or looked up).

    Args:
        runs: the group's runs, as `select_group` returns them.
        figure: whether the table figure was uploaded (a panel shows it) or not (a line says when it will be).
    """
    backbones = backbones_of(runs)
    seeds = run_seeds(runs)
    blocks: list[Any] = [
        wr.MarkdownBlock(
            f"Runs of wandb group `{group}`, named `{{backbone}}-{{variant}}` (`-seed{{N}}` for seeds other than 0; "
            "the runs table lists each seed, its gain columns average the seeds of a cell). Curves are live; the "
            "runs table and the figure are as of the last `spp-cls dashboard` (rerun it to refresh). Validation is "
            "a single center crop per epoch, the paper's numbers (in the panel titles) are the standard 10-view test: "
            "compare them with the test columns."),
        wr.H2("Validation error per backbone"),
    ]
    for backbone in backbones:
        blocks += [wr.H3(_title(backbone)), backbone_grid(entity, project, group, backbone, seeds)]
    blocks += [wr.H2("Training"), training_grid(entity, project, group, backbones, seeds),
               wr.H2("Runs"), wr.MarkdownBlock(runs_table_markdown(runs)),
               wr.H2("Table 2: measured vs paper")]
    blocks.append(figure_grid(entity, project, group) if figure else wr.P(
        "No run has a test result yet: the figure appears when one has (rerun `spp-cls dashboard`)."))
    return wr.Report(entity=entity, project=project, title=report_title(group), blocks=blocks,
                     description=f"Built by `spp-cls dashboard --entity {entity} --project {project} --group {group}`",
                     width="fluid")


def describe(report: wr.Report) -> str:
    """What a report holds, as text: headings, markdown, and each panel grid's runs filter and panels' keys."""
    lines = [f"report {report.title!r} in {report.entity}/{report.project}"]
    for block in report.blocks:
        if isinstance(block, (wr.H2, wr.H3)):
            lines.append(f"{'#' * (3 if isinstance(block, wr.H3) else 2)} {block.text}")
        elif isinstance(block, wr.MarkdownBlock):
            lines.append(block.text.rstrip())
        elif isinstance(block, wr.P):
            lines.append(str(block.text))
        elif isinstance(block, wr.PanelGrid):
            for runset in block.runsets:
                lines.append(f"  runs: {runset.filters}")
            for panel in block.panels:
                if isinstance(panel, wr.LinePlot):
                    lines.append(f"  line plot {', '.join(map(str, panel.y))} vs {panel.x}: {panel.title}")
                elif isinstance(panel, wr.BarPlot):
                    lines.append(f"  bar plot {', '.join(map(str, panel.metrics))}: {panel.title}")
                elif isinstance(panel, wr.MediaBrowser):
                    lines.append(f"  media {', '.join(panel.media_keys)}: {panel.title}")
    return "\n".join(lines) + "\n"


# ---- wandb: connect, upload, save ---------------------------------------------------------------------------------
def connect(timeout_s: float = API_TIMEOUT_S) -> Any:
    """A `wandb.Api` whose credentials the server has accepted, within `timeout_s`.

    Raises:
        DashboardError: offline (WANDB_MODE), no API key, or the server not reachable in time: one line saying to
            `wandb login`.
    """
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        raise DashboardError(f"WANDB_MODE={mode} keeps wandb offline: unset it and {LOGIN_HINT}")
    try:
        return wandb.Api(timeout=timeout_s)  # checks the API key against the server
    except WANDB_ERRORS as err:
        raise DashboardError(f"cannot reach wandb ({_one_line(err)}): {LOGIN_HINT}") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def figure_run_id(group: str) -> str:
    """The id of the group's figure run: the same on every rebuild, so the figure updates instead of piling up."""
    return f"{DASHBOARD_JOB_TYPE}-{hashlib.sha256(group.encode()).hexdigest()[:16]}"


def upload_figure(png: Path, entity: str | None, project: str, group: str, directory: Path) -> str:
    """Log the table figure as an image in the group's figure run (job type `dashboard`); returns the run's id.

    `directory` receives wandb's local files (offline, the run stays there for `wandb sync`).
    """
    with wandb.init(entity=entity, project=project, group=group, name=FIGURE_RUN_NAME, job_type=DASHBOARD_JOB_TYPE,
                    id=figure_run_id(group), resume="allow", dir=str(directory), reinit="create_new",
                    settings=wandb.Settings(silent=True, init_timeout=6 * API_TIMEOUT_S)) as run:
        run.log({FIGURE_KEY: wandb.Image(str(png), caption=f"spp-cls table --plot, group {group}")})
        return run.id


def save_report(api: Any, report: wr.Report) -> str:
    """Update the project's report of the same title, or create it; returns its URL."""
    same_title = [saved for saved in api.reports(f"{report.entity}/{report.project}")
                  if saved.display_name == report.title]
    if same_title:
        saved = wr.Report.from_url(same_title[0].url)
        saved.blocks, saved.description, saved.width = report.blocks, report.description, report.width
        report = saved
    report.save()
    return report.url


# ---- the command --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spp-cls dashboard",
        description="Create or update (by title) the wandb report that compares the runs of one group: val error per "
        "backbone against the paper, training curves, the runs table and the table figure. Prints its URL.",
    )
    parser.add_argument("--entity", required=True, help="wandb entity (user or team) that owns the project")
    parser.add_argument("--project", default=WANDB_PROJECT, help=f"wandb project (default {WANDB_PROJECT})")
    parser.add_argument("--group", default=DEFAULT_GROUP,
                        help=f"the experiment's wandb group (default {DEFAULT_GROUP})")
    parser.add_argument("--results", nargs="+", metavar="DIR", help="list the runs from the results files under "
                        "these run directories instead of from wandb (a preview before `wandb sync`)")
    parser.add_argument("--dry-run", action="store_true", help="print what the report holds; upload and save nothing")
    return parser


def _run(args: argparse.Namespace) -> str:
    """List the runs, build the report, then print it (dry run) or upload the figure and save it; returns the output."""
    api = None if args.dry_run and args.results else connect()
    if args.results:
        runs, source = runs_from_results(args.results), f"results files under {', '.join(args.results)}"
    else:
        try:
            runs = runs_from_wandb(api, args.entity, args.project)
        except WANDB_ERRORS as err:
            raise DashboardError(f"cannot list the runs of {args.entity}/{args.project}: {_one_line(err)}") from err
        source = f"wandb project {args.entity}/{args.project}"
    shown, left_out = select_group(runs, args.group, source)
    for line in left_out:
        print(f"spp-cls dashboard: note: {line}", file=sys.stderr)
    results = [run.result for run in shown if run.result is not None]
    report = build_report(args.entity, args.project, args.group, shown, figure=bool(results))
    if args.dry_run:
        return describe(report) + "(dry run: nothing uploaded or saved)\n"
    with tempfile.TemporaryDirectory(prefix="spp-cls-dashboard-") as scratch:
        try:
            if results:
                png = plot(results, Path(scratch) / "table.png")
                upload_figure(png, args.entity, args.project, args.group, Path(scratch))
            return save_report(api, report) + "\n"
        except WANDB_ERRORS as err:
            raise DashboardError(f"cannot upload the figure or save the report: {_one_line(err)}") from err


def main(argv: list[str] | None = None) -> int:
    """`spp-cls dashboard --entity E [--project P] [--group G] [--results DIR...] [--dry-run]`.

    Returns 0 on success, 2 on bad input (no runs, unknown group, bad results files) or when wandb cannot be used.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    if not args.group or not args.entity:
        print("spp-cls dashboard: error: --entity and --group must not be empty", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(_run(args))
    except (DashboardError, ResultsError) as err:
        print(f"spp-cls dashboard: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
