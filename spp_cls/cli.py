"""The `spp-cls` command.

    spp-cls fit|validate|test --config FILE [overrides]   LightningCLI over SppClassifier + ShardDataModule
    spp-cls shards ...                                    ImageNet folder -> webdataset shards
    spp-cls table RUN_DIR...                              the paper's Table 2 from results.json files
    spp-cls dashboard --entity ENTITY [--group table1]    the wandb report that compares the cells (needs a login)
    spp-cls models                                        the registered networks and their paper targets
    spp-cls demo                                          the whole path on synthetic data, on the CPU
    spp-cls bench                                         throughput of models, data path and harness
    spp-cls bench windows                                 the paper's Table 9: SPP windows against R-CNN crops
    spp-cls predict --ckpt CKPT IMAGE... [--boxes F.json] classify image files (or windows of them)
    spp-cls run-dir --config FILE [--runs_dir DIR] [--seed_everything N]   where that run lives (job scripts)
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test")
USAGE = __doc__ or ""


def main(argv: list[str] | None = None) -> int:
    # Before torch is imported: OpenMP threads that spin while idle steal the cores the loader workers need (on a
    # 2-core machine this made the training step 2-4x slower); passive waiting costs nothing on GPU runs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE.strip("\n"))
        return 0 if args else 2
    command, rest = args[0], args[1:]
    handlers: dict[str, Callable[[list[str]], int]] = {
        **dict.fromkeys(LIGHTNING_COMMANDS, _lightning),
        "shards": _shards,
        "table": _table,
        "dashboard": _dashboard,
        "models": _models,
        "demo": _demo,
        "bench": _bench,
        "predict": _predict,
        "run-dir": _run_dir,
    }
    if command not in handlers:
        print(f"spp-cls: error: unknown command {command!r}; commands: {', '.join(handlers)}", file=sys.stderr)
        return 2
    try:
        return handlers[command](args if command in LIGHTNING_COMMANDS else rest)
    except (FileNotFoundError, ValueError) as error:
        if os.environ.get("SPP_CLS_DEBUG") == "1":
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if command not in LIGHTNING_COMMANDS or _global_rank_zero():
            print(f"spp-cls: error: {message} (SPP_CLS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


def _global_rank_zero() -> bool:
    """Whether this process prints a run's error: every rank of a DDP run meets the same bad input (the data stops
    them all at the same batch), and one line says it."""
    from pytorch_lightning.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def _shards(argv: list[str]) -> int:
    from .data.shards.convert import main as shards_main

    return shards_main(argv)


def _table(argv: list[str]) -> int:
    from .report.table import main as table_main

    return table_main(argv)


def _dashboard(argv: list[str]) -> int:
    try:
        from .report.dashboard import main as dashboard_main
    except ModuleNotFoundError as missing:
        if missing.name != "wandb_workspaces":
            raise
        print(f"spp-cls dashboard: error: {missing.name} is not installed: pip install 'spp-cls[dashboard]'",
              file=sys.stderr)
        return 2
    return dashboard_main(argv)


def _models(argv: list[str]) -> int:
    from .models.summary import models_table

    if argv:
        print("spp-cls models takes no arguments", file=sys.stderr)
        return 2
    print(models_table())
    return 0


def _lightning(argv: list[str]) -> int:
    from .train import requeue_signal

    if requeue_signal.under_slurm():
        requeue_signal.listen()  # before the seconds of imports and set-up, in which SIGUSR1 would kill the task
    from .train.lightning_cli import run_lightning

    return run_lightning(argv)


def _demo(argv: list[str]) -> int:
    from .demo import main as demo_main

    return demo_main(argv)


def _bench(argv: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(argv)


def _predict(argv: list[str]) -> int:
    from .predict import main as predict_main

    return predict_main(argv)


def _run_dir(argv: list[str]) -> int:
    """Print the run directory of a config without importing Lightning (job scripts use it to skip finished cells)."""
    import argparse

    from .protocol import config_run_name, run_seed
    from .train.config_file import read_config, section
    from .train.rundir import run_dir

    parser = argparse.ArgumentParser(prog="spp-cls run-dir")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--runs_dir", help="overrides the config's runs_dir")
    parser.add_argument("--experiment", help="overrides the config's experiment")
    parser.add_argument("--seed_everything", type=int, help="overrides the config's seed")
    args = parser.parse_args(argv)
    config = read_config(args.config)
    runs_dir = args.runs_dir or config.get("runs_dir", "runs")
    experiment = args.experiment or config.get("experiment", "default")
    seed = run_seed(config.get("seed_everything", 0) if args.seed_everything is None else args.seed_everything)
    print(run_dir(runs_dir, experiment, config_run_name(section(config, "model"), seed)))
    return 0


