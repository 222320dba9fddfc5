"""The bench report as text."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

COLUMNS = ("model", "size", "batch", "model img/s", "step ms", "fwd GFLOP/img", "train GFLOP/img", "TFLOP/s", "MFU",
           "shards img/s", "data/model", "limited by")


def _cells(row: dict[str, Any]) -> tuple[str, ...]:
    mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    return (row["model"], str(row["size"]), str(row["batch_size"]), f"{row['model_images_per_s']:.1f}",
            f"{row['step_ms']:.1f}", f"{row['forward_flops_per_image'] / 1e9:.3f}",
            f"{row['train_flops_per_image'] / 1e9:.3f}", f"{row['achieved_flops_per_s'] / 1e12:.3f}", mfu,
            f"{row['shards_images_per_s']:.1f}", f"{row['data_over_model']:.2f}", row["limited_by"])


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """One line per (network, size): text columns left-aligned, numbers right-aligned."""
    cells = [COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    text_columns = (0, len(COLUMNS) - 1)
    lines = ["  ".join(cell.ljust(width) if i in text_columns else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _header(report: dict[str, Any]) -> list[str]:
    settings, device, data = report["settings"], report["device"], report["data_path"]
    switches = ", ".join(f"{switch} {'on' if settings[switch] else 'off'}" for switch in ("channels_last", "compile"))
    workers = f"{data['workers']} worker{'' if data['workers'] == 1 else 's'}"
    return [
        (f"device: {device['type']} ({device['name']}, {device['threads']} threads), torch "
         f"{report['versions']['torch']}; precision {settings['precision']}, {switches}, width {settings['width']:g}, "
         f"warmup {settings['warmup']}, steps {settings['steps']}"),
        (f"data path: {data['images_per_s']:.1f} img/s (shards -> uint8 batches of {data['batch_size']}, {workers}, "
         f"JPEG decode on {'the device' if data['decode'] == 'device' else 'the workers'}, "
         f"{data['batches']} batches; {data['source']})"),
        *([f"decoder: {data['decoder']}"] if data.get("decoder") else []),
    ]


def _peak_note(report: dict[str, Any]) -> list[str]:
    device, precision = report["device"], report["settings"]["precision"]
    if device["type"] != "cuda":
        return []
    if device["peak_flops_per_s"] is None:
        return [f"MFU: no {precision} peak for {device['name']!r} in spp_cls.bench.PEAK_TFLOPS"]
    peak = device["peak_flops_per_s"] / 1e12
    return [f"MFU against the {device['peak_basis']} datasheet peak of {device['name']}, {peak:.1f} TFLOP/s"]


def _ratio_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    harness, data_rate = report["harness"], report["data_path"]["images_per_s"]
    if harness is not None:
        lines.append(f"harness / bare: {harness['ratio']:.3f} (SppClassifier in a Lightning Trainer "
                     f"{harness['lightning_images_per_s']:.1f} img/s, bare loop {harness['bare_images_per_s']:.1f} "
                     f"img/s; {harness['model']} at {harness['size']}; target >= {harness['target']})")
    for row in report["rows"]:
        lines.append(f"fed from shards / model only: {row['shards_images_per_s'] / row['model_images_per_s']:.2f} "
                     f"for {row['model']} at {row['size']} ({row['shards_images_per_s']:.1f} / "
                     f"{row['model_images_per_s']:.1f} img/s)")
        lines.append(f"data / model: {row['data_over_model']:.2f} for {row['model']} at {row['size']} "
                     f"({data_rate:.1f} / {row['model_images_per_s']:.1f} img/s): {row['limited_by']}")
    for item in report["tenview"]:
        lines.append(f"10-view test: {item['model']} crops {item['crops_images_per_s']:.1f} img/s, on feature maps "
                     f"{item['fmap_images_per_s']:.1f} img/s ({item['fmap_speedup']:.2f}x)")
    return lines


def format_report(report: dict[str, Any]) -> str:
    skipped = [f"skipped: {item['model']} at {item['size']}: {item['reason']}" for item in report["skipped"]]
    return "\n".join([*_header(report), "", format_table(report["rows"]), *skipped, *_peak_note(report), "",
                      *_ratio_lines(report)])
