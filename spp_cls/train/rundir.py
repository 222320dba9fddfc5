"""The run directory: one deterministic place per (experiment, backbone, variant) for checkpoints, config,
summary.csv, results.json and the wandb run id, so a requeued or restarted job finds its own state again."""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

CHECKPOINT_LAST = "last.ckpt"
CHECKPOINT_BEST = "best.ckpt"
WANDB_ID_FILE = "wandb_id.txt"


def run_dir(runs_dir: str | Path, experiment: str, run_name: str) -> Path:
    """runs_dir/experiment/run_name, e.g. runs/table1/zf5-spp_multi."""
    return Path(runs_dir) / experiment / run_name


def resume_checkpoint(directory: Path) -> Path | None:
    """The checkpoint `fit` continues from: the newest of the preemption (HPC) checkpoints and last.ckpt, or None.

    `hpc_ckpt_N.ckpt` is written into this directory (the trainer's default_root_dir) when SLURM signals a requeue
    (see requeue.py); last.ckpt is written at every epoch end. Whichever is newer holds the later state.
    """
    candidates = [*directory.glob("hpc_ckpt_*.ckpt"), directory / CHECKPOINT_LAST]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime_ns) if existing else None


def named_checkpoint(directory: Path, ckpt_path: str | None) -> Path | None:
    """Resolve "last" / "best" to files of this run directory; other values are taken as paths."""
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "best"):
        path = directory / (CHECKPOINT_LAST if ckpt_path == "last" else CHECKPOINT_BEST)
    else:
        path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}; train this run first with `spp-cls fit --config ...`")
    return path


def wandb_run_id(directory: Path) -> str:
    """The wandb id of this run, created once and kept in the run directory so a resumed job logs into the same run.

    Every rank may call this at start-up; the exclusive create makes exactly one id win.
    """
    path = directory / WANDB_ID_FILE
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return _read_id(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(4) + "\n")
    return _read_id(path)


def _read_id(path: Path) -> str:
    run_id = path.read_text().strip()
    if not run_id:  # another rank created the file and has not written it yet
        for _ in range(100):
            time.sleep(0.05)
            run_id = path.read_text().strip()
            if run_id:
                break
    if not run_id:
        raise RuntimeError(f"{path} is empty; delete it to start a new wandb run")
    return run_id
