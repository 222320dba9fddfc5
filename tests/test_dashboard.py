"""`spp-cls dashboard`: the wandb report built offline from real results files (and from a real training run's
logged keys), the group checks, the figure upload to an offline run, and the one-line refusals without a login.

Saving to the wandb server cannot run here (no network): everything up to `Report.save()` is tested with real
objects; `save_report` and `runs_from_wandb` themselves are not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
import wandb_workspaces.reports.v2 as wr
from helpers import MEASURED, cpu_args, read_summary, write_result
from PIL import Image
from wandb_workspaces import expr

from spp_cls import paper
from spp_cls.cli import main
from spp_cls.protocol import (
    BASELINE,
    DASHBOARD_JOB_TYPE,
    EPOCH,
    LR,
    TRAIN_IMAGES_PER_S,
    TRAIN_SIZE,
    VARIANTS,
    run_name,
    split_run_name,
    top1_metric,
    top5_metric,
)
from spp_cls.report import dashboard
from spp_cls.report.dashboard import API_TIMEOUT_S, FIGURE_KEY, build_report
from spp_cls.report.group_runs import DashboardError, GroupRun, group_run_from_wandb, runs_from_results, select_group
from spp_cls.report.table import PLOT_DPI, PLOT_SIZE_IN, plot
from spp_cls.train.lightning_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def table1(tmp_path: Path) -> Path:
    """results.json of the 12 cells and Overfeat-7 random-size, experiment table1, as training writes them."""
    for (backbone, variant), (top1, top5) in MEASURED.items():
        write_result(tmp_path / "runs", backbone, variant, top1, top5)
    return tmp_path / "runs"


def grids(report: wr.Report) -> dict[str, wr.PanelGrid]:
    """The report's panel grids by the heading just above them."""
    found, heading = {}, ""
    for block in report.blocks:
        if isinstance(block, (wr.H2, wr.H3)):
            heading = block.text
        elif isinstance(block, wr.PanelGrid):
            found[heading] = block
    return found


def filter_terms(runset: wr.Runset) -> dict[tuple[str, str], object]:
    """A runset's filter, parsed back by the library the way a saved report holds it: {(backend key, op): value}."""
    tree = expr.expr_to_filters(runset.filters)
    assert tree.op == "AND"
    return {(leaf.key.name, leaf.op): leaf.value for leaf in tree.filters}


def plotted_keys(report: wr.Report) -> set[str]:
    """Every run key a panel or a runs-table column of the report reads (the figure's media key aside)."""
    keys: set[str] = set()
    for grid in grids(report).values():
        for runset in grid.runsets:
            keys |= {column.removeprefix("summary:") for column in runset.pinned_columns if column != "run:displayName"}
        for panel in grid.panels:
            if isinstance(panel, wr.LinePlot):
                keys |= {panel.x, *panel.y}
            elif isinstance(panel, wr.BarPlot):
                keys |= set(panel.metrics)
    return keys


def test_split_run_name_inverts_run_name_with_and_without_a_seed() -> None:
    for backbone in (*paper.BACKBONES, "resnet-like_timm.model", "vit-seed-like"):
        for variant in VARIANTS:
            for seed in (0, 1, 12):
                assert split_run_name(run_name(backbone, variant, seed)) == (backbone, variant, seed)
    assert run_name("zf5", "nospp") == "zf5-nospp" and run_name("zf5", "nospp", 2) == "zf5-nospp-seed2"
    assert split_run_name("zf5-nospp2") is None and split_run_name("nospp") is None and split_run_name("-nospp") is None
    assert split_run_name("zf5-nospp-seed") is None and split_run_name("zf5-nospp-seed01") is None


def test_one_grid_per_backbone_with_its_variants_and_the_papers_numbers(table1: Path) -> None:
    runs, left_out = select_group(runs_from_results([table1]), "table1", "test")
    assert left_out == [] and len(runs) == len(MEASURED)
    report = build_report("me", "spp-cls", "table1", runs, figure=True)
    assert report.title == dashboard.report_title("table1") and (report.entity, report.project) == ("me", "spp-cls")
    by_heading = grids(report)
    for backbone in paper.BACKBONES:
        grid = by_heading[paper.BACKBONE_TITLES[backbone]]
        (runset,) = grid.runsets
        assert (runset.entity, runset.project) == ("me", "spp-cls")
        assert filter_terms(runset) == {
            ("group", "="): "table1", ("displayName", "IN"): [f"{backbone}-{variant}" for variant in VARIANTS]}
        top1, top5 = grid.panels
        for panel, metric, rank in ((top1, top1_metric("val"), "top1"), (top5, top5_metric("val"), "top5")):
            assert isinstance(panel, wr.LinePlot) and panel.x == EPOCH and panel.y == [metric]
            for variant in VARIANTS:
                published = paper.paper_error(backbone, variant)
                assert (published is not None) == (variant in panel.title), (backbone, variant, panel.title)
                if published is not None:
                    assert f"{variant} {getattr(published, rank):.2f}" in panel.title
            # the spec a saved report stores, serialised offline by the library itself
            spec = panel._to_model().model_dump(by_alias=True, exclude_none=True)
            assert spec["config"]["xAxis"] == EPOCH and spec["config"]["metrics"] == [metric]
    assert "spp_random 30.06" in by_heading["Overfeat-7"].panels[0].title  # random size: Overfeat-7 only


def test_training_curves_runs_columns_and_figure_read_the_protocol_names(table1: Path) -> None:
    runs, _ = select_group(runs_from_results([table1]), "table1", "test")
    by_heading = grids(build_report("me", "spp-cls", "table1", runs, figure=True))
    training = by_heading["Training"]
    (runset,) = training.runsets
    all_names = [f"{b}-{v}" for b in paper.BACKBONES for v in VARIANTS]
    assert filter_terms(runset) == {("group", "="): "table1", ("displayName", "IN"): all_names}
    assert set(runset.pinned_columns) >= {f"summary:{key}" for key in (
        top1_metric("val"), top5_metric("val"), top1_metric("test"), top5_metric("test"), TRAIN_IMAGES_PER_S)}
    lines = [panel for panel in training.panels if isinstance(panel, wr.LinePlot)]
    assert [panel.x for panel in lines] == [EPOCH] * 3
    assert [panel.y for panel in lines] == [[TRAIN_SIZE], [LR], [TRAIN_IMAGES_PER_S]]
    assert [panel.log_y for panel in lines] == [None, True, None]  # LR drops by 10x: log scale
    (bars,) = [panel for panel in training.panels if isinstance(panel, wr.BarPlot)]
    assert bars.metrics == [TRAIN_IMAGES_PER_S]

    figure = by_heading["Table 2: measured vs paper"]
    assert filter_terms(figure.runsets[0]) == {("group", "="): "table1", ("jobType", "="): DASHBOARD_JOB_TYPE}
    (media,) = figure.panels
    assert isinstance(media, wr.MediaBrowser) and media.media_keys == [FIGURE_KEY]

    without = build_report("me", "spp-cls", "table1", runs, figure=False)
    assert "Table 2: measured vs paper" not in grids(without)
    paragraphs = [str(block.text) for block in without.blocks if isinstance(block, wr.P)]
    assert any("No run has a test result yet" in text for text in paragraphs)


def test_the_whole_report_serialises_to_the_spec_a_save_sends(table1: Path) -> None:
    """The library's own serialisation of every block (entity and project left empty: with them, each runset would
    look its project's id up on the server first)."""
    runs, _ = select_group(runs_from_results([table1]), "table1", "test")
    model = build_report("", "", "table1", runs, figure=True)._to_model()
    spec = json.loads(model.spec.model_dump_json(by_alias=True, exclude_none=True))
    assert model.display_name == dashboard.report_title("table1")
    panel_grids = [block for block in spec["blocks"] if block["type"] == "panel-grid"]
    assert len(panel_grids) == len(paper.BACKBONES) + 2  # one per backbone, training, figure
    zf5 = panel_grids[0]["metadata"]
    leaves = {(leaf["key"]["name"], leaf["op"]): leaf["value"] for leaf in zf5["runSets"][0]["filters"]["filters"]}
    assert leaves == {("group", "="): "table1", ("displayName", "IN"): [f"zf5-{variant}" for variant in VARIANTS]}
    panels = zf5["panelBankSectionConfig"]["panels"]
    assert [(panel["config"]["xAxis"], panel["config"]["metrics"]) for panel in panels] == [
        (EPOCH, [top1_metric("val")]), (EPOCH, [top5_metric("val")])]
    figure = panel_grids[-1]["metadata"]["panelBankSectionConfig"]["panels"]
    assert [panel["config"]["mediaKeys"] for panel in figure] == [[FIGURE_KEY]]
    markdown = [block["content"] for block in spec["blocks"] if block["type"] == "markdown-block"]
    assert any(text.startswith("| backbone | variant |") for text in markdown)


def markdown_rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[1:]]
    return {(row["backbone"], row["variant"]): row for row in rows}


def test_runs_table_holds_each_run_with_the_papers_numbers_and_gains_over_no_spp(table1: Path) -> None:
    runs, _ = select_group(runs_from_results([table1]), "table1", "test")
    rows = markdown_rows(dashboard.runs_table_markdown(runs))
    assert len(rows) == len(MEASURED)
    for (backbone, variant), (top1, top5) in MEASURED.items():
        row = rows[(paper.BACKBONE_TITLES[backbone], VARIANTS[variant].title)]
        assert (row["epochs"], row["test top-1"], row["test top-5"]) == ("70", f"{top1:.2f}", f"{top5:.2f}")
        assert row["val top-1"] == "—"  # results files hold no validation errors; wandb's summary does
        published, base = paper.paper_error(backbone, variant), paper.paper_error(backbone, BASELINE)
        assert row["paper top-1"] == f"{published.top1:.2f}"
        if variant == BASELINE:
            assert row["gain top-1"] == row["paper gain top-1"] == "—"
        else:
            assert row["gain top-1"] == f"{MEASURED[(backbone, BASELINE)][0] - top1:.2f}"
            assert row["gain top-5"] == f"{MEASURED[(backbone, BASELINE)][1] - top5:.2f}"
            assert row["paper gain top-1"] == f"{base.top1 - published.top1:.2f}"
    assert rows[("Overfeat-7", VARIANTS["spp_multi"].title)]["gain top-1"] == "-0.50"  # worse than no SPP: negative


def test_select_group_refuses_no_runs_and_unknown_groups_and_names_what_it_leaves_out(table1: Path) -> None:
    with pytest.raises(DashboardError, match=r"^no runs in nowhere$"):
        select_group([], "table1", "nowhere")
    runs = runs_from_results([table1])
    with pytest.raises(DashboardError, match=r"no runs in group 'table2' of here; its groups: table1 \(13 runs\)"):
        select_group(runs, "table2", "here")
    extra = [
        GroupRun(name="table-figure", group="table1", job_type=DASHBOARD_JOB_TYPE),  # an earlier dashboard's
        GroupRun(name="my-renamed-run", group="table1", state="finished"),
        GroupRun(name="zf5-nospp", group="ablation", state="running"),
    ]
    shown, left_out = select_group([*runs, *extra], "table1", "here")
    assert len(shown) == len(MEASURED) and {run.group for run in shown} == {"table1"}
    assert len(left_out) == 1 and "'my-renamed-run' left out" in left_out[0]
    with pytest.raises(DashboardError, match="none of the 1 runs in group 'x'"):
        select_group([GroupRun(name="oddly named", group="x")], "x", "here")
    with pytest.raises(DashboardError, match="its groups: ablation \\(1 runs\\)"):
        select_group(extra, "table1-typo", "here")


def test_command_dry_run_prints_the_report_and_refuses_bad_input_with_one_line(table1, tmp_path, capsys) -> None:
    assert main(["dashboard", "--entity", "me", "--results", str(table1), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"report '{dashboard.report_title('table1')}' in me/spp-cls")
    assert "media table/figure" in out and out.rstrip().endswith("(dry run: nothing uploaded or saved)")
    assert "line plot val/top1_err vs epoch: ZF-5" in out and "line plot lr vs epoch" in out

    (tmp_path / "empty").mkdir()
    for args, message in (
        (["--results", str(table1), "--group", "table2"], "no runs in group 'table2'"),
        (["--results", str(tmp_path / "empty")], "no runs in results files under"),
        (["--results", str(tmp_path / "missing")], "no such file or directory"),
        (["--group", "", "--results", str(table1)], "--entity and --group must not be empty"),
    ):
        assert main(["dashboard", "--entity", "me", *args, "--dry-run"]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spp-cls dashboard: error: ") and message in err[0], err


def run_command(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "spp_cls", "dashboard", *args], check=False, capture_output=True,
                          text=True, env={**environment, **env}, cwd=ROOT, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.slow
def test_without_a_login_or_a_server_one_line_says_wandb_login_within_the_timeout(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc"), "PYTHONPATH": str(ROOT)}
    cases = {
        "offline": {"WANDB_MODE": "offline"},
        "no API key": {},
        "server unreachable": {"WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},
    }
    for case, env in cases.items():
        done, seconds = run_command("--entity", "me", **home, **env)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == "", (case, done)
        assert len(err) == 1 and "spp-cls dashboard: error:" in err[0] and "`wandb login`" in err[0], (case, err)
        assert seconds < API_TIMEOUT_S + 30, (case, seconds)  # gives up after the timeout, no retries for minutes


def test_figure_is_uploaded_as_an_image_of_the_groups_figure_run(table1: Path, tmp_path: Path, monkeypatch) -> None:
    """Offline, the upload lands in a local run (as `wandb sync` would send it): same id for the same group."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    results = [run.result for run in runs_from_results([table1])]
    png = plot(results, tmp_path / "table.png")
    run_id = dashboard.upload_figure(png, None, "spp-cls", "table1", tmp_path / "wandb-files")
    assert run_id == dashboard.figure_run_id("table1") != dashboard.figure_run_id("table2")
    (folder,) = (tmp_path / "wandb-files" / "wandb").glob(f"offline-run-*-{run_id}")
    (image,) = (folder / "files" / "media" / "images").rglob("*.png")
    assert FIGURE_KEY.split("/")[0] in image.relative_to(folder / "files" / "media" / "images").parts
    with Image.open(image) as uploaded, Image.open(png) as drawn:
        width, height = PLOT_SIZE_IN
        assert uploaded.size == drawn.size == (width * PLOT_DPI, height * PLOT_DPI)


@pytest.mark.slow
def test_a_trained_run_logs_every_key_the_report_reads_under_its_run_name_and_group(demo_shards, tmp_path, monkeypatch):
    """Fit and test a tiny run with wandb (offline); the report built from its results reads only keys it logged."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = build_cli(cpu_args(demo_shards, tmp_path, "--trainer.max_epochs", "2"), run=False)
    try:
        cli.fit(cli.model, datamodule=cli.datamodule)
        cli.test(cli.model, datamodule=cli.datamodule)
        run = cli.trainer.logger.experiment
        logged, name, group = set(run.summary.keys()), run.name, run.group
        as_listed = group_run_from_wandb(run)  # the summary the server would hold, read as from the API
    finally:
        wandb.finish()
    runs, left_out = select_group(runs_from_results([tmp_path]), "t", "test")
    assert left_out == [] and [(r.name, r.group) for r in runs] == [(name, group)] == [("zf5-spp_multi", "t")]
    *_, last_epoch = read_summary(cli.run_dir)
    assert (as_listed.name, as_listed.group, as_listed.epochs) == (name, group, 2)
    assert as_listed.job_type != DASHBOARD_JOB_TYPE
    assert as_listed.val_top1_err == pytest.approx(float(last_epoch["val_top1_err"]))
    assert as_listed.val_top5_err == pytest.approx(float(last_epoch["val_top5_err"]))
    assert as_listed.result is not None and as_listed.result.cell == runs[0].result.cell
    assert as_listed.result.top1_err == pytest.approx(runs[0].result.top1_err)
    report = build_report("me", "spp-cls", group, runs, figure=True)
    assert plotted_keys(report) <= logged, plotted_keys(report) - logged
    assert {EPOCH, top1_metric("val"), TRAIN_SIZE, LR, TRAIN_IMAGES_PER_S} <= plotted_keys(report)
