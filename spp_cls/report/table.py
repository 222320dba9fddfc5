"""`spp-cls table`: the paper's Table 2 layout, measured errors beside the published ones, as markdown, csv or a plot.

Rows are the training variants (a) no SPP, (b) SPP single-size, (c) SPP multi-size (and the random-size row when a
run has it), columns the four backbones (and any other backbone a run used). Every cell shows the error and, in
parentheses, its gain over (a) no SPP of the same backbone, computed from the measured values for the measured column
and from `spp_cls.paper` for the paper's column. One table shows one test protocol, so gains never mix protocols.

Where the runs wrote their per-image outcomes, each measured error carries its 95% interval over the test images and
each gain its paired 95% interval (`spp_cls.report.intervals`); a gain whose interval excludes zero is marked `*`.
Several seeds of a cell are averaged, with their spread, and the intervals count the seeds too.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from spp_cls.paper import BACKBONE_TITLES, PROTOCOL_SOURCES
from spp_cls.protocol import BASELINE, TEST_PROTOCOLS, VARIANTS
from spp_cls.protocol import TABLE_PROTOCOL as TENVIEW
from spp_cls.report.cells import Cell, Table, build_table
from spp_cls.report.curves import format_curves
from spp_cls.report.intervals import Estimate
from spp_cls.report.results import ResultsError, RunResult, collect, from_wandb

METRICS: tuple[tuple[str, str], ...] = (("top1", "top-1 err (%)"), ("top5", "top-5 err (%)"))
MISSING = "—"

PLOT_SIZE_IN = (12.0, 9.0)
PLOT_DPI = 100

CSV_COLUMNS: tuple[str, ...] = (
    "backbone", "variant", "test_protocol", "seeds",
    "top1_err", "top1_err_sd", "top1_err_low", "top1_err_high",
    "top1_gain", "top1_gain_low", "top1_gain_high", "top1_gain_excludes_zero", "paper_top1_err", "paper_top1_gain",
    "top5_err", "top5_err_sd", "top5_err_low", "top5_err_high",
    "top5_gain", "top5_gain_low", "top5_gain_high", "top5_gain_excludes_zero", "paper_top5_err", "paper_top5_gain",
    "num_test_images", "epochs", "results_file",
)


def _number(value: float) -> str:
    return f"{round(value, 2) + 0.0:.2f}"  # + 0.0 turns a rounded -0.0 into 0.0


def cell_text(err: float | None, gain: float | None, variant: str) -> str:
    """`35.00 (1.10)`; row (a) has no gain; `35.00 (—)` when the baseline to take the gain from is missing."""
    if err is None:
        return MISSING
    if variant == BASELINE:
        return _number(err)
    return f"{_number(err)} ({MISSING if gain is None else _number(gain)})"


def _interval_text(estimate: Estimate) -> str:
    return f"[{_number(estimate.low)}, {_number(estimate.high)}]"


def measured_cell_text(cell: Cell, metric: str) -> str:
    """A measured cell: `34.50 [34.08, 34.92] (1.60 [1.21, 1.99]*)`, the error with its 95% interval and the gain
    over (a) with its paired 95% interval, `*` where that excludes zero; `±0.21` after the error for the spread over
    seeds. Without per-image outcomes, as `cell_text`."""
    err, gain = cell.measured_err(metric), cell.measured_gain(metric)
    estimate = None if err is None else cell.error_estimate(metric)
    if err is None or estimate is None:
        return cell_text(err, gain, cell.variant)
    spread = cell.error_spread(metric)
    text = _number(err) + ("" if spread is None else f" ±{_number(spread)}") + " " + _interval_text(estimate)
    if cell.variant == BASELINE:
        return text
    gain_estimate = cell.gain_estimate(metric)
    if gain is None:
        return f"{text} ({MISSING})"
    if gain_estimate is None:
        return f"{text} ({_number(gain)})"
    mark = "*" if gain_estimate.excludes_zero else ""
    return f"{text} ({_number(gain)} {_interval_text(gain_estimate)}{mark})"


def _backbone_title(backbone: str) -> str:
    return BACKBONE_TITLES.get(backbone, backbone)


def table_notes(table: Table) -> list[str]:
    """Warnings a reader of the table must see: a protocol other than the paper's, results left out."""
    notes = []
    if table.protocol not in PROTOCOL_SOURCES:
        notes.append(
            f"The paper reports no errors under the test protocol '{table.protocol}': its column is empty."
        )
    by_protocol: dict[str, list[str]] = {}
    for result in table.other_protocols:
        by_protocol.setdefault(result.test_protocol, []).append(f"{result.backbone}-{result.variant}")
    if by_protocol:
        listed = "; ".join(f"{protocol}: {', '.join(sorted(cells))}" for protocol, cells in sorted(by_protocol.items()))
        notes.append(
            f"Not shown: {len(table.other_protocols)} result(s) under other test protocols ({listed}); "
            "pick one with --protocol."
        )
    return notes


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _optional(value: float | int | str | None, form: str) -> str:
    return "?" if value is None else format(value, form)


def format_markdown(results: Iterable[RunResult], protocol: str = TENVIEW) -> str:
    """The two blocks of Table 2 (top-1, top-5), measured beside paper, then the notes and the list of runs."""
    table = build_table(results, protocol)
    shown = [run for cell in table.cells.values() for run in cell.runs]
    experiments = ", ".join(sorted({result.experiment for result in shown}))
    lines = [
        "## ImageNet error (%): measured beside the SPP-net paper",
        "",
        f"Measured: test protocol `{table.protocol}`" + (f", experiment {experiments}" if shown else ", no runs")
        + f". Paper: He et al., TPAMI 2015, {PROTOCOL_SOURCES.get(table.protocol, 'no numbers for this protocol')}.",
        f"In parentheses: gain over (a) no SPP of the same backbone (error of (a) minus error of the row; positive "
        f"is better). {MISSING}: no run, or not in the paper; ({MISSING}): no (a) run to take the gain from.",
    ]
    if any(run.outcomes_file for run in shown):
        lines.append(
            "[low, high]: 95% interval over the test images (percentile bootstrap, 10,000 replicates); for a gain, "
            "paired on the same images; `*`: a gain whose interval excludes zero. With several seeds: their mean, "
            "± their standard deviation, and intervals that resample the seeds too."
        )
    header_cells = [title for b in table.backbones for title in (_backbone_title(b), f"{_backbone_title(b)} paper")]
    for metric, metric_title in METRICS:
        align = _markdown_row(["---"] + ["---:"] * len(header_cells))
        lines += ["", _markdown_row([metric_title, *header_cells]), align]
        for variant in table.variants:
            row = [VARIANTS[variant].title]
            for backbone in table.backbones:
                cell = table.cell(backbone, variant)
                row.append(measured_cell_text(cell, metric))
                row.append(cell_text(cell.paper_err(metric), cell.paper_gain(metric), variant))
            lines.append(_markdown_row(row))
    lines += [""] + [f"**Note:** {note}" for note in table_notes(table)]
    if shown:
        lines += [
            "",
            f"Runs ({len(shown)}):",
            "",
            _markdown_row(["cell", "seed", "test images", "epochs", "train img/s", "wall time (h)", "commit",
                           "source"]),
            _markdown_row(["---"] + ["---:"] * 5 + ["---", "---"]),
        ]
        for result in shown:
            hours = None if result.wall_time_s is None else result.wall_time_s / 3600
            commit = None if result.git_commit is None else result.git_commit[:10]
            lines.append(_markdown_row([
                f"{result.backbone}-{result.variant}", str(result.seed), _optional(result.num_test_images, "d"),
                _optional(result.epochs, "d"), _optional(result.train_images_per_s, ".1f"), _optional(hours, ".2f"),
                _optional(commit, "s"), result.source,
            ]))
    return "\n".join(lines).rstrip() + "\n"


def _csv_value(value: float | int | str | None) -> str | float | int:
    if value is None:
        return ""
    return round(value, 4) if isinstance(value, float) else value


def format_csv(results: Iterable[RunResult], protocol: str = TENVIEW) -> str:
    """One row per (backbone, variant) cell of the table: measured and paper errors and gains; empty where missing."""
    table = build_table(results, protocol)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for cell in table.cells.values():
        first = cell.runs[0] if cell.runs else None
        row: dict[str, str | float | int | None] = {
            "backbone": cell.backbone,
            "variant": cell.variant,
            "test_protocol": None if first is None else first.test_protocol,
            "seeds": " ".join(map(str, cell.seeds)) or None,
            "num_test_images": None if first is None else first.num_test_images,
            "epochs": None if first is None else first.epochs,
            "results_file": ";".join(run.source for run in cell.runs) or None,
        }
        for metric, _ in METRICS:
            error, gain = cell.error_estimate(metric), cell.gain_estimate(metric)
            row[f"{metric}_err"] = cell.measured_err(metric)
            row[f"{metric}_err_sd"] = cell.error_spread(metric)
            row[f"{metric}_err_low"], row[f"{metric}_err_high"] = (None, None) if error is None else (
                error.low, error.high)
            row[f"{metric}_gain"] = cell.measured_gain(metric)
            row[f"{metric}_gain_low"], row[f"{metric}_gain_high"] = (None, None) if gain is None else (
                gain.low, gain.high)
            row[f"{metric}_gain_excludes_zero"] = None if gain is None else int(gain.excludes_zero)
            row[f"paper_{metric}_err"] = cell.paper_err(metric)
            row[f"paper_{metric}_gain"] = cell.paper_gain(metric)
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    return out.getvalue()


def plot(results: Iterable[RunResult], path: str | Path, protocol: str = TENVIEW) -> Path:
    """Grouped bars, one panel per metric: per backbone, per variant, measured (solid) beside paper (hatched).

    Written as PNG at PLOT_SIZE_IN x PLOT_DPI pixels, with matplotlib's Agg canvas (no display, no pyplot state).
    """
    from matplotlib.figure import Figure  # imported here: only --plot pays for matplotlib
    from matplotlib.patches import Patch

    table = build_table(results, protocol)
    path = Path(path)
    figure = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI, layout="constrained")
    axes = figure.subplots(len(METRICS), 1)
    colours = dict(zip(table.variants, ("#4c72b0", "#dd8452", "#55a868", "#8172b3")))
    legend = [Patch(color=colours[variant], label=VARIANTS[variant].title) for variant in table.variants]
    legend.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="paper (hatched)"))
    group_width = 0.84
    pair_width = group_width / len(table.variants)
    bar_width = pair_width / 2
    for axis, (metric, metric_title) in zip(axes, METRICS):
        tallest = 1.0
        for b_index, backbone in enumerate(table.backbones):
            for v_index, variant in enumerate(table.variants):
                cell = table.cell(backbone, variant)
                measured, published = cell.measured_err(metric), cell.paper_err(metric)
                if measured is None and published is None:
                    continue
                left = b_index - group_width / 2 + v_index * pair_width
                bars = (
                    (left + bar_width / 2, measured, "missing", {"color": colours[variant]}),
                    (left + 1.5 * bar_width, published, "not in paper",
                     {"facecolor": "white", "edgecolor": colours[variant], "hatch": "///"}),
                )
                estimate = None if measured is None else cell.error_estimate(metric)
                for x, value, absent_text, style in bars:
                    if value is None:
                        axis.text(x, 0.3, absent_text, rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
                        continue
                    axis.bar(x, value, width=bar_width * 0.92, **style)
                    top = value
                    if value is measured and estimate is not None:  # the 95% interval over the test images
                        axis.errorbar(x, value, yerr=[[value - estimate.low], [estimate.high - value]], fmt="none",
                                      ecolor="black", capsize=3, linewidth=1)
                        top = estimate.high
                    axis.text(x, top, f"{value:.2f}", rotation=90, ha="center", va="bottom", fontsize=7)
                    tallest = max(tallest, top)
        axis.set_xticks(range(len(table.backbones)), [_backbone_title(b) for b in table.backbones])
        axis.set_ylim(0, tallest * 1.2)
        axis.set_ylabel(metric_title)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(handles=legend, loc="upper right", fontsize=8, ncols=len(legend))
    source = PROTOCOL_SOURCES.get(table.protocol, "no numbers for this protocol").split(" (")[0]
    figure.suptitle(f"Measured (solid) vs the SPP-net paper (hatched); protocol '{table.protocol}', paper {source}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spp-cls table",
        description="Print the SPP-net paper's Table 2 layout with the measured errors of finished runs beside the "
        "paper's, from results.json files under run directories or from a wandb project.",
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="run directories or their parents (searched for "
                        "results.json), or results.json files")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="markdown table or one csv row per cell")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also save a bar chart, measured vs paper")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from wandb instead (needs a login)")
    parser.add_argument("--curves", action="store_true",
                        help="also print each run's learning curves (val error per epoch, from its summary.csv)")
    parser.add_argument("--protocol", default=TENVIEW, choices=TEST_PROTOCOLS,
                        help=f"test protocol to tabulate (default {TENVIEW}, the paper's 10-view)")
    return parser


def _load(args: argparse.Namespace) -> list[RunResult]:
    if args.wandb:
        skipped: list[str] = []
        results = from_wandb(args.wandb, skipped)
        for line in skipped:
            print(f"spp-cls table: skipped {line}", file=sys.stderr)
        if not results:
            raise ResultsError(f"no tested runs in wandb project {args.wandb} ({len(skipped)} skipped)")
        return results
    results = collect(args.dirs)
    if not results:
        raise ResultsError(f"no results.json found under {', '.join(args.dirs)}")
    return results


def main(argv: list[str] | None = None) -> int:
    """`spp-cls table DIR... [--format md|csv] [--plot FILE.png] [--curves] [--wandb ENTITY/PROJECT] [--protocol P]`.

    Returns 0 on success, 2 on bad input (no results, a bad results file, two results for one cell, bad flags).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if bool(args.dirs) == bool(args.wandb):
            parser.error("give run directories or --wandb ENTITY/PROJECT (one of the two)")
    except SystemExit as exit_request:  # argparse exits on --help and on bad flags; main returns instead
        return int(exit_request.code or 0)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        print(f"spp-cls table: error: --plot writes PNG, give a file name ending in .png (got {args.plot})",
              file=sys.stderr)
        return 2
    try:
        results = _load(args)
        if args.format == "csv":
            sys.stdout.write(format_csv(results, args.protocol))
            for note in table_notes(build_table(results, args.protocol)):
                print(f"spp-cls table: note: {note}", file=sys.stderr)
        else:
            sys.stdout.write(format_markdown(results, args.protocol))
        if args.curves:
            if args.wandb:
                raise ResultsError("--curves reads the summary.csv of run directories; wandb has the curves itself")
            shown = [run for cell in build_table(results, args.protocol).cells.values() for run in cell.runs]
            sys.stdout.write("\n" + format_curves(shown))
        if args.plot is not None:
            print(f"spp-cls table: plot written to {plot(results, args.plot, args.protocol)}", file=sys.stderr)
    except ResultsError as err:
        print(f"spp-cls table: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
