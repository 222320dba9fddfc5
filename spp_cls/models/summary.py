"""The table printed by `spp-cls models`."""
from __future__ import annotations

import torch

from .registry import MODEL_CFGS, create


def count_parameters(name: str) -> int:
    """Parameters of a registered network at width 1.0 and 1000 classes (built on the meta device: no memory)."""
    cfg = MODEL_CFGS[name]
    with torch.device("meta"):
        net = create(cfg.backbone, head=cfg.head)
    return sum(p.numel() for p in net.parameters())


def models_table() -> str:
    """One row per registered network: parameters, last conv map at 224 and 180, fc6 input, the paper's targets."""
    header = ("model", "params", "conv map 224", "conv map 180", "fc6 input", "paper 10-view top-1/top-5 err (%)")
    rows = []
    for name, cfg in MODEL_CFGS.items():
        targets = ", ".join(f"{variant} {err.top1:.2f}/{err.top5:.2f}" for variant, err in cfg.paper_errors.items())
        rows.append((
            name,
            f"{count_parameters(name) / 1e6:.1f}M",
            f"{cfg.conv_map[224]}x{cfg.conv_map[224]}",
            f"{cfg.conv_map[180]}x{cfg.conv_map[180]}",
            f"{cfg.pooled_features:,}",
            targets,
        ))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
