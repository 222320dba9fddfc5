"""jobs/local/table1.sh at CPU scale: two cells trained and tested in turn, the table printed, a rerun skips them."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from processes import run_hard_timeout

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CPU_OVERRIDES = (
    "--trainer.accelerator cpu --trainer.strategy auto --trainer.precision 32-true --trainer.max_epochs 1 "
    "--trainer.enable_progress_bar false --trainer.enable_model_summary false --model.width 0.125 "
    "--model.init kaiming --model.channels_last false --model.reference_batch 8 --data.batch_size 8 "
    "--data.num_workers 0 --data.eval_workers 0 --wandb false"
)


def test_local_table1_runs_the_cells_prints_the_table_and_skips_finished_cells(demo_shards, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "WANDB_MODE": "offline",
           "SPP_CLS_DATA": str(demo_shards), "SPP_CLS_RUNS": str(tmp_path), "SPP_CLS_CELLS": "zf5_nospp zf5_spp_single",
           "SPP_CLS_EXTRA_ARGS": CPU_OVERRIDES}
    script = str(REPO / "jobs/local/table1.sh")
    done = run_hard_timeout([script, "1"], timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    for cell in ("zf5-nospp", "zf5-spp_single"):
        results = json.loads((tmp_path / "table1" / cell / "results.json").read_text())
        assert results["num_test_images"] == 15 and results["epochs"] == 1
        assert f"{results['top1_err']:.2f}" in done.stdout
    assert "(a) no SPP" in done.stdout and "35.99" in done.stdout  # the table, with the paper beside it

    again = run_hard_timeout([script, "1"], timeout=120, env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.stdout.count("(results.json exists), skipped") == 2
    assert "on GPUs" not in again.stdout  # nothing was launched
