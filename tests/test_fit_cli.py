"""`spp-cls fit|test` end to end on real shards, in process: run directory, summary, resume, results, bad input."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import cpu_args, errors_of, offline_run_ids, read_summary, shard_keys
from pytorch_lightning import Callback

from spp_cls.cli import main
from spp_cls.outcomes import read_outcomes
from spp_cls.train.lightning_cli import build_cli

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "table1" / "zf5_spp_multi.yaml"


def test_fit_writes_the_run_directory_and_resume_equals_an_uninterrupted_run(demo_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["fit", *cpu_args(demo_shards, straight, "--trainer.max_epochs", "3")]) == 0
    assert main(["fit", *cpu_args(demo_shards, interrupted, "--trainer.max_epochs", "1")]) == 0
    run = interrupted / "t" / "zf5-spp_multi"
    wandb_id = (run / "wandb_id.txt").read_text()
    assert [row["epoch"] for row in read_summary(run)] == ["0"]
    assert main(["fit", *cpu_args(demo_shards, interrupted, "--trainer.max_epochs", "3")]) == 0

    reference = straight / "t" / "zf5-spp_multi"
    for directory in (reference, run):
        assert {"last.ckpt", "best.ckpt", "config.yaml", "summary.csv", "wandb_id.txt"} <= {
            p.name for p in directory.iterdir()}
    resumed_rows, reference_rows = read_summary(run), read_summary(reference)
    assert [row["train_size"] for row in resumed_rows] == ["224", "180", "224"]
    for column in ("epoch", "train_size", "lr", "train_loss", "val_top1_err", "val_top5_err"):
        assert [row[column] for row in resumed_rows] == [row[column] for row in reference_rows], column

    resumed, uninterrupted = (torch.load(d / "last.ckpt", weights_only=False) for d in (run, reference))
    assert resumed["epoch"] == uninterrupted["epoch"] == 2 and resumed["global_step"] == uninterrupted["global_step"]
    for key, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], tensor), key
    assert resumed["spp_cls"]["lr_scheduler"] == uninterrupted["spp_cls"]["lr_scheduler"]
    assert resumed["spp_cls"]["lr_scheduler"]["best"] == min(float(row["val_top1_err"]) for row in reference_rows)
    momentum = [s["momentum_buffer"] for s in resumed["optimizer_states"][0]["state"].values()]
    expected = [s["momentum_buffer"] for s in uninterrupted["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected))
    assert resumed["spp_cls"]["epochs_completed"] == 3 and resumed["spp_cls"]["train_images"] == 3 * 56

    # the resumed job logged into the same wandb run: two starts, one id
    assert (run / "wandb_id.txt").read_text() == wandb_id
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2
    assert offline_run_ids(run) == {wandb_id.strip()}


def test_test_writes_results_and_outcomes_and_another_seed_is_its_own_run(demo_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "1", "--wandb", "false")
    assert main(["fit", *args]) == 0
    assert main(["test", *args]) == 0
    results = json.loads((tmp_path / "t" / "zf5-spp_multi" / "results.json").read_text())
    assert results["backbone"] == "zf5" and results["variant"] == "spp_multi"
    assert results["test_protocol"] == "tenview" and results["num_test_images"] == 15
    assert results["epochs"] == 1 and results["train_images_per_s"] > 0
    assert 0 <= results["top5_err"] <= results["top1_err"] <= 100
    assert len(results["config_hash"]) == 64
    outcomes = read_outcomes(tmp_path / "t" / "zf5-spp_multi" / "outcomes.csv.gz")
    assert [o.key for o in outcomes] == sorted(shard_keys(demo_shards / "val"))  # each image once, sorted by key
    assert all(len(o.top5) == 5 and len(set(o.top5)) == 5 for o in outcomes)
    assert errors_of(outcomes) == (results["top1_err"], results["top5_err"])

    assert main(["table", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert f"{results['top1_err']:.2f} [" in table and "34.60" in table  # measured beside the paper's ZF-5 (c)

    # another seed of the same cell: its own run, resumed like any other, averaged with seed 0 by the table
    for command in ("fit", "test"):
        assert main([command, *args, "--seed_everything", "1"]) == 0
    plain, seeded = tmp_path / "t" / "zf5-spp_multi", tmp_path / "t" / "zf5-spp_multi-seed1"
    assert [json.loads((run / "results.json").read_text())["seed"] for run in (plain, seeded)] == [0, 1]
    assert "seed_everything: 1" in (seeded / "config.yaml").read_text()
    checkpoints = [torch.load(run / "last.ckpt", weights_only=True) for run in (plain, seeded)]
    assert [checkpoint["hyper_parameters"]["seed"] for checkpoint in checkpoints] == [0, 1]  # model.seed follows it
    assert not torch.equal(*(checkpoint["state_dict"]["net.fc8.weight"] for checkpoint in checkpoints))
    capsys.readouterr()
    assert main(["run-dir", "--config", str(CONFIG), "--runs_dir", str(tmp_path), "--experiment", "t",
                 "--seed_everything", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(seeded)

    # the seeded run resumes like any other, and the plain one is left alone
    assert main(["fit", *args, "--seed_everything", "1", "--trainer.max_epochs", "2"]) == 0
    assert [row["epoch"] for row in read_summary(seeded)] == ["0", "1"]
    assert [row["epoch"] for row in read_summary(plain)] == ["0"]

    capsys.readouterr()
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    errors = [json.loads((run / "results.json").read_text())["top1_err"] for run in (plain, seeded)]
    assert "| zf5-spp_multi | 0 |" in out and "| zf5-spp_multi | 1 |" in out
    assert f"{sum(errors) / 2:.2f} ±" in out  # the mean of the two seeds with their spread
    with pytest.raises(SystemExit) as exit_:  # a parse error: LightningCLI's parser exits
        main(["fit", *args, "--seed_everything", "true"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and errors[-1].startswith("spp-cls: error: ")
    assert "seed_everything must be a whole number" in errors[-1]


def test_the_module_is_told_the_data_s_test_protocol_by_the_cli(demo_shards, tmp_path):
    for protocol in ("tenview", "tenview_fmap", "full"):
        cli = build_cli(cpu_args(demo_shards, tmp_path, "--data.test_views", protocol), run=False)
        assert cli.model.test_protocol.name == cli.datamodule.test_views == protocol
        assert "test_views" not in cli.model.hparams  # the run's protocol, not the trained network's


def test_bad_input_is_one_line_and_exit_2(demo_shards, tmp_path, capsys):
    missing = tmp_path / "no-such-shards"
    assert main(["fit", *cpu_args(missing, tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert str(missing) in err[-1] and "spp-cls shards" in err[-1]

    assert main(["fit", *cpu_args(demo_shards, tmp_path, "--model.backbone", "zf6")]) == 2
    assert "known backbones: zf5, convnet5, overfeat5, overfeat7" in capsys.readouterr().err

    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  widht: 0.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *cpu_args(demo_shards, tmp_path), "--config", str(typo)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "widht" in err[0]

    assert main(["test", *cpu_args(demo_shards, tmp_path / "empty")]) == 2
    assert "train this run first" in capsys.readouterr().err


def test_the_progress_bar_refreshes_every_step_on_the_cpu_and_a_configured_bar_wins(demo_shards, tmp_path):
    """On a GPU it refreshes every PROGRESS_BAR_REFRESH_STEPS steps instead (tests/test_cuda.py)."""
    args = cpu_args(demo_shards, tmp_path, "--wandb", "false", "--trainer.enable_progress_bar", "true")
    assert build_cli(args, run=False).trainer.progress_bar_callback.refresh_rate == 1
    own_bar = '{"class_path": "TQDMProgressBar", "init_args": {"refresh_rate": 5}}'
    own = build_cli([*args, f"--trainer.callbacks+={own_bar}"], run=False).trainer
    assert own.progress_bar_callback.refresh_rate == 5
    off = build_cli(cpu_args(demo_shards, tmp_path, "--wandb", "false"), run=False).trainer
    assert off.progress_bar_callback is None


def test_deterministic_turns_cudnn_autotuning_off(demo_shards, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    args = cpu_args(demo_shards, tmp_path, "--wandb", "false")
    build_cli([*args, "--trainer.deterministic", "false"], run=False)
    assert torch.backends.cudnn.benchmark is True
    try:
        build_cli(args, run=False)  # cpu_args ask for deterministic
        assert torch.backends.cudnn.benchmark is False and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


class SummaryAtSave(Callback):
    """Notes, at each checkpoint save, which epochs summary.csv holds."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.seen: list[tuple[int, list[str]]] = []

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.seen.append((trainer.current_epoch, [row["epoch"] for row in read_summary(self.run)]))


def test_each_epoch_summary_row_is_written_before_its_checkpoints(demo_shards, tmp_path):
    """So a run stopped between the two repeats that epoch (and rewrites its row) rather than skipping the row."""
    cli = build_cli(cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "2", "--wandb", "false"), run=False)
    probe = SummaryAtSave(cli.run_dir)
    cli.trainer.callbacks.append(probe)
    cli.fit(cli.model, datamodule=cli.datamodule)
    # last.ckpt at both epoch ends (best.ckpt when val error improved), each after the row of its epoch
    assert {epoch for epoch, _ in probe.seen} == {0, 1}
    for epoch, rows in probe.seen:
        assert rows == [str(e) for e in range(epoch + 1)], probe.seen
