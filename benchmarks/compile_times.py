"""torch.compile of the training step: compile time per network and size (cold and warm cache), recompiles when the
training sizes alternate, and the compiled step against the eager one, in one run.

For each network two fresh processes train the model-only step (`spp-cls bench`'s step: SppClassifier.train_loss,
backward, SGD) with the network compiled (`compile: true` of the configs: static shapes, one graph per size) at the
sizes alternating as the multi-size schedule does (224, 180, 224, 180, ...):
- cold: an empty Inductor/Triton cache directory; warm: the same directory again, as a second run on a node finds it.
The first step at each size is its compile time (it includes one step); after the alternation the steady step time is
taken at each size, compiled and eager (the baseline: the same weights, same process), and the ratio printed. The
graph count says whether alternating recompiled (it must equal the number of sizes).

    python benchmarks/compile_times.py [--model zf5_spp ...] [--sizes 224,180] [--width 1] [--batch-size N]
        [--precision 32|bf16] [--channels-last] [--device cpu|cuda] [--steps N] [--cold-only]
        [--child-timeout S] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from spp_cls.bench.device import synchronize
from spp_cls.bench.harness import bare_train_step
from spp_cls.bench.run import build_module
from spp_cls.bench.settings import NUM_CLASSES, BenchSettings, parse_settings
from spp_cls.bench.timing import cycle, random_batches, timed_steps

ROUNDS = 2
"""Passes over the sizes before the steady timing: the second pass must find every graph compiled."""


def bench_settings(args: argparse.Namespace, compile_: bool) -> BenchSettings:
    argv = ["--model", args.model_one, "--sizes", args.sizes, "--width", str(args.width), "--precision", args.precision,
            *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
            *(["--device", args.device] if args.device else []), *(["--channels-last"] if args.channels_last else []),
            *(["--compile"] if compile_ else [])]
    return parse_settings(argv)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process: compile times at each size, graph count, then steady step times compiled and eager."""
    import torch._dynamo

    compiled_settings = bench_settings(args, compile_=True)
    [spec] = compiled_settings.models
    device = torch.device(compiled_settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes = compiled_settings.sizes
    batches = cycle(random_batches(compiled_settings.batch_size, NUM_CLASSES, device))
    module = build_module(spec, sizes[0], compiled_settings, NUM_CLASSES, device)
    steps = {size: bare_train_step(module, size, compiled_settings.batch_size, compiled_settings.precision, device)
             for size in sizes}
    torch._dynamo.utils.counters.clear()
    first_step_s: dict[int, float] = {}
    for _ in range(ROUNDS):
        for size in sizes:
            synchronize(device)
            started = time.perf_counter()
            steps[size](next(batches))
            synchronize(device)
            first_step_s.setdefault(size, time.perf_counter() - started)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager_settings = replace(compiled_settings, compile=False)
    eager = build_module(spec, sizes[0], eager_settings, NUM_CLASSES, device)
    rows = []
    for size in sizes:
        eager_step = bare_train_step(eager, size, eager_settings.batch_size, eager_settings.precision, device)
        timings = {name: timed_steps(step, batches, 1, args.steps, device)
                   for name, step in (("compiled", steps[size]), ("eager", eager_step))}
        rows.append({"size": size, "first_step_s": first_step_s[size],
                     "compiled_step_ms": 1e3 * timings["compiled"].seconds / args.steps,
                     "eager_step_ms": 1e3 * timings["eager"].seconds / args.steps,
                     "speedup": timings["eager"].seconds / timings["compiled"].seconds})
    return {"model": spec.name, "batch_size": compiled_settings.batch_size, "device": device.type,
            "unique_graphs": graphs, "sizes": rows}


def run_child(args: argparse.Namespace, model: str, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    argv = [sys.executable, __file__, "--child", "--model", model, "--sizes", args.sizes, "--width", str(args.width),
            "--precision", args.precision, "--steps", str(args.steps),
            *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
            *(["--device", args.device] if args.device else []), *(["--channels-last"] if args.channels_last else [])]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "timed_out_s": args.child_timeout, "sizes": []}
    if done.returncode != 0:
        sys.exit(f"compile_times: {model} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--cold-only", action="store_true", help="skip the warm-cache process")
    parser.add_argument("--child-timeout", type=float, help="seconds a process may take; reported when it runs over")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.model_one = args.model[0]
        print(json.dumps(child(args)))
        return
    results = []
    for model in args.model:
        with tempfile.TemporaryDirectory(prefix="spp-cls-compile-cache-") as cache:
            for cache_state in ("cold",) if args.cold_only else ("cold", "warm"):
                print(f"compile_times: {model}, {cache_state} cache", file=sys.stderr, flush=True)
                results.append({"cache": cache_state, **run_child(args, model, Path(cache))})
    print(f"torch {torch.__version__}; width {args.width:g}, precision {args.precision}, channels_last "
          f"{'on' if args.channels_last else 'off'}; first step = compile + one step; steady = mean of {args.steps}")
    print(f"{'model':<14}{'cache':<6}{'size':>5}{'batch':>6}{'first step s':>13}{'compiled ms':>12}{'eager ms':>10}"
          f"{'eager/compiled':>15}{'graphs':>7}")
    for result in results:
        if "timed_out_s" in result:
            print(f"  {result['model']} ({result['cache']}): did not finish within {result['timed_out_s']:g} s")
            continue
        for row in result["sizes"]:
            print(f"{result['model']:<14}{result['cache']:<6}{row['size']:>5}{result['batch_size']:>6}"
                  f"{row['first_step_s']:>13.1f}{row['compiled_step_ms']:>12.1f}{row['eager_step_ms']:>10.1f}"
                  f"{row['speedup']:>15.3f}{result['unique_graphs']:>7}")
        recompiled = result["unique_graphs"] != len(result["sizes"])
        print(f"  {result['model']} ({result['cache']}): {result['unique_graphs']} graphs for "
              f"{len(result['sizes'])} sizes alternating{': RECOMPILED' if recompiled else ', no recompile'}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
