"""torch.compile of the training step: the eager and the compiled step per network and size, the compile time (cold
and warm cache), and whether alternating the training sizes recompiles.

Each network runs in fresh processes that train the model-only step (`spp-cls bench`'s step: SppClassifier.train_loss,
backward, SGD) with the network compiled (`compile: true` of the configs: static shapes, one graph per size) at the
sizes alternating as the multi-size schedule does (224, 180, 224, 180, ...):
- cold: an empty Inductor/Triton cache directory; warm: the same directory again, as a second run on a node finds it.
The first step at each size is its compile time (it includes one step); after the alternation the steady step time is
taken at each size. The eager step of the same weights is measured first in the cold process (`--variants` picks).

Every figure is appended to `--out` (JSON lines) the moment it is measured, so a process cut off by its time limit
keeps what it measured; a process that fails or runs over is recorded as such and the next one runs.
`--deadline` bounds the run from the moment its imports are done: each process's limit is cut to what is left.

    python benchmarks/compile_times.py [--model zf5_spp ...] [--sizes 224,180] [--width 1] [--batch-size N]
        [--precision 32|bf16] [--channels-last] [--device cpu|cuda] [--steps N] [--cold-only]
        [--variants eager,compiled] [--child-timeout S] [--deadline S] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (before spp_cls: the checkout's, installed or not)
import torch

from spp_cls.bench.device import synchronize
from spp_cls.bench.harness import bare_train_step
from spp_cls.bench.run import build_module
from spp_cls.bench.settings import NUM_CLASSES, BenchSettings, parse_settings
from spp_cls.bench.timing import cycle, random_batches, timed_steps

ROUNDS = 2
"""Passes over the sizes before the steady timing: the second pass must find every graph compiled."""
WARMUP = 3
"""Untimed steps before each steady timing."""
MARGIN_S = 5.0
"""What a process's limit leaves of the deadline for the parent to record it."""
MIN_CHILD_S = 10.0
"""A process with less time than this is not started (recorded as not run)."""


def bench_settings(args: argparse.Namespace, model: str, compile_: bool) -> BenchSettings:
    argv = ["--model", model, "--sizes", args.sizes, "--width", str(args.width), "--precision", args.precision,
            *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
            *(["--device", args.device] if args.device else []), *(["--channels-last"] if args.channels_last else []),
            *(["--compile"] if compile_ else [])]
    return parse_settings(argv)


def append(out: Path, record: dict[str, Any]) -> None:
    """One JSON line, written and flushed at once."""
    with out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"compile_times: {json.dumps(record)}", file=sys.stderr, flush=True)


def steady_ms(step: Any, batches: Any, steps: int, device: torch.device) -> float:
    return 1e3 * timed_steps(step, batches, WARMUP, steps, device).seconds / steps


def child(args: argparse.Namespace, model: str, cache: str) -> None:
    """One network in this process: the eager step at each size, then the compiled one (compile time, graphs,
    steady step)."""
    import torch._dynamo

    settings = bench_settings(args, model, compile_=False)
    [spec] = settings.models
    device = torch.device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    batches = cycle(random_batches(settings.batch_size, NUM_CLASSES, device))
    common = {"model": spec.name, "batch_size": settings.batch_size, "precision": args.precision,
              "channels_last": args.channels_last, "width": args.width, "device": device.type}
    variants = args.variants.split(",")
    if "eager" in variants:
        eager = build_module(spec, settings.sizes[0], settings, NUM_CLASSES, device)
        for size in settings.sizes:
            step = bare_train_step(eager, size, settings.batch_size, settings.precision, device)
            ms = steady_ms(step, batches, args.steps, device)
            append(args.out, {"figure": "train_step", **common, "size": size, "compile": False, "step_ms": ms,
                              "images_per_s": 1e3 * settings.batch_size / ms})
        del eager
    if "compiled" not in variants:
        return
    compiled = build_module(spec, settings.sizes[0], bench_settings(args, model, compile_=True), NUM_CLASSES, device)
    steps = {size: bare_train_step(compiled, size, settings.batch_size, settings.precision, device)
             for size in settings.sizes}
    torch._dynamo.utils.counters.clear()
    for round_ in range(ROUNDS):
        for size in settings.sizes:
            synchronize(device)
            started = time.perf_counter()
            steps[size](next(batches))
            synchronize(device)
            if round_ == 0:  # the first step at a size compiles its graph
                append(args.out, {"figure": "compile_time", **common, "size": size, "cache": cache,
                                  "first_step_s": time.perf_counter() - started})
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    append(args.out, {"figure": "graphs", **common, "cache": cache, "sizes": list(settings.sizes),
                      "unique_graphs": graphs, "recompiled": graphs != len(settings.sizes)})
    for size in settings.sizes:
        ms = steady_ms(steps[size], batches, args.steps, device)
        append(args.out, {"figure": "train_step", **common, "size": size, "compile": True, "cache": cache,
                          "step_ms": ms, "images_per_s": 1e3 * settings.batch_size / ms})


def run_child(args: argparse.Namespace, models: list[str], cache_state: str, cache: Path, limit_s: float) -> None:
    """One child process (its networks one after the other) under its limit; a failure or an overrun is recorded in
    `--out` and the run goes on."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    variants = args.variants if cache_state == "cold" else "compiled"
    argv = [sys.executable, __file__, "--child", "--model", *models, "--sizes", args.sizes, "--width", str(args.width),
            "--precision", args.precision, "--steps", str(args.steps), "--variants", variants, "--cache", cache_state,
            "--out", str(args.out), *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
            *(["--device", args.device] if args.device else []), *(["--channels-last"] if args.channels_last else [])]
    record = {"model": " ".join(models), "cache": cache_state}
    # its own process group: Inductor's compile workers go with it when it is stopped
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: (os.killpg(process.pid, signal.SIGKILL), sys.exit(143)))
    try:
        _, stderr = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        append(args.out, {"figure": "timed_out", **record, "limit_s": round(limit_s, 1)})
        return
    if process.returncode != 0:
        lines = [line for line in stderr.splitlines() if not line.startswith("compile_times: ")]
        append(args.out, {"figure": "failed", **record, "exit_status": process.returncode,
                          "stderr_tail": lines[-15:]})


def summary(out: Path) -> str:
    """The run's figures as a table, read back from the JSON lines (the file may hold other scripts' lines too)."""
    records = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    records = [record for record in records if "model" in record and ("cache" in record or "compile" in record)]
    lines = [f"{'model':<14}{'size':>5}{'compile':>8}{'cache':>6}{'step ms':>9}{'img/s':>9}{'first step s':>13}"]
    compile_s = {(r["model"], r["size"], r["cache"]): r["first_step_s"] for r in records
                 if r["figure"] == "compile_time"}
    for record in records:
        if record["figure"] == "train_step":
            cache = record.get("cache", "-")
            first = compile_s.get((record["model"], record["size"], cache))
            lines.append(f"{record['model']:<14}{record['size']:>5}{'on' if record['compile'] else 'off':>8}"
                         f"{cache:>6}{record['step_ms']:>9.1f}{record['images_per_s']:>9.0f}"
                         f"{'' if first is None else f'{first:.1f}':>13}")
        elif record["figure"] == "graphs":
            lines.append(f"  {record['model']} ({record['cache']}): {record['unique_graphs']} graphs for "
                         f"{len(record['sizes'])} sizes alternating"
                         f"{': RECOMPILED' if record['recompiled'] else ', no recompile'}")
        elif record["figure"] in ("timed_out", "failed"):
            why = (f"over its {record['limit_s']:g} s limit" if record["figure"] == "timed_out" else
                   f"failed (exit status {record['exit_status']}): {' | '.join(record['stderr_tail'][-3:])}")
            lines.append(f"  {record['model']} ({record['cache']} cache): {why}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["zf5_spp"])
    parser.add_argument("--sizes", default="224,180")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=5, help="timed steady steps per size and variant")
    parser.add_argument("--variants", default="eager,compiled", help="eager, compiled or both (comma-separated)")
    parser.add_argument("--cold-only", action="store_true", help="skip the warm-cache process")
    parser.add_argument("--child-timeout", type=float, default=600.0, help="seconds one process may take")
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take (cuts each process's limit)")
    parser.add_argument("--out", type=Path, help="append the figures here as JSON lines (default: a temp file)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="cold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        for model in args.model:
            child(args, model, args.cache)
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spp-cls-compile-") as temp:
        args.out = args.out or Path(temp) / "compile_times.jsonl"
        # eager only: one process for all networks (nothing to isolate); compiling: one process and cache each
        groups = [args.model] if args.variants == "eager" else [[model] for model in args.model]
        for models in groups:
            model = " ".join(models)
            cache = Path(temp) / f"cache-{models[0]}"
            for cache_state in ("cold",) if args.cold_only or args.variants == "eager" else ("cold", "warm"):
                left = args.child_timeout if args.deadline is None else args.deadline - (time.monotonic() - started)
                if left <= MARGIN_S + MIN_CHILD_S:
                    append(args.out, {"figure": "not_run", "model": model, "cache": cache_state,
                                      "reason": f"the {args.deadline:g} s deadline has passed"})
                    continue
                print(f"compile_times: {model}, {cache_state} cache", file=sys.stderr, flush=True)
                run_child(args, models, cache_state, cache, min(args.child_timeout, left - MARGIN_S))
        print(f"torch {torch.__version__}; width {args.width:g}, precision {args.precision}, channels_last "
              f"{'on' if args.channels_last else 'off'}; first step = compile + one step; steady = mean of "
              f"{args.steps} steps after {WARMUP}")
        print(summary(args.out))


if __name__ == "__main__":
    main()
