"""`spp-cls bench`: a tiny real run (synthetic JPEG shards, loader workers, a real Lightning Trainer), its JSON, the
FLOP counts, the GPU peak table and one-line errors. Speed is never asserted: only that the figures are sane."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from spp_cls.bench import main
from spp_cls.bench.device import peak_flops
from spp_cls.bench.flops import count_flops
from spp_cls.bench.report import COLUMNS
from spp_cls.bench.settings import model_spec
from spp_cls.cli import main as cli_main
from spp_cls.models import create

TINY = ["--width", "0.125", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu"]
ROW_RATES = ("model_images_per_s", "shards_images_per_s", "achieved_flops_per_s", "data_over_model", "step_ms")


def positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_run_prints_the_table_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--model", "zf5_spp", "zf5_nospp", "--sizes", "224,180", "--workers", "1", *TINY,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    assert set(report) == {"settings", "device", "versions", "data_path", "rows", "skipped", "harness", "tenview"}
    assert report["settings"]["models"] == ["zf5_spp", "zf5_nospp"] and report["settings"]["batch_size"] == 4
    assert report["device"]["type"] == "cpu" and report["device"]["peak_flops_per_s"] is None

    data = report["data_path"]
    assert data["workers"] == 1 and data["images"] == 4 * data["batches"] and positive(data["images_per_s"])
    assert data["images_per_s"] == pytest.approx(data["images"] / data["seconds"])

    rows = {(row["model"], row["size"]): row for row in report["rows"]}
    assert list(rows) == [("zf5_spp", 224), ("zf5_spp", 180), ("zf5_nospp", 224)]
    for row in rows.values():
        assert all(positive(row[key]) for key in ROW_RATES), row
        assert row["mfu"] is None  # no peak on a CPU
        assert row["model_images_per_s"] == pytest.approx(2 * 4 / row["model_seconds"])
        assert row["data_over_model"] == pytest.approx(data["images_per_s"] / row["model_images_per_s"])
        assert row["limited_by"] == ("data-bound" if row["data_over_model"] < 1 else "compute-bound")
        assert row["achieved_flops_per_s"] == pytest.approx(row["train_flops_per_image"] * row["model_images_per_s"])
    assert rows["zf5_spp", 180]["forward_flops_per_image"] < rows["zf5_spp", 224]["forward_flops_per_image"]
    # a no-SPP net takes 224 only: its 180 row is reported as skipped, with the reason
    [skipped] = report["skipped"]
    assert (skipped["model"], skipped["size"]) == ("zf5_nospp", 180) and "224" in skipped["reason"]

    harness = report["harness"]
    assert (harness["model"], harness["size"]) == ("zf5_spp", 224)
    assert len(harness["bare_rounds"]) == len(harness["lightning_rounds"]) == 2
    assert all(positive(rate) for rate in harness["bare_rounds"] + harness["lightning_rounds"])
    assert harness["ratio"] == pytest.approx(harness["lightning_images_per_s"] / harness["bare_images_per_s"])
    [tenview] = report["tenview"]  # paper SPP nets only
    assert tenview["model"] == "zf5_spp" and positive(tenview["crops_images_per_s"])
    assert positive(tenview["fmap_images_per_s"])

    lines = printed.splitlines()
    assert any(line.split() == [word for column in COLUMNS for word in column.split()] for line in lines)
    for model, size in rows:
        assert any(line.split()[:3] == [model, str(size), "4"] for line in lines), (model, size)
    assert sum(line.startswith("harness / bare: ") for line in lines) == 1
    assert sum(line.startswith("data / model: ") for line in lines) == 3
    assert any(line.startswith("skipped: zf5_nospp at 180: ") for line in lines)


@pytest.mark.slow
def test_runs_on_a_shards_directory(demo_shards, capsys):
    assert cli_main(["bench", "--model", "zf5_spp", "--sizes", "180", "--workers", "0", "--data", str(demo_shards),
                     *TINY]) == 0
    printed = capsys.readouterr().out
    assert "data path: " in printed and str(demo_shards) in printed
    assert any(line.split()[:3] == ["zf5_spp", "180", "4"] for line in printed.splitlines())


def test_flops_are_counted_on_meta_as_on_real_tensors():
    spec = model_spec("zf5_spp")
    forward, train = count_flops(spec, width=1.0, size=224)
    assert 2.3e9 < forward < 2.5e9  # ZF-5: about 1.2 G multiply-adds per 224 image
    assert 2.5 < train / forward < 3.0  # backward about 2x forward, less the first layer's input gradient
    net = create("zf5", "spp", num_classes=1000, width=0.125)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(torch.randn(1, 3, 180, 180)), torch.zeros(1, dtype=torch.int64)).backward()
    assert count_flops(spec, width=0.125, size=180)[1] == counter.get_total_flops()


def test_peak_table_matches_the_most_specific_card_name(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == (312e12, "bf16")
    assert peak_flops("NVIDIA A10", "bf16") == (125e12, "bf16")
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == (756e12, "bf16")
    assert peak_flops("NVIDIA H100 80GB HBM3", "32") == (494.7e12, "tf32")
    assert peak_flops("Tesla T4", "bf16") == (None, None)
    assert peak_flops("Some Future GPU", "32") == (None, None)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert peak_flops("NVIDIA H100 80GB HBM3", "32") == (67e12, "fp32")


BAD_ARGS = [
    (["--model", "zf9_spp"], "unknown model 'zf9_spp'; known models: zf5_nospp, zf5_spp"),
    (["--sizes", "224,abc"], "argument --sizes: expected an integer, got 'abc'"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--steps", "-1"], "argument --steps: must be at least 1"),
    (["--width", "0"], "argument --width: must be a positive number"),
    (["--precision", "16"], "argument --precision: invalid choice: '16'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--data", "/nonexistent/shards"], "--data /nonexistent/shards: no train/manifest.json there"),
    (["--out", "/nonexistent/dir/bench.json"], "folder /nonexistent/dir does not exist"),
    (["--decode", "device", "--decode-backend", "hardware", "--device", "cpu"],
     "--decode-backend: decode_backend 'hardware' needs a CUDA device"),
]
if not torch.cuda.is_available():
    BAD_ARGS.append((["--device", "cuda"], "--device cuda: no CUDA device is available"))


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS, ids=[" ".join(argv) for argv, _ in BAD_ARGS])
def test_bad_arguments_give_one_error_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("spp-cls bench: error: ") and message in line


def test_shards_too_few_for_one_batch_give_one_error_line_through_the_cli(demo_shards, capsys):
    assert cli_main(["bench", "--data", str(demo_shards), "--batch-size", "100", "--device", "cpu"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"spp-cls bench: error: --data {demo_shards}: ") and "no full global batch" in line


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "--batch-size" in capsys.readouterr().out


@pytest.mark.slow
def test_device_decode_path_is_measured_too(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--model", "zf5_spp", "--sizes", "224", "--workers", "1", "--decode", "device", *TINY,
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["data_path"]["decode"] == "device" and positive(report["data_path"]["images_per_s"])
    assert positive(report["rows"][0]["shards_images_per_s"])
    printed = capsys.readouterr().out
    assert "JPEG decode on the device" in printed
    decoder = "nvImageCodec 0.9.0 on cpu (cpu backend, 224 regions); 0 files decoded on the host instead"
    assert report["data_path"]["decoder"] == decoder and f"decoder: {decoder}" in printed
    assert any(line.startswith("fed from shards / model only: ") for line in printed.splitlines())
