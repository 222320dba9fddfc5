"""`spp-cls bench --profile` and `--lrn-check`: tiny real runs on the CPU (the profiler's own events, real training
steps of both LRN variants), their tables, JSON and Chrome trace. Speed is never asserted."""
from __future__ import annotations

import json

import pytest

from spp_cls.bench import main
from spp_cls.bench.profile import FAMILIES, TOP_KERNELS, family_of
from spp_cls.bench.settings import parse_settings

TINY = ["--model", "zf5_spp", "--sizes", "224", "--width", "0.125", "--batch-size", "2", "--steps", "2", "--warmup",
        "1", "--device", "cpu"]


def trace_names(path: str) -> set[str]:
    return {event.get("name", "") for event in json.loads(open(path).read())["traceEvents"]}


@pytest.mark.slow
def test_profile_prints_the_step_by_family_and_kernel_and_writes_a_chrome_trace(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["--profile", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    [item] = json.loads(out.read_text())["profiles"]

    assert (item["model"], item["size"], item["time"], item["old_lrn"]) == ("zf5_spp", 224, "cpu", False)
    families = item["families_ms_per_step"]
    assert list(families) == list(FAMILIES)
    # a training step of ZF-5 convolves, pools, normalises and steps SGD; the families add up to the profiled total
    assert all(families[family] > 0 for family in ("convolution", "matmul", "pooling", "LRN/elementwise", "optimizer"))
    assert sum(families.values()) == pytest.approx(item["profiled_ms_per_step"])
    top = item["top_kernels"]
    assert len(top) == TOP_KERNELS and [entry["ms_per_step"] for entry in top] == sorted(
        (entry["ms_per_step"] for entry in top), reverse=True)
    by_name = {entry["name"]: entry for entry in top}
    assert by_name["aten::convolution_backward"]["family"] == "convolution"
    assert by_name["aten::convolution_backward"]["calls_per_step"] == 5  # ZF-5's five conv layers
    for family in FAMILIES:
        assert family in printed
    assert f"top {TOP_KERNELS} kernels" in printed and f"trace: {item['trace']}" in printed

    names = trace_names(item["trace"])
    assert "aten::convolution_backward" in names and "Optimizer.step#SGD.step" in names
    assert any("_LocalResponseNormFunctionBackward" in name for name in names)
    assert not any("PowBackward" in name for name in names)


@pytest.mark.slow
def test_profile_of_the_old_lrn_formula_runs_its_autograd_graph(tmp_path, capsys):
    out = tmp_path / "before.json"
    assert main(["--profile", "--old-lrn", *TINY, "--out", str(out)]) == 0
    [item] = json.loads(out.read_text())["profiles"]
    assert item["old_lrn"] and item["trace"] == str(tmp_path / "before.zf5_spp-224-old-lrn.trace.json")
    names = trace_names(item["trace"])
    assert any("PowBackward" in name for name in names)
    assert not any("LocalResponseNormFunction" in name for name in names)
    assert "old LRN formula" in capsys.readouterr().out


@pytest.mark.parametrize("name,family", [
    ("aten::mkldnn_convolution", "convolution"),
    ("aten::convolution_backward", "convolution"),
    ("aten::addmm", "matmul"),
    ("aten::mm", "matmul"),
    ("aten::max_pool2d_with_indices_backward", "pooling"),
    ("aten::adaptive_max_pool2d", "pooling"),
    ("aten::avg_pool2d", "LRN/elementwise"),  # only the LRNs average-pool in these nets
    ("autograd::engine::evaluate_function: _LocalResponseNormFunctionBackward", "LRN/elementwise"),
    ("aten::threshold_backward", "LRN/elementwise"),
    ("aten::mul_", "LRN/elementwise"),
    ("aten::_foreach_add_", "optimizer"),
    ("Optimizer.step#SGD.step", "optimizer"),
    ("Optimizer.zero_grad#SGD.zero_grad", "optimizer"),
    ("aten::_to_copy", "copies and casts"),
    ("aten::copy_", "copies and casts"),
    ("aten::nll_loss_forward", "other"),
    ("aten::upsample_bilinear2d", "other"),
    ("triton_poi_fused_convolution_relu_0", "LRN/elementwise"),  # Inductor's bias + ReLU after an extern conv
    ("triton_poi_fused_max_pool2d_with_indices_3", "pooling"),
])
def test_kernel_families_of_op_names(name, family):
    assert family_of(name) == family


@pytest.mark.slow
def test_lrn_check_trains_both_lrns_on_the_same_weights_and_prints_the_ratios(tmp_path, capsys):
    out = tmp_path / "lrn.json"
    assert main(["--lrn-check", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    [row] = json.loads(out.read_text())["rows"]
    assert (row["model"], row["size"]) == ("zf5_spp", 224)
    assert len(row["old_rounds_ms"]) == len(row["new_rounds_ms"]) == 3
    assert row["speedup"] == pytest.approx(row["old_step_ms"] / row["new_step_ms"])
    # the one-op LRN keeps only its input: fewer bytes saved for backward, the same gradients
    old_bytes, new_bytes = row["old_activation_bytes_per_image"], row["new_activation_bytes_per_image"]
    assert 0 < new_bytes < old_bytes
    assert row["saved_ratio"] == pytest.approx(new_bytes / old_bytes)
    assert row["conv1_grad_difference"] < 1e-4
    assert f"old / new {row['speedup']:.3f}" in printed and f"new / old {row['saved_ratio']:.3f}" in printed


def test_lrn_check_measures_zf5_unless_told_otherwise():
    assert [spec.name for spec in parse_settings(["--lrn-check"]).models] == ["zf5_spp"]
    assert [spec.name for spec in parse_settings(["--lrn-check", "--model", "convnet5_spp"]).models] == ["convnet5_spp"]


@pytest.mark.parametrize("argv,message", [
    (["--old-lrn"], "--old-lrn goes with --profile"),
    (["--profile", "--lrn-check"], "not allowed with argument"),
    (["--lrn-check", "--model", "resnet18_spp", "--width", "0.125", "--batch-size", "2", "--sizes", "64",
      "--device", "cpu"], "resnet18_spp has no LRN"),
])
def test_bad_mode_arguments_give_one_error_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
