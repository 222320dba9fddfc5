"""The scripts under benchmarks/: they run from a checkout that is not installed, write each figure as a JSON line the
moment it is measured, keep going past a process that fails or runs over, and the GPU script ends all its steps
within its budget. On the CPU here (their GPU figures need a GPU: docs/gpu.md)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from helpers import run_hard_timeout

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
GPU_SCRIPT_STEPS = ("setup", "nets", "lrn", "profile", "decode", "windows", "tenview", "compile", "pytest")

# `python benchmarks/x.py` in a checkout nobody installed: the script's folder first on sys.path, and no installed
# spp_cls (this environment's editable install is taken out of the import system first, and checked to be gone).
AS_UNINSTALLED_SCRIPT = """
import runpy, sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path_importer_cache.clear()
script = sys.argv[1]
sys.path[0] = script.rsplit("/", 1)[0]
try:
    import spp_cls
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"spp_cls is still importable from {spp_cls.__file__}")
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("script", ["compile_times.py", "data_throughput.py", "gpu_measure.py", "rank_threads.py"])
def test_each_script_runs_from_a_checkout_that_is_not_installed(tmp_path: Path, script: str) -> None:
    run = run_hard_timeout([sys.executable, "-c", AS_UNINSTALLED_SCRIPT, str(BENCHMARKS / script), "--help"],
                           timeout=120, env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
    assert run.returncode == 0, run.stdout
    assert "usage:" in run.stdout


@pytest.mark.slow
def test_compile_times_writes_each_figure_at_once_and_records_a_process_cut_by_the_deadline(tmp_path: Path) -> None:
    """The eager figures of ZF-5 arrive before its compile is cut by the deadline; the next network, with no time
    left, is recorded as not run; the table is printed all the same."""
    out = tmp_path / "figures.jsonl"
    run = run_hard_timeout([sys.executable, str(BENCHMARKS / "compile_times.py"), "--model", "zf5_spp",
                            "convnet5_spp", "--sizes", "224,180", "--width", "0.0625", "--batch-size", "2",
                            "--steps", "1", "--device", "cpu", "--cold-only", "--deadline", "25", "--out", str(out)],
                           timeout=180, env=dict(os.environ))
    assert run.returncode == 0, run.stdout
    records = jsonl(out)
    eager = [record for record in records if record["figure"] == "train_step" and not record["compile"]]
    assert [(record["model"], record["size"]) for record in eager] == [("zf5_spp", 224), ("zf5_spp", 180)]
    assert all(record["images_per_s"] > 0 for record in eager)
    cut = {record["model"]: record["figure"] for record in records if record["figure"] in ("timed_out", "not_run")}
    assert cut == {"zf5_spp": "timed_out", "convnet5_spp": "not_run"}
    assert "zf5_spp (cold cache): over its" in run.stdout


@pytest.mark.slow
def test_the_gpu_script_ends_every_step_within_its_budget(tmp_path: Path) -> None:
    """Without a GPU its measuring steps fail at once or are cut; what matters here is the contract: every step
    recorded as done, failed, stopped or not run, within the budget, in a JSON-lines file."""
    out = tmp_path / "results"
    started = time.monotonic()
    run = run_hard_timeout(["bash", str(BENCHMARKS / "gpu_figures.sh"), "--out", str(out)], timeout=120,
                           env={**os.environ, "GPU_FIGURES_BUDGET_S": "30", "PYTHON": sys.executable}, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout
    assert elapsed < 30 + 5  # the budget, kill-after included; a few seconds of bash around it
    records = jsonl(out / "figures.jsonl")
    steps = {record["step"]: record["status"] for record in records if record["figure"] == "step"}
    assert tuple(steps) == GPU_SCRIPT_STEPS
    assert all(status == "done" or status.startswith(("failed", "over its", "not run")) for status in steps.values())
    [machine] = [record for record in records if record["figure"] == "machine"]
    assert machine["device"] is None and machine["cores"] >= 1
    assert "=== [" in (out / "gpu_figures.log").read_text()
