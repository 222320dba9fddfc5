"""Per-image outcomes: what each test image got, written by every `spp-cls test` beside its results file.

One gzipped CSV per test protocol (`outcomes.csv.gz` for the 10-view table protocol, `outcomes_<protocol>.csv.gz`
for the others), one row per test image, sorted by key:

    key,label,top5
    val-00000000,4,5 4 7 3 1

`key` is the sample's key in the val shards (its `json` member names the source file); `top5` holds the predicted
classes in order of score (fewer when the data has fewer than five classes). Two cells
tested on the same images can then be compared image by image (paired), which is what tells a gain from noise: see
`spp_cls.report.intervals`. ImageNet's 50,000 val images take about 0.7 MB.

Written by the training side, read by the report; stdlib only, so the table needs neither torch nor Lightning.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .protocol import TABLE_PROTOCOL

OUTCOMES_FILE = "outcomes.csv.gz"
COLUMNS = ("key", "label", "top5")


class OutcomesError(ValueError):
    """An outcomes file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class ImageOutcome:
    """One test image: its sample key, its label and the classes predicted for it, best first."""

    key: str
    label: int
    top5: tuple[int, ...]

    @property
    def top1_correct(self) -> bool:
        return bool(self.top5) and self.top5[0] == self.label

    @property
    def top5_correct(self) -> bool:
        return self.label in self.top5


def outcomes_filename(protocol: str) -> str:
    """outcomes.csv.gz for the paper's 10-view test, outcomes_<protocol>.csv.gz for the others (as results files)."""
    return OUTCOMES_FILE if protocol == TABLE_PROTOCOL else f"outcomes_{protocol}.csv.gz"


def check_unique(outcomes: Sequence[ImageOutcome]) -> None:
    """Raise if an image appears twice: an evaluation must see every image exactly once."""
    seen: set[str] = set()
    for outcome in outcomes:
        if outcome.key in seen:
            raise OutcomesError(f"image {outcome.key!r} was evaluated twice; an evaluation sees each image once")
        seen.add(outcome.key)


def write_outcomes(path: Path, outcomes: Iterable[ImageOutcome]) -> None:
    """Write the file atomically (a reader never sees half of it), rows sorted by key; `mtime=0` keeps the bytes a
    function of the outcomes alone."""
    rows = sorted(outcomes, key=lambda outcome: outcome.key)
    check_unique(rows)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((row.key, row.label, " ".join(map(str, row.top5))) for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(text.getvalue().encode(), compresslevel=9, mtime=0))
    os.replace(tmp, path)


def read_outcomes(path: Path) -> list[ImageOutcome]:
    """The rows of an outcomes file, in file order.

    Raises:
        OutcomesError: unreadable, not gzip, wrong columns, a malformed row or a repeated key (one line).
    """
    try:
        text = gzip.decompress(path.read_bytes()).decode()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise OutcomesError(f"{path}: cannot read ({error})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if tuple(header or ()) != COLUMNS:
        raise OutcomesError(f"{path}: expected the columns {','.join(COLUMNS)}, found {header}")
    outcomes = []
    for line, row in enumerate(reader, start=2):
        try:
            key, label, top5 = row
            outcomes.append(ImageOutcome(key, int(label), tuple(int(c) for c in top5.split())))
        except ValueError:
            raise OutcomesError(f"{path}, line {line}: expected key,label,top5 (classes separated by spaces), "
                                f"found {row}") from None
    try:
        check_unique(outcomes)
    except OutcomesError as error:
        raise OutcomesError(f"{path}: {error}") from None
    return outcomes
