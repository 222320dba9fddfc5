"""The path a new user takes: `spp-cls fit`, `test` and `predict` as commands, with no wandb login, no WANDB_*
variable and an empty HOME; and a shared checkpoint that would run code when unpickled is refused, never run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cpu_args, new_user_env, offline_run_ids

pytestmark = pytest.mark.slow
SPP_CLS = str(Path(sys.executable).parent / "spp-cls")


class _RunsCommand:
    """Unpickling this runs a shell command (what a malicious shared checkpoint would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def _spp_cls(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SPP_CLS, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
                          check=False)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A working folder and the environment of a new user on a machine with SLURM installed (`srun` on the PATH,
    outside any allocation), as on every cluster login node."""
    root = tmp_path_factory.mktemp("user")
    slurm_bin = root / "slurm-bin"
    slurm_bin.mkdir()
    srun = slurm_bin / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    return root, new_user_env(root / "home", PATH=f"{slurm_bin}:{os.environ['PATH']}")


@pytest.fixture(scope="module")
def trained(user, demo_shards: Path) -> tuple[list[str], Path, subprocess.CompletedProcess]:
    """`spp-cls fit` for one epoch as the new user (wandb left at its default: on)."""
    root, env = user
    args = cpu_args(demo_shards, root / "runs", "--trainer.max_epochs", "1")
    return args, root / "runs" / "t" / "zf5-spp_multi", _spp_cls("fit", *args, env=env, cwd=root)


def test_fit_and_test_run_offline_without_a_wandb_login_and_say_where_the_run_lives(user, trained):
    root, env = user
    args, run, fit = trained
    assert fit.returncode == 0, fit.stderr[-3000:]
    output = fit.stdout + fit.stderr
    assert "Traceback" not in output and "wandb login" not in output
    wandb_lines = [line for line in output.splitlines() if line.startswith("wandb:")]
    assert len(wandb_lines) == 1 and wandb_lines[0].startswith(f"wandb: offline run in {run / 'wandb'}/offline-run-")
    assert wandb_lines[0].endswith("(`wandb sync` uploads it)")
    assert offline_run_ids(run) == {(run / "wandb_id.txt").read_text().strip()}
    assert "srun" not in output  # Lightning's hint on any machine with SLURM installed
    assert not list(Path(env["HOME"]).rglob("*.netrc"))

    test = _spp_cls("test", *args, env=env, cwd=root)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "Traceback" not in test.stdout + test.stderr
    assert json.loads((run / "results.json").read_text())["num_test_images"] == 15
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # the test joined the same offline run


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_by_test_fit_and_predict(user, trained, tmp_path,
                                                                                          imagenet_folder,
                                                                                          demo_shards):
    root, env = user
    args, run, fit = trained
    assert fit.returncode == 0, fit.stderr[-3000:]
    marker = tmp_path / "the-checkpoint-ran-this"
    checkpoint = torch.load(run / "last.ckpt", weights_only=False)
    checkpoint["hyper_parameters"]["note"] = _RunsCommand(f"touch {marker}")
    shared = tmp_path / "shared.ckpt"
    torch.save(checkpoint, shared)

    for command in (["test", *args, "--ckpt_path", str(shared)],
                    ["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", str(shared)]):
        done = _spp_cls(*command, env=env, cwd=root)
        assert done.returncode == 2, (command[0], done.stderr[-3000:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("spp-cls: error:")]
        assert len(errors) == 1 and f"refused to load checkpoint {shared}" in errors[0], done.stderr[-3000:]
        assert "Traceback" not in done.stderr
    image = next(imagenet_folder.rglob("*.JPEG"))
    predict = _spp_cls("predict", "--ckpt", str(shared), "--manifest", str(demo_shards), str(image), env=env, cwd=root)
    assert predict.returncode == 2 and predict.stderr.startswith(f"spp-cls predict: error: cannot load checkpoint "
                                                                 f"{shared}"), predict.stderr[-3000:]
    assert not marker.exists()
