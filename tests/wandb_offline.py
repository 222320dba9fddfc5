"""Read which wandb run ids a run directory's offline logs belong to."""

from pathlib import Path


def offline_run_ids(run_dir: Path) -> set[str]:
    """The run id of every offline start under ``run_dir/wandb``.

    Each start gets a folder ``offline-run-<time>-<id>`` (with ``-1``, ``-2``... appended when two starts of one run
    fall in the same second), so the id is read from the ``run-<id>.wandb`` file inside, not from the folder name.
    """
    folders = list((run_dir / "wandb").glob("offline-run-*"))
    assert folders, f"no offline wandb run under {run_dir}"
    ids = set()
    for folder in folders:
        (log,) = folder.glob("run-*.wandb")
        ids.add(log.stem.removeprefix("run-"))
    return ids
