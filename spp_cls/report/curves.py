"""`spp-cls table --curves`: the learning curves of the tested runs, from the summary.csv beside each results file.

One markdown table per metric: a row per epoch, a column per run, with the input size the run trained at that epoch,
so that the multi-size runs' 224/180 alternation shows beside the errors it produces.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from spp_cls.protocol import SUMMARY_COLUMNS, SUMMARY_FILE, run_name
from spp_cls.report.results import ResultsError, RunResult

CURVE_METRICS = (("val_top1_err", "val top-1 error (%), center crop"), ("val_top5_err", "val top-5 error (%)"))


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of one summary.csv.

    Raises:
        ResultsError: unreadable, or without the columns the recorder writes (one line naming the file).
    """
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ResultsError(f"{path}: cannot read ({error})") from None
    if not set(SUMMARY_COLUMNS) <= set(columns):
        raise ResultsError(f"{path}: expected the columns {','.join(SUMMARY_COLUMNS)}, found {','.join(columns)}")
    return rows


def _cell(value: str, size: str) -> str:
    return "—" if not value else f"{float(value):.2f} @{size}"


def format_curves(results: Sequence[RunResult]) -> str:
    """The curves of the runs whose results files have a summary.csv beside them (one run per file, in the order
    given); runs without one are listed as such."""
    runs: list[tuple[str, list[dict[str, str]]]] = []
    without: list[str] = []
    for result in results:
        name = run_name(result.backbone, result.variant, result.seed)
        summary = Path(result.source).parent / SUMMARY_FILE
        if summary.is_file():
            runs.append((name, read_summary(summary)))
        else:
            without.append(name)
    lines = ["## Learning curves", "", "Each value: the epoch's error @ the input size it trained at."]
    epochs = max((len(rows) for _, rows in runs), default=0)
    for key, title in CURVE_METRICS:
        lines += ["", f"{title}:", "", "| epoch | " + " | ".join(name for name, _ in runs) + " |",
                  "|---:|" + "---:|" * len(runs)]
        for epoch in range(epochs):
            values = [_cell(rows[epoch][key], rows[epoch]["train_size"]) if epoch < len(rows) else "—"
                      for _, rows in runs]
            lines.append(f"| {epoch} | " + " | ".join(values) + " |")
    if without:
        lines += ["", f"No summary.csv beside the results of: {', '.join(without)}."]
    return "\n".join(lines) + "\n"
