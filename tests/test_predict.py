"""`spp-cls predict` on checkpoints that `spp-cls fit` wrote: whole images at their own size, windows of them, class
names from the run's manifest, and one error line (exit 2) for each kind of bad input."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from spp_cls.cli import main
from spp_cls.data.manifest import Manifest
from spp_cls.predict import read_image
from spp_cls.train.module import SppClassifier

pytestmark = pytest.mark.slow
TABLE1 = Path(__file__).resolve().parents[1] / "configs" / "table1"


def fit_one_epoch(config: str, shards: Path, runs: Path) -> Path:
    """Train one epoch of a table config shrunk to the CPU; return the run's last.ckpt."""
    args = ["--config", str(TABLE1 / config), "--data.root", str(shards), "--runs_dir", str(runs),
            "--experiment", "p", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.width", "0.125", "--model.init", "kaiming", "--model.channels_last", "false",
            "--model.reference_batch", "8", "--model.lr", "0.005", "--data.batch_size", "8",
            "--data.num_workers", "0", "--data.eval_workers", "0", "--wandb", "false"]
    assert main(["fit", *args]) == 0
    name = config.removesuffix(".yaml").replace("_spp_", "-spp_").replace("_nospp", "-nospp")
    return runs / "p" / name / "last.ckpt"


@pytest.fixture(scope="module")
def runs(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {"spp": fit_one_epoch("zf5_spp_single.yaml", demo_shards, folder),
            "nospp": fit_one_epoch("zf5_nospp.yaml", demo_shards, folder)}


@pytest.fixture(scope="module")
def images(imagenet_folder: Path) -> list[Path]:
    return sorted((imagenet_folder / "val").rglob("*.JPEG"))[:2]


def reported(printed: str) -> list[tuple[str, list[tuple[float, str]]]]:
    """(header, [(percent, wnid), ...]) per image or window, from predict's output."""
    blocks: list[tuple[str, list[tuple[float, str]]]] = []
    for line in printed.splitlines():
        ranked = re.match(r"\s+\d+\.\s+([\d.]+)%\s+(\S+)\s", line)
        if ranked:
            blocks[-1][1].append((float(ranked.group(1)), ranked.group(2)))
        else:
            blocks.append((line, []))
    return blocks


def test_whole_images_are_classified_at_their_own_size_with_the_manifests_names(runs, images, demo_shards, capsys):
    assert main(["predict", "--ckpt", str(runs["spp"]), *map(str, images)]) == 0
    blocks = reported(capsys.readouterr().out)
    classes = Manifest.load(demo_shards / "train").classes
    wnids = {entry.wnid for entry in classes}
    module = SppClassifier.load_from_checkpoint(runs["spp"]).eval()
    assert len(blocks) == 2
    for path, (header, ranked) in zip(images, blocks):
        image = read_image(path)
        assert header == f"{path} ({image.shape[-1]}x{image.shape[-2]})"
        assert len(ranked) == 5 and {wnid for _, wnid in ranked} == wnids
        percents = [p for p, _ in ranked]
        assert percents == sorted(percents, reverse=True) and abs(sum(percents) - 100) < 0.3
        with torch.no_grad():
            best = int(module(image[None]).argmax())
        assert ranked[0][1] == classes[best].wnid


def test_windows_are_classified_as_the_whole_image_is_when_the_window_is_the_whole_image(runs, images, tmp_path,
                                                                                        capsys):
    image = read_image(images[0])
    height, width = image.shape[-2:]
    boxes = tmp_path / "boxes.json"
    over_the_edge = [-20, -10, width + 30, height + 40]
    boxes.write_text(json.dumps({images[0].name: [[0, 0, width, height], [3, 5, width // 2, height // 2 + 7],
                                                  over_the_edge]}))
    assert main(["predict", "--ckpt", str(runs["spp"]), "--top", "3", str(images[0])]) == 0
    whole = reported(capsys.readouterr().out)
    assert main(["predict", "--ckpt", str(runs["spp"]), "--top", "3", "--boxes", str(boxes), str(images[0])]) == 0
    windows = reported(capsys.readouterr().out)
    prefix = f"{images[0]} ({width}x{height}) window"
    assert [header for header, _ in windows] == [f"{prefix} {[0, 0, width, height]}",
                                                 f"{prefix} {[3, 5, width // 2, height // 2 + 7]}",
                                                 f"{prefix} {over_the_edge}"]
    assert all(len(ranked) == 3 for _, ranked in windows)
    assert windows[0][1] == whole[0][1]  # the whole-image window covers the whole conv map: the same pyramid
    assert windows[2][1] == whole[0][1]  # a box over the edge is cut at it: here, to the whole image


def test_the_manifest_flag_names_the_classes_when_the_run_directory_has_no_config(runs, images, demo_shards,
                                                                                 tmp_path, capsys):
    lone = tmp_path / "lone.ckpt"
    shutil.copy(runs["spp"], lone)
    assert main(["predict", "--ckpt", str(lone), str(images[0])]) == 2
    assert "--manifest" in capsys.readouterr().err
    assert main(["predict", "--ckpt", str(lone), "--manifest", str(demo_shards), str(images[0])]) == 0
    assert len(reported(capsys.readouterr().out)[0][1]) == 5


def test_bad_input_is_one_error_line_and_exit_2(runs, images, imagenet_folder, demo_shards, tmp_path, capsys):
    image = read_image(images[0])
    height, width = image.shape[-2:]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a picture")
    box_files = {}
    for name, boxes in (("outside", [[width, 0, width + 10, height]]), ("reversed", [[50, 10, 20, 40]]),
                        ("good", [[0, 0, 10, 10]])):
        box_files[name] = tmp_path / f"{name}.json"
        box_files[name].write_text(json.dumps({images[0].name: boxes}))
    cases = (
        ([str(not_an_image)], "cannot read image"),
        (["--boxes", str(box_files["outside"]), str(images[0])], f"lies wholly outside the image ({width}x{height})"),
        (["--boxes", str(box_files["reversed"]), str(images[0])], "has no area"),
        (["--boxes", str(box_files["good"]), str(images[1])], "has no boxes for"),
        (["--ckpt", str(tmp_path / "missing.ckpt"), str(images[0])], "no checkpoint"),
        (["--ckpt", str(not_an_image), "--manifest", str(demo_shards), str(images[0])], "cannot load checkpoint"),
        (["--manifest", str(imagenet_folder), str(images[0])], "no shard manifest"),
        (["--ckpt", str(runs["nospp"]), "--boxes", str(box_files["good"]), str(images[0])], "no-SPP network"),
    )
    for args, said in cases:
        command = ["predict", *args] if "--ckpt" in args else ["predict", "--ckpt", str(runs["spp"]), *args]
        assert main(command) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spp-cls predict: error:"), err
        assert said in err[0], err
