"""The config files: each Table 1 cell resolves, through the base and recipe files it includes, to the config it
resolved to when every cell was written out in full (tests/golden/table1_configs.json), key for key; `spp-cls
run-dir` reads the includes as LightningCLI does; a cell file holds only what makes it that cell."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from spp_cls.cli import main
from spp_cls.protocol import config_run_name
from spp_cls.train.config_file import INCLUDE_KEY, read_config, section
from spp_cls.train.lightning_cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CELLS = sorted(path for path in (CONFIGS / "table1").glob("*.yaml") if path.name != "base.yaml")
GOLDEN = Path(__file__).parent / "golden" / "table1_configs.json"
CELL_KEYS = {INCLUDE_KEY, "trainer.max_epochs", "model.backbone", "model.head", "model.size_schedule"}


def resolved(config: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """What `spp-cls fit --config CONFIG --print_config` prints, as data (the CLI's parser, without `spp-cls`'s
    set-up of wandb's process-wide settings, which would outlive this test)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_cell_resolves_to_its_recorded_config(capsys):
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == [cell.stem for cell in CELLS]
    for cell in CELLS:
        if os.environ.get("SPP_CLS_UPDATE_GOLDEN") == "1":
            golden[cell.stem] = resolved(cell, capsys)
        assert resolved(cell, capsys) == golden[cell.stem], cell.name
    if os.environ.get("SPP_CLS_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


def test_run_dir_reads_the_included_files_as_lightning_does(capsys):
    for cell in [*CELLS, CONFIGS / "demo.yaml"]:
        config = resolved(cell, capsys)
        capsys.readouterr()
        assert main(["run-dir", "--config", str(cell)]) == 0
        expected = Path(config["runs_dir"]) / config["experiment"] / config_run_name(config["model"])
        assert capsys.readouterr().out.strip() == str(expected), cell.name


def test_a_cell_file_holds_what_makes_it_that_cell_and_its_target():
    for cell in CELLS:
        text = cell.read_text()
        assert set(yaml.safe_load(text)) <= CELL_KEYS, cell.name
        assert "Paper target" in text and "Cost:" in text, cell.name
    model = section(read_config(CELLS[0]), "model")
    assert model["lr"] == 0.01 and model["init"] == "paper"  # the recipe comes from the included files


def test_an_including_file_names_its_include_first_and_then_only_dotted_keys():
    """LightningCLI applies the included file, then the keys after `config:`; a key before it would lose to the
    included file, and a nested section after it would replace the included file's whole section."""
    for path in sorted(CONFIGS.rglob("*.yaml")):
        content = yaml.safe_load(path.read_text())
        if INCLUDE_KEY not in content:
            continue
        assert next(iter(content)) == INCLUDE_KEY, path
        assert not any(isinstance(value, dict) for value in content.values()), path
        assert (path.parent / content[INCLUDE_KEY]).is_file(), path


@pytest.mark.parametrize("random_size", ["0", "1"])
def test_the_job_scripts_take_their_cells_from_configs_table1(random_size):
    """jobs/slurm/common.sh lists the cells from the folder: the 12 of Table 2, and the random-size extra on request."""
    listed = subprocess.run(["bash", "-c", "source jobs/slurm/common.sh && spp_table_cells"], cwd=CONFIGS.parent,
                            env={**os.environ, "SPP_CLS_RANDOM_SIZE": random_size, "SPP_CLS_CELLS": ""},
                            capture_output=True, text=True, timeout=60, check=True).stdout.split()
    expected = [cell for cell in CELLS if random_size == "1" or not cell.stem.endswith("_spp_random")]
    assert sorted(listed) == sorted(str(cell.relative_to(CONFIGS.parent)) for cell in expected)
    assert len(listed) == 12 + (random_size == "1")


IMAGENETTE = CONFIGS / "imagenette"
IMAGENETTE_RECIPE = {  # what configs/imagenette/base.yaml changes of a Table 1 cell, key by key
    ("experiment",): "imagenette", ("trainer", "devices"): 1, ("trainer", "strategy"): "auto",
    ("trainer", "max_epochs"): 30, ("model", "init"): "kaiming", ("model", "lr_schedule"): "milestones",
    ("model", "milestones"): [20, 27], ("data", "root"): "/data/imagenette-wds", ("data", "batch_size"): 128,
}


def test_each_imagenette_cell_is_its_table1_cell_with_the_imagenette_recipe(capsys):
    cells = sorted(path.name for path in IMAGENETTE.glob("*.yaml") if path.name != "base.yaml")
    assert cells == [cell.name for cell in CELLS]  # the same cells as the table
    for name in cells:
        table1, imagenette = resolved(CONFIGS / "table1" / name, capsys), resolved(IMAGENETTE / name, capsys)
        for keys, value in IMAGENETTE_RECIPE.items():
            *sections, key = keys
            expected = table1
            for section_name in sections:
                expected = expected[section_name]
            expected[key] = value
        assert imagenette == table1, name
