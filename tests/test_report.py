"""The report side: results.json files -> RunResult -> the paper's Table 2 layout (markdown, csv, plot, CLI)."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import MEASURED, write_result
from PIL import Image

from spp_cls import paper
from spp_cls.protocol import VARIANTS
from spp_cls.report import table
from spp_cls.report.results import ResultsError, collect, load_result, result_from_wandb_run


@pytest.fixture()
def full_runs(tmp_path: Path) -> Path:
    for (backbone, variant), (top1, top5) in MEASURED.items():
        write_result(tmp_path / "full", backbone, variant, top1, top5)
    return tmp_path / "full"


@pytest.fixture()
def partial_runs(tmp_path: Path) -> Path:
    for cell in (("zf5", "nospp"), ("zf5", "spp_multi"), ("convnet5", "spp_single")):
        write_result(tmp_path / "partial", *cell, *MEASURED[cell])
    return tmp_path / "partial"


def markdown_cells(text: str) -> dict[tuple[str, str, str], str]:
    """Parse the two markdown blocks into {(block title, row title, column title): cell text}."""
    cells = {}
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("| "):
            header = []
            continue
        row = [cell.strip() for cell in line.strip("|").split("|")]
        if not header:
            header = row
        elif not row[0].startswith("---"):
            cells.update({(header[0], row[0], column): value for column, value in zip(header[1:], row[1:])})
    return cells


def paper_text(backbone: str, variant: str, metric: str) -> str:
    """The paper's cell as the table must print it, from spp_cls.paper (the gain is the paper's own rule)."""
    value = getattr(paper.paper_error(backbone, variant), metric)
    if variant == "nospp":
        return f"{value:.2f}"
    return f"{value:.2f} ({getattr(paper.TABLE2[(backbone, 'nospp')], metric) - value:.2f})"


def test_full_table_cells_gains_and_paper_values(full_runs: Path) -> None:
    text = table.format_markdown(collect([full_runs]))
    cells = markdown_cells(text)
    top1, top5 = "top-1 err (%)", "top-5 err (%)"
    a, b, c, r = (VARIANTS[v].title for v in ("nospp", "spp_single", "spp_multi", "spp_random"))
    assert cells[(top1, a, "ZF-5")] == "36.10"
    assert cells[(top1, b, "ZF-5")] == "35.00 (1.10)"
    assert cells[(top1, c, "ZF-5")] == "34.50 (1.60)"
    assert cells[(top5, c, "ZF-5")] == "13.70 (1.20)"
    assert cells[(top1, b, "Convnet*-5")] == "34.70 (0.50)"
    assert cells[(top5, b, "Overfeat-5")] == "12.90 (0.70)"
    assert cells[(top1, c, "Overfeat-7")] == "32.80 (-0.50)"
    assert cells[(top5, c, "Overfeat-7")] == "12.10 (-0.10)"
    assert cells[(top1, r, "Overfeat-7")] == "30.20 (2.10)"
    for (backbone, variant), _ in paper.TABLE2.items():
        column = f"{paper.BACKBONE_TITLES[backbone]} paper"
        assert cells[(top1, VARIANTS[variant].title, column)] == paper_text(backbone, variant, "top1")
        assert cells[(top5, VARIANTS[variant].title, column)] == paper_text(backbone, variant, "top5")
    assert cells[(top1, r, "Overfeat-7 paper")] == paper_text("overfeat7", "spp_random", "top1")
    assert cells[(top1, r, "ZF-5 paper")] == "—"  # the paper has the random-size row for Overfeat-7 only
    assert len([key for key in cells if key[0] == top1 and not key[2].endswith("paper")]) == 4 * 4
    assert "Runs (13)" in text and "**Note:**" not in text
    assert str(full_runs / "table1" / "zf5-spp_multi" / "results.json") in text


def test_partial_table_marks_missing_cells_and_missing_baselines(partial_runs: Path) -> None:
    cells = markdown_cells(table.format_markdown(collect([partial_runs])))
    top1 = "top-1 err (%)"
    a, b, c = (VARIANTS[v].title for v in ("nospp", "spp_single", "spp_multi"))
    assert cells[(top1, c, "ZF-5")] == "34.50 (1.60)"
    assert cells[(top1, b, "ZF-5")] == "—"
    assert cells[(top1, a, "Overfeat-7")] == "—"
    assert cells[(top1, b, "Convnet*-5")] == "34.70 (—)"  # no Convnet*-5 no-SPP run to take the gain from
    assert cells[(top1, b, "Convnet*-5 paper")] == paper_text("convnet5", "spp_single", "top1")
    assert not any(row == VARIANTS["spp_random"].title for _, row, _ in cells)  # no random-size run


def test_csv_parses_back_to_one_row_per_cell(full_runs: Path, partial_runs: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(table.format_csv(collect([full_runs])))))
    assert len(rows) == 4 * 4
    by_cell = {(row["backbone"], row["variant"]): row for row in rows}
    assert set(by_cell) == {(b, v) for b in paper.BACKBONES for v in VARIANTS}
    zf5_multi = by_cell[("zf5", "spp_multi")]
    assert float(zf5_multi["top1_err"]) == 34.5 and float(zf5_multi["top1_gain"]) == pytest.approx(1.6)
    assert float(zf5_multi["top5_gain"]) == pytest.approx(1.2)
    assert float(by_cell[("overfeat7", "spp_multi")]["top1_gain"]) == pytest.approx(-0.5)
    for (backbone, variant), published in paper.TABLE2.items():
        row = by_cell[(backbone, variant)]
        assert float(row["paper_top1_err"]) == published.top1 and float(row["paper_top5_err"]) == published.top5
        base = paper.TABLE2[(backbone, "nospp")]
        expected_gain = "" if variant == "nospp" else pytest.approx(base.top1 - published.top1)
        assert (float(row["paper_top1_gain"]) if row["paper_top1_gain"] else "") == expected_gain
    assert zf5_multi["test_protocol"] == "tenview" and zf5_multi["num_test_images"] == "50000"
    assert by_cell[("overfeat5", "spp_random")]["paper_top1_err"] == ""

    partial = {(r["backbone"], r["variant"]): r for r in csv.DictReader(io.StringIO(table.format_csv(
        collect([partial_runs]))))}
    assert len(partial) == 4 * 3
    assert partial[("overfeat7", "nospp")]["top1_err"] == "" and partial[("overfeat7", "nospp")]["results_file"] == ""
    assert float(partial[("convnet5", "spp_single")]["top1_err"]) == 34.7
    assert partial[("convnet5", "spp_single")]["top1_gain"] == ""


def test_collect_takes_run_dirs_parents_and_files(partial_runs: Path, tmp_path: Path) -> None:
    run_dir = partial_runs / "table1" / "zf5-spp_multi"
    assert [r.variant for r in collect([run_dir])] == ["spp_multi"]
    assert len(collect([partial_runs])) == 3
    assert len(collect([run_dir / "results.json", partial_runs / "table1" / "zf5-nospp"])) == 2
    assert len(collect([partial_runs, run_dir])) == 3  # the same file reached twice counts once
    assert len(collect([partial_runs / "table1" / ".." / "table1" / "zf5-spp_multi", run_dir])) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect([empty]) == []
    with pytest.raises(ResultsError, match="no-such-dir: no such file or directory"):
        collect([tmp_path / "no-such-dir"])


def test_two_results_for_one_cell_is_an_error_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = write_result(tmp_path / "a", "zf5", "spp_multi", 34.5, 13.7)
    second = write_result(tmp_path / "b", "zf5", "spp_multi", 34.9, 13.9, experiment="rerun")
    with pytest.raises(ResultsError) as caught:
        collect([tmp_path])
    message = str(caught.value)
    assert str(first) in message and str(second) in message and "\n" not in message
    assert table.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(first) in err and str(second) in err


def test_other_protocols_are_left_out_and_said_so(tmp_path: Path) -> None:
    write_result(tmp_path, "zf5", "nospp", 36.1, 14.9)
    write_result(tmp_path, "zf5", "nospp", 38.0, 16.0, test_protocol="center")  # same cell, other protocol: allowed
    write_result(tmp_path, "zf5", "spp_multi", 37.0, 15.0, test_protocol="center")
    results = collect([tmp_path])
    tenview = table.format_markdown(results)
    cells = markdown_cells(tenview)
    assert cells[("top-1 err (%)", VARIANTS["nospp"].title, "ZF-5")] == "36.10"
    assert cells[("top-1 err (%)", VARIANTS["spp_multi"].title, "ZF-5")] == "—"
    assert "2 result(s) under other test protocols (center: zf5-nospp, zf5-spp_multi)" in tenview
    center = table.format_markdown(results, protocol="center")
    cells = markdown_cells(center)
    assert cells[("top-1 err (%)", VARIANTS["spp_multi"].title, "ZF-5")] == "37.00 (1.00)"
    assert "Table 3, 1 center crop" in center
    assert cells[("top-1 err (%)", VARIANTS["spp_multi"].title, "ZF-5 paper")] == "37.57 (—)"  # Table 3 has no (a)
    assert cells[("top-5 err (%)", VARIANTS["spp_multi"].title, "ZF-5 paper")] == "—"
    assert "(tenview: zf5-nospp)" in center


@pytest.mark.parametrize(("protocol", "backbone", "variant", "top1", "top5"), [
    ("full", "overfeat7", "spp_multi", "31.25 (—)", "—"),
    ("center", "overfeat7", "spp_single", "33.18 (—)", "—"),
    ("multiscale", "overfeat7", "spp_multi", "—", "9.36 (—)"),
    ("multiscale", "zf5", "spp_multi", "—", "—"),
    ("tenview_fmap", "zf5", "spp_multi", "34.60 (1.39)", "13.64 (1.12)"),
])
def test_each_protocol_sets_the_papers_own_numbers_beside_the_measured(
        tmp_path: Path, protocol: str, backbone: str, variant: str, top1: str, top5: str) -> None:
    """Table 3 (1 crop, 1 full image), the 96-view figure and Table 2 for the feature-map 10-view."""
    write_result(tmp_path, backbone, variant, 30.0, 10.0, test_protocol=protocol)
    text = table.format_markdown(collect([tmp_path]), protocol=protocol)
    cells = markdown_cells(text)
    title = paper.BACKBONE_TITLES[backbone]
    assert cells[("top-1 err (%)", VARIANTS[variant].title, f"{title} paper")] == top1
    assert cells[("top-5 err (%)", VARIANTS[variant].title, f"{title} paper")] == top5
    assert paper.PROTOCOL_SOURCES[protocol] in text


def test_unknown_backbone_gets_its_own_column(tmp_path: Path) -> None:
    write_result(tmp_path, "resnet18", "nospp", 40.0, 18.0)
    write_result(tmp_path, "resnet18", "spp_single", 39.0, 17.5)
    cells = markdown_cells(table.format_markdown(collect([tmp_path])))
    assert cells[("top-1 err (%)", VARIANTS["spp_single"].title, "resnet18")] == "39.00 (1.00)"
    assert cells[("top-1 err (%)", VARIANTS["spp_single"].title, "resnet18 paper")] == "—"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"backbone": "zf5", ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"backbone": "zf5", "variant": "nospp"}', "missing key(s) experiment, test_protocol, top1_err"),
    ],
)
def test_bad_results_file_is_one_line_naming_the_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ResultsError) as caught:
        load_result(path)
    assert str(caught.value).startswith(f"{path}: ") and expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert table.main([str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"top1_err": "34.6"}, "'top1_err' must be a number 0 to 100, got '34.6'"),
        ({"top5_err": 140.0}, "'top5_err' must be a number 0 to 100"),
        ({"top1_err": float("nan")}, "'top1_err' must be a number"),
        ({"epochs": 70.5}, "'epochs' must be a whole number"),
        ({"variant": "spp"}, "variant 'spp' is not one of nospp, spp_single, spp_multi, spp_random"),
        ({"git_commit": 7}, "'git_commit' must be a non-empty string"),
    ],
)
def test_wrong_kind_of_value_is_an_error(tmp_path: Path, override: dict, expected: str) -> None:
    fields = dict(override)
    path = write_result(tmp_path, "zf5", fields.pop("variant", "nospp"), 36.1, 14.9, **fields)
    with pytest.raises(ResultsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_result(path)


def test_null_git_commit_and_extra_keys_are_fine(tmp_path: Path) -> None:
    result = load_result(write_result(tmp_path, "zf5", "nospp", 36.1, 14.9, git_commit=None))
    assert result.git_commit is None and result.top1_err == 36.1 and result.epochs == 70
    assert result.cell == ("zf5", "nospp", "tenview")


def colour_pixels(path: Path, hex_colour: str) -> int:
    rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return int((pixels == rgb).all(axis=-1).sum())


def test_plot_is_a_png_with_the_measured_bars(partial_runs: Path, tmp_path: Path) -> None:
    results = collect([partial_runs])
    written = table.plot(results, tmp_path / "plots" / "table.png")
    assert written == tmp_path / "plots" / "table.png"
    with Image.open(written) as image:
        assert image.format == "PNG"
        assert image.size == (int(table.PLOT_SIZE_IN[0] * table.PLOT_DPI), int(table.PLOT_SIZE_IN[1] * table.PLOT_DPI))
    # The solid no-SPP bar of ZF-5 is drawn in the no-SPP colour; without that run only outlines remain.
    without_nospp = table.plot([r for r in results if r.variant != "nospp"], tmp_path / "without.png")
    assert colour_pixels(written, "#4c72b0") > colour_pixels(without_nospp, "#4c72b0") + 1000


def test_main_writes_markdown_csv_and_plot(partial_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert table.main([str(partial_runs)]) == 0
    out = capsys.readouterr().out
    assert markdown_cells(out)[("top-1 err (%)", VARIANTS["spp_multi"].title, "ZF-5")] == "34.50 (1.60)"
    png = tmp_path / "t.png"
    assert table.main([str(partial_runs), "--format", "csv", "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert len(list(csv.DictReader(io.StringIO(captured.out)))) == 12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in captured.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{empty}"], "no results.json found under {empty}"),
        (["{tmp}/missing"], "missing: no such file or directory"),
        (["{runs}", "--plot", "{tmp}/table.pdf"], "--plot writes PNG"),
        ([], "give run directories or --wandb"),
        (["{runs}", "--wandb", "me/spp-cls"], "give run directories or --wandb"),
        (["--wandb", "no-slash"], "--wandb wants ENTITY/PROJECT"),
        (["{runs}", "--format", "html"], "invalid choice: 'html'"),
    ],
)
def test_main_bad_input_exits_2_with_one_line(
    partial_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], expected: str
) -> None:
    (tmp_path / "empty").mkdir()
    names = {"empty": str(tmp_path / "empty"), "tmp": str(tmp_path), "runs": str(partial_runs)}
    assert table.main([arg.format(**names) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert expected.format(**names) in err
    assert not (tmp_path / "table.pdf").exists()


def test_main_help_returns_0(capsys: pytest.CaptureFixture) -> None:
    assert table.main(["--help"]) == 0
    assert "spp-cls table" in capsys.readouterr().out


def wandb_run(name: str | None, config: dict, summary: dict, group: str | None = "table1") -> SimpleNamespace:
    """A stand-in for wandb.apis.public.Run with the attributes the conversion reads."""
    return SimpleNamespace(name=name, group=group, url=f"https://wandb.example/runs/{name}", config=config,
                           summary=summary)


def test_wandb_run_from_nested_config_and_test_metrics() -> None:
    run = wandb_run(
        "zf5-spp_multi",
        {"model": {"backbone": "zf5", "head": "spp", "size_schedule": "alternate"}, "data": {"test_views": "tenview"},
         "trainer": {}},
        {"test/top1_err": 34.5, "test/top5_err": 13.7, "epochs": 70, "num_test_images": 50000, "epoch": 69},
    )
    result = result_from_wandb_run(run)
    assert (result.backbone, result.variant, result.test_protocol, result.experiment) == (
        "zf5", "spp_multi", "tenview", "table1")
    assert (result.top1_err, result.top5_err, result.epochs, result.num_test_images) == (34.5, 13.7, 70, 50000)
    assert result.wall_time_s is None
    assert result.source == "wandb run zf5-spp_multi (https://wandb.example/runs/zf5-spp_multi)"


def test_wandb_run_variant_from_name_flat_config_and_logged_results_win() -> None:
    run = wandb_run("overfeat7-spp_random", {"model.backbone": "overfeat7", "data/test_views": "center"},
                    {"test/top1_err": 30.2, "test/top5_err": 11.0})
    result = result_from_wandb_run(run)
    assert (result.backbone, result.variant, result.test_protocol) == ("overfeat7", "spp_random", "center")
    logged = wandb_run("renamed", {}, {"backbone": "zf5", "variant": "nospp", "test_protocol": "tenview",
                                       "experiment": "demo", "top1_err": 60.0, "top5_err": 20.0, "git_commit": None})
    result = result_from_wandb_run(logged)
    assert (result.backbone, result.variant, result.experiment, result.top1_err) == ("zf5", "nospp", "demo", 60.0)


def test_wandb_run_not_tested_yet_or_bad_is_an_error() -> None:
    with pytest.raises(ResultsError, match=r"wandb run zf5-nospp .*no top1_err, top5_err \(not tested yet"):
        result_from_wandb_run(wandb_run("zf5-nospp", {"data": {"test_views": "tenview"}}, {"train/loss": 2.0}))
    with pytest.raises(ResultsError, match="no test_protocol"):
        result_from_wandb_run(wandb_run("zf5-nospp", {}, {"test/top1_err": 36.0, "test/top5_err": 15.0}))
    with pytest.raises(ResultsError, match="variant 'spp' is not one of"):
        result_from_wandb_run(wandb_run("zf5-spp", {"data.test_views": "tenview"},
                                        {"test/top1_err": 36.0, "test/top5_err": 15.0}))




def test_python_dash_m_spp_cls_is_the_spp_cls_command(full_runs: Path) -> None:
    table_run = subprocess.run([sys.executable, "-m", "spp_cls", "table", str(full_runs)], capture_output=True,
                               text=True, timeout=120, check=False)
    assert table_run.returncode == 0 and "ZF-5" in table_run.stdout
    unknown = subprocess.run([sys.executable, "-m", "spp_cls", "tabel"], capture_output=True, text=True, timeout=120,
                             check=False)
    assert unknown.returncode == 2 and "unknown command 'tabel'" in unknown.stderr


def test_curves_show_each_runs_val_error_per_epoch_with_its_input_size(tmp_path: Path, capsys) -> None:
    rows = {"nospp": [("0", "224", "60.5"), ("1", "224", "50.25")],
            "spp_multi": [("0", "224", "58.0"), ("1", "180", "49.0"), ("2", "224", "45.5")]}
    for variant, epochs in rows.items():
        path = write_result(tmp_path, "zf5", variant, *MEASURED[("zf5", variant)])
        lines = ["epoch,train_size,lr,train_loss,val_top1_err,val_top5_err,train_images_per_s"]
        lines += [f"{epoch},{size},0.01,2.0,{top1},10.0,100.0" for epoch, size, top1 in epochs]
        (path.parent / "summary.csv").write_text("\n".join(lines) + "\n")
    write_result(tmp_path, "zf5", "spp_single", *MEASURED[("zf5", "spp_single")])  # tested, no summary.csv
    assert table.main([str(tmp_path), "--curves"]) == 0
    out = capsys.readouterr().out
    assert "| epoch | zf5-nospp | zf5-spp_single | zf5-spp_multi |" not in out  # only runs with a summary
    assert "| epoch | zf5-nospp | zf5-spp_multi |" in out
    assert "| 1 | 50.25 @224 | 49.00 @180 |" in out and "| 2 | — | 45.50 @224 |" in out
    assert "No summary.csv beside the results of: zf5-spp_single." in out
    (tmp_path / "table1" / "zf5-nospp" / "summary.csv").write_text("epoch,loss\n0,1\n")
    assert table.main([str(tmp_path), "--curves"]) == 2
    assert "summary.csv: expected the columns epoch,train_size" in capsys.readouterr().err
