"""Collect the outcome of finished runs: `results.json` files in run directories, or runs in a wandb project.

Every run writes one `results.json` next to its checkpoints (docs/layout.md); the table is built from these files, never
from scraped logs. This module reads and checks them; it imports nothing of `spp_cls.train` nor Lightning.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

from spp_cls.outcomes import outcomes_filename
from spp_cls.protocol import (
    DASHBOARD_JOB_TYPE,
    RESULTS_FILE,
    RESULTS_KEYS,
    RESULTS_PATTERN,
    VARIANTS,
    ResultsRecord,
    run_name,
    split_run_name,
    top1_metric,
    top5_metric,
    variant_name,
)


class ResultsError(ValueError):
    """A results file or wandb run that cannot be used; the message is one line naming its source."""


@dataclass(frozen=True)
class RunResult:
    """The outcome of one trained and tested run: one cell of the table under one test protocol.

    Attributes:
        source: where it was read from (the results.json path, or the wandb run's URL), for messages.
        top1_err: percent, as in the paper; likewise top5_err.
        num_test_images, epochs, ...: None only for wandb runs that did not log them.
    """

    backbone: str
    variant: str
    experiment: str
    test_protocol: str
    top1_err: float
    top5_err: float
    source: str
    num_test_images: int | None = None
    epochs: int | None = None
    train_images_per_s: float | None = None
    wall_time_s: float | None = None
    git_commit: str | None = None
    config_hash: str | None = None
    run_dir: str | None = None
    finished_at: str | None = None
    seed: int = 0
    outcomes_file: str | None = None
    """The per-image outcomes of the same test (`spp_cls.outcomes`), beside the results file; None where there are
    none (results written before outcomes were, or read from wandb)."""

    @property
    def cell(self) -> tuple[str, str, str]:
        """The (backbone, variant, test_protocol) cell of the table; several seeds of a cell share it."""
        return (self.backbone, self.variant, self.test_protocol)

    @property
    def run_key(self) -> tuple[str, str, str, int]:
        """The (backbone, variant, test_protocol, seed) key that at most one result may claim."""
        return (*self.cell, self.seed)


def _text(key: str, value: Any, source: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise ResultsError(f"{source}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _number(key: str, value: Any, source: str, *, upper: float = math.inf) -> float:
    # NaN fails the range test too.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
        limit = f"0 to {upper:g}" if math.isfinite(upper) else ">= 0"
        raise ResultsError(f"{source}: '{key}' must be a number {limit}, got {value!r}")
    return float(value)


def _count(key: str, value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ResultsError(f"{source}: '{key}' must be a whole number >= 0, got {value!r}")
    return value


_RECORD_FIELDS = {entry.name: entry for entry in fields(ResultsRecord)}
REQUIRED_KEYS = tuple(key for key in RESULTS_KEYS if _RECORD_FIELDS[key].default is MISSING)
"""The keys every results file holds; the others came later and have their defaults in files written before."""


def _check(key: str, value: Any, source: str) -> Any:
    """One contract value, checked by the type `ResultsRecord` gives its key."""
    if key == "variant" and value not in VARIANTS:
        raise ResultsError(f"{source}: variant {value!r} is not one of {', '.join(VARIANTS)}")
    entry = _RECORD_FIELDS[key]
    if entry.type == "float":
        return _number(key, value, source, upper=100 if entry.metadata.get("percent") else math.inf)
    if entry.type == "int":
        return _count(key, value, source)
    return _text(key, value, source, nullable=entry.type == "str | None")


def result_from_record(record: Mapping[str, Any], source: str) -> RunResult:
    """Check one results.json record against the contract and turn it into a RunResult.

    Raises:
        ResultsError: a key is missing or holds a value of the wrong kind; the message names `source`.
    """
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ResultsError(f"{source}: missing key(s) {', '.join(missing)}")
    return RunResult(source=source, **{key: _check(key, record[key], source) for key in RESULTS_KEYS if key in record})


def load_result(path: str | Path) -> RunResult:
    """Read one results.json.

    Raises:
        ResultsError: unreadable, not valid JSON, not an object, or not matching the contract (one line).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{source}: cannot read: {err}") from err
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(record).__name__}")
    result = result_from_record(record, source)
    outcomes = Path(path).parent / outcomes_filename(result.test_protocol)
    return replace(result, outcomes_file=str(outcomes)) if outcomes.is_file() else result


def check_unique_runs(results: Iterable[RunResult]) -> None:
    """Refuse two results for the same (backbone, variant, protocol, seed): the table must not silently pick one.

    Raises:
        ResultsError: naming both sources.
    """
    seen: dict[tuple[str, str, str, int], RunResult] = {}
    for result in results:
        other = seen.setdefault(result.run_key, result)
        if other is not result:
            backbone, variant, protocol, seed = result.run_key
            raise ResultsError(
                f"two results for {run_name(backbone, variant, seed)} (seed {seed}) under test protocol {protocol}: "
                f"{other.source} and {result.source}; pass only one of them"
            )


def find_result_files(path: str | Path) -> list[Path]:
    """The results files at or under `path` (a file is taken as is), sorted: `results.json` (the 10-view test) and
    `results_<protocol>.json` (other test protocols of the same run).

    Raises:
        ResultsError: `path` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ResultsError(f"{path}: no such file or directory")
    return sorted([*path.rglob(RESULTS_FILE), *path.rglob(RESULTS_PATTERN)])


def collect(paths: Iterable[str | Path]) -> list[RunResult]:
    """Load every results.json found in the given run directories, their parents, or the files themselves.

    Returns an empty list when no file is found; the caller decides whether that is an error.

    Raises:
        ResultsError: a path does not exist, a file is bad, or two results claim the same cell.
    """
    files: dict[Path, Path] = {}  # resolved -> as found, so one file reached by two paths is read once
    for path in paths:
        for file in find_result_files(path):
            files.setdefault(file.resolve(), file)
    results = [load_result(file) for file in files.values()]
    check_unique_runs(results)
    return results


class WandbRunLike(Protocol):
    """What `result_from_wandb_run` reads of a `wandb.apis.public.Run` (a plain object will do)."""

    name: str | None
    group: str | None
    url: str
    config: Mapping[str, Any]
    summary: Mapping[str, Any]


def _config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """A LightningCLI config value by its dotted name, whether the config was logged nested or flattened."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            node = None
            break
        node = node[part]
    if node is not None:
        return node
    return config.get(dotted, config.get(dotted.replace(".", "/")))


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _config_variant(config: Mapping[str, Any]) -> str | None:
    """The variant the logged config trained (`model.head` + `model.size_schedule`), None if it does not say."""
    head, schedule = _config_value(config, "model.head"), _config_value(config, "model.size_schedule")
    if head is None or schedule is None:
        return None
    try:
        return variant_name(head, schedule)
    except ValueError:
        return None


def result_from_wandb_run(run: WandbRunLike) -> RunResult:
    """Turn one wandb run into a RunResult; pure, so it is tested on a plain object.

    Reads, first found wins: the results.json keys if the run logged them into its summary (the recorder does), then
    the LightningCLI config (`model.backbone`, the variant of `model.head` + `model.size_schedule`, `data.test_views`),
    then the run name `{backbone}-{variant}`.
    Errors come from `summary["test/top1_err"]` and `summary["test/top5_err"]` (else `top1_err` / `top5_err`).

    Raises:
        ResultsError: the run has no test errors yet, or no backbone, variant or test protocol can be found.
    """
    source = f"wandb run {run.name or '?'} ({run.url})"
    summary, config = run.summary, run.config
    named = split_run_name(run.name or "")
    # a name of another form still offers its parts, so that a wrong variant is named as such
    name_backbone, name_variant, name_seed = named or (*(run.name or "").rpartition("-")[::2], None)
    config_seed = _config_value(config, "seed_everything")
    record: dict[str, Any] = {
        "backbone": _first(summary.get("backbone"), _config_value(config, "model.backbone"), name_backbone or None),
        "variant": _first(summary.get("variant"), _config_variant(config), name_variant or None),
        "experiment": _first(summary.get("experiment"), run.group, "(no group)"),
        "test_protocol": _first(summary.get("test_protocol"), _config_value(config, "data.test_views")),
        "top1_err": _first(summary.get(top1_metric("test")), summary.get("top1_err")),
        "top5_err": _first(summary.get(top5_metric("test")), summary.get("top5_err")),
    }
    absent = [key for key, value in record.items() if value is None]
    if absent:
        raise ResultsError(f"{source}: no {', '.join(absent)} (not tested yet, or not logged)")
    seed = _first(summary.get("seed"), config_seed if type(config_seed) is int else None, name_seed)
    if seed is not None:
        record["seed"] = seed
    # .get only: a live wandb.Run's summary (read by the dashboard's tests) answers neither `in` nor iteration
    record.update({key: value for key in RESULTS_KEYS if key not in record and (value := summary.get(key)) is not None})
    return RunResult(source=source, **{key: _check(key, value, source) for key, value in record.items()})


def from_wandb(entity_project: str, skipped: list[str] | None = None) -> list[RunResult]:
    """Read the results of every tested run in a wandb project through `wandb.Api()`.

    Needs a network and a wandb login. NOTE: the wandb API cannot be reached from the development machine, so only
    the conversion (`result_from_wandb_run`) is tested; this function itself is not.

    Args:
        entity_project: "ENTITY/PROJECT".
        skipped: if given, gets one line per run that could not be used (e.g. still training), instead of the run
            being dropped without a word.

    Raises:
        ResultsError: the project cannot be read, or two runs claim the same cell.
    """
    if entity_project.count("/") != 1 or not all(entity_project.split("/")):
        raise ResultsError(f"--wandb wants ENTITY/PROJECT, got {entity_project!r}")
    import wandb  # imported here: about 1 s, and only this path needs it

    results = []
    try:
        for run in wandb.Api().runs(entity_project):
            if run.job_type == DASHBOARD_JOB_TYPE:
                continue  # the figure run of `spp-cls dashboard`: it holds no result, so it is no skipped run either
            try:
                results.append(result_from_wandb_run(run))
            except ResultsError as err:
                if skipped is not None:
                    skipped.append(str(err))
    except (wandb.errors.Error, ValueError, OSError) as err:
        message = " ".join(str(err).split())
        raise ResultsError(f"cannot read wandb project {entity_project}: {message}") from err
    check_unique_runs(results)
    return results
