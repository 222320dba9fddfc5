"""`spp-cls demo` at a smaller size: the three ZF-5 variants learn, and 10-view on feature maps agrees with 10 crops."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import new_user_env

from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.views import ten_views
from spp_cls.train.module import SppClassifier

pytestmark = pytest.mark.slow
CLASSES = 5


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run as a new user runs it (no wandb login, no WANDB_* variable), in its own process; what it printed
    is kept in `output.txt`."""
    out = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "spp_cls", "demo", "--out", str(out / "demo"), "--classes", str(CLASSES),
               "--train-per-class", "60", "--val-per-class", "10", "--epochs", "6"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False,
                          env=new_user_env(out / "home"))
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "demo" / "output.txt").write_text(done.stdout + done.stderr)
    return out / "demo"


def test_demo_prints_the_cells_their_results_and_the_table_and_no_library_chatter(demo_dir):
    lines = (demo_dir / "output.txt").read_text().replace("\r", "\n").splitlines()
    for chatter in ("Tip", "args parameter", "deprecated", "GPU available", "Seed set to", "Total params",
                    "Tracking run with wandb"):
        assert not [line for line in lines if chatter in line], chatter
    cells = [i for i, line in enumerate(lines) if line.startswith("[3/4] (")]
    assert len(cells) == 3
    wandb_lines = [line for line in lines if line.startswith("wandb:")]
    assert len(wandb_lines) == 3 and all("offline run in" in line for line in wandb_lines)
    table = next(i for i, line in enumerate(lines) if line.startswith("## ImageNet error"))
    assert table > cells[-1] and any(line.startswith("| (c) SPP multi-size trained |") for line in lines[table:])
    # each gain with its paired interval, and whether it is more than noise
    gains = [line for line in lines if line.startswith("ZF-5 spp_") and "top-1 gain over no SPP" in line]
    assert len(gains) == 2 and all(line.endswith(("within noise", "more than noise")) for line in gains), gains
    assert any("95% interval over the test images" in line for line in lines[table:])


def test_demo_trains_all_three_variants_well_below_chance(demo_dir, capsys):
    chance = 100 * (1 - 1 / CLASSES)
    for variant in ("nospp", "spp_single", "spp_multi"):
        results = json.loads((demo_dir / "runs" / "demo" / f"zf5-{variant}" / "results.json").read_text())
        assert results["test_protocol"] == "tenview" and results["num_test_images"] == CLASSES * 10
        assert results["epochs"] == 6
        assert results["top1_err"] < chance - 40, (variant, results["top1_err"])
    summary = (demo_dir / "runs" / "demo" / "zf5-spp_multi" / "summary.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in summary[1:]] == ["224", "180"] * 3


def test_ten_views_on_feature_maps_agree_with_ten_image_crops(demo_dir):
    model = SppClassifier.load_from_checkpoint(demo_dir / "runs" / "demo" / "zf5-spp_multi" / "last.ckpt").eval()
    data = ShardDataModule(str(demo_dir / "shards"), num_workers=0, test_views="full")
    crops, fmaps, labels = [], [], []
    with torch.no_grad():
        for batch in data.eval_loader("test", rank=0, world_size=1):
            image, label = batch.views[:, 0], batch.labels
            crops.append(model.view_scores(ten_views(image[0])[None]))
            fmaps.append(model.feature_map_scores(image))
            labels.append(label)
    crop_scores, fmap_scores, labels = torch.cat(crops), torch.cat(fmaps), torch.cat(labels)
    assert len(labels) == CLASSES * 10
    agreement = (crop_scores.argmax(1) == fmap_scores.argmax(1)).float().mean().item()
    crop_err = (crop_scores.argmax(1) != labels).float().mean().item()
    fmap_err = (fmap_scores.argmax(1) != labels).float().mean().item()
    assert agreement >= 0.9, agreement
    assert abs(crop_err - fmap_err) <= 0.06, (crop_err, fmap_err)
    assert (crop_scores - fmap_scores).abs().mean() < 0.1
