"""pytest plugin of the GPU script (benchmarks/gpu_figures.sh): each test's outcome as one JSON line, written the
moment the test ends, to the file that SPP_CLS_TEST_OUTCOMES names; a failure with the last lines of its report, a
skip with its reason. Loaded with ``-p pytest_outcomes`` (benchmarks/ on PYTHONPATH); does nothing without the
variable."""
from __future__ import annotations

import json
import os
from typing import Any

FAILURE_LINES = 15


def pytest_runtest_logreport(report: Any) -> None:
    path = os.environ.get("SPP_CLS_TEST_OUTCOMES")
    if not path or (report.when != "call" and report.passed):
        return
    record: dict[str, Any] = {"figure": "test", "test": report.nodeid, "phase": report.when,
                              "outcome": report.outcome, "seconds": round(report.duration, 2)}
    if report.failed:
        record["failure"] = report.longreprtext.splitlines()[-FAILURE_LINES:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        record["reason"] = report.longrepr[2]
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
