"""`spp-cls bench`: how fast the networks train here, what limits a run (data or compute), and what the harness costs.

For each network and training size it measures, on the device it is given (CPU here, CUDA on a GPU machine):
- model-only training throughput: forward + cross-entropy + backward + SGD step, exactly as `SppClassifier` trains
  (uint8 224 crops -> on-device resize to the size, colour noise, mean off -> network), from batches already on the
  device, after warm-up, with the device synchronised before each clock read;
- FLOPs per image counted with `torch.utils.flop_counter.FlopCounterMode` (forward, and forward + backward as trained),
  the achieved FLOP/s and, on a CUDA card of the peak table, the model FLOPs utilisation (MFU);
- the same step fed from shards through `ShardDataModule` (the whole train step), beside the data path alone
  (shards -> uint8 batches), so each row says whether the run is data-bound or compute-bound;
- the harness overhead: the first network at the first size trained by `SppClassifier.training_step` inside a real
  Lightning Trainer against a bare loop, on identical in-memory batches (target: Lightning / bare >= 0.95);
- the standard 10-view test of each paper SPP network: 10 image crops against the 10 windows on the conv maps of the
  image and its flip (`tenview_fmap`).
`spp-cls bench windows` measures the paper's Table 9 instead (see bench/windows.py).

    spp-cls bench [--model NAME...] [--sizes 224,180] [--batch-size N] [--data synthetic|DIR] [--steps N]
                  [--warmup N] [--width W] [--workers N] [--device cpu|cuda] [--channels-last] [--precision 32|bf16]
                  [--compile] [--out FILE.json]
    spp-cls bench --profile [--old-lrn] [options]   # instead: where the step goes (see bench/profile.py)
    spp-cls bench --lrn-check [options]             # instead: the one-op LRN against the old formula (lrn_check.py)

NOTE known limits: FlopCounterMode counts convolutions and matrix products only (not LRN, pooling, ReLU or the
input resize), which is how MFU is usually defined. Every timed window is short, so CPU figures vary by 10-25 %
from run to run; the harness ratio takes the best of two alternating rounds (bare, Lightning, Lightning, bare).
The Lightning run has no progress bar and no logger (a real `fit` has both). The 10-view timings are eager even
with --compile (test-time shapes vary).
"""
from __future__ import annotations

import json
import sys

from .lrn_check import format_lrn_check, run_lrn_check
from .profile import format_profile, run_profile
from .report import format_report
from .run import run_bench
from .settings import BenchUsageError, parse_settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["windows"]:  # `spp-cls bench windows`: detection speed, the paper's Table 9 (bench/windows.py)
        from .windows import main as windows_main

        return windows_main(argv[1:])
    try:
        settings = parse_settings(argv)
    except BenchUsageError as error:
        print(f"spp-cls bench: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    try:
        run, format_ = ((run_profile, format_profile) if settings.profile else
                        (run_lrn_check, format_lrn_check) if settings.lrn_check else (run_bench, format_report))
        report = run(settings)
    except BenchUsageError as error:
        print(f"spp-cls bench: error: {error}", file=sys.stderr)
        return 2
    print(format_(report))
    if settings.out is not None:
        settings.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {settings.out}")
    return 0
