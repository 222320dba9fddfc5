"""The GPU fast-path switches run on the CPU too: torch.compile with two static shapes, bf16 autocast, channels_last."""
from __future__ import annotations

import csv

import pytest
import torch
import torch._dynamo
from helpers import PAPER_BACKBONES, compiled_against_eager, cpu_args

from spp_cls.cli import main
from spp_cls.models import create

pytestmark = pytest.mark.slow


def test_compiled_network_has_one_graph_per_training_size_and_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = create("zf5", head="spp", num_classes=4, width=0.0625, init="kaiming").eval()
    compiled = create("zf5", head="spp", num_classes=4, width=0.0625, init="kaiming").eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(dynamic=False)
    torch._dynamo.utils.counters.clear()
    for size in (224, 180, 224, 180):  # the alternate schedule: must not recompile every epoch
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_each_network_compiles_whole_under_bf16_autocast_and_trains_as_eager(backbone):
    """Whole-network compile with fullgraph (no graph break), both training sizes, forward and backward. The
    cross-channel LRN of Convnet*-5 and the Overfeats once left autocast off for the rest of the compiled graph, so
    their conv2 met bf16 maps with fp32 weights."""
    for size, logit_difference, grad_difference in compiled_against_eager(backbone, "cpu", (224, 180), width=0.0625,
                                                                         batch_size=2):
        assert logit_difference < 0.02, (backbone, size)
        assert grad_difference < 0.05, (backbone, size)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # one graph per size, no recompile


def test_fit_with_bf16_autocast_and_channels_last(demo_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "2", "--trainer.precision", "bf16-mixed",
                    "--model.channels_last", "true", "--trainer.deterministic", "false", "--wandb", "false")
    assert main(["fit", *args]) == 0
    run = tmp_path / "t" / "zf5-spp_multi"
    with (run / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["train_size"] for row in rows] == ["224", "180"]
    assert all(float(row["train_loss"]) > 0 for row in rows)
    state = torch.load(run / "last.ckpt", weights_only=False)["state_dict"]
    assert state["net.trunk.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
