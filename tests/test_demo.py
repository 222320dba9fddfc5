"""`spp-cls demo` at a smaller size: the three ZF-5 variants learn, and 10-view on feature maps agrees with 10 crops."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spp_cls.cli import main
from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.views import ten_views
from spp_cls.train.module import SppClassifier

pytestmark = pytest.mark.slow
CLASSES = 5


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        assert main(["demo", "--out", str(out), "--classes", str(CLASSES), "--train-per-class", "60",
                     "--val-per-class", "10", "--epochs", "6"]) == 0
    return out


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
        for views, label, _valid in data.eval_loader("test", rank=0, world_size=1):
            image = views[:, 0]
            crops.append(model.view_scores(ten_views(image[0])[None]))
            fmaps.append(model.tenview_fmap_scores(image))
            labels.append(label)
    crop_scores, fmap_scores, labels = torch.cat(crops), torch.cat(fmaps), torch.cat(labels)
    assert len(labels) == CLASSES * 10
    agreement = (crop_scores.argmax(1) == fmap_scores.argmax(1)).float().mean().item()
    crop_err = (crop_scores.argmax(1) != labels).float().mean().item()
    fmap_err = (fmap_scores.argmax(1) != labels).float().mean().item()
    assert agreement >= 0.9, agreement
    assert abs(crop_err - fmap_err) <= 0.06, (crop_err, fmap_err)
    assert (crop_scores - fmap_scores).abs().mean() < 0.1
