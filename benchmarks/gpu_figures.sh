#!/usr/bin/env bash
# Every GPU figure of docs/gpu.md in one run on one GPU, from a fresh checkout on a machine that has Python with a
# CUDA build of torch and torchvision and no network. All steps end within 540 s, kill-after included: each step's
# limit is cut to what is left of the budget, and a step that has no time left is recorded as not run.
#
#   benchmarks/gpu_figures.sh [--wheels DIR] [--out DIR] [--only STEP,STEP...]
#
#   --wheels DIR   wheels of what the machine lacks (docs/gpu.md says how to build the folder); those whose
#                  distribution is not installed are installed into a scratch folder put on PYTHONPATH
#   --out DIR      results (default gpu-figures-<UTC time>): figures.jsonl, one small JSON line per figure written
#                  the moment it is measured (no image data), and gpu_figures.log, everything printed
#   --only STEPS   run these steps only (comma-separated; setup always runs), e.g. to finish in a second session
#                  what a first one cut: setup nets lrn profile decode windows tenview compile pytest
#   PYTHON=...     the interpreter (default python3); GPU_FIGURES_BUDGET_S=... the budget (default 540)
#
# Steps, in order, with their limits in seconds (each also gets KILL_AFTER_S after its limit):
#   setup 30     install missing wheels, check imports, name the machine
#   nets 45      the four nets at 224 and 180, bf16 autocast + channels_last, batch 128, model only, compile off
#   lrn 35       the one-op LRN against the old formula (step time, saved activations), ZF-5 and Convnet*-5
#   profile 30   `spp-cls bench --profile` of ZF-5 at 224 (time by kernel family, top kernels)
#   decode 90    data path and ZF-5 fed from shards: decode on the loader workers, and on the device per backend
#   windows 35   `spp-cls bench windows` at full width (the paper's Table 9)
#   tenview 30   the 10-view test: image crops against windows on the conv maps, four nets
#   compile 120  the four nets compiled: compile time at 224 and 180 (cold cache), graphs, compiled step
#   pytest       `pytest -m cuda`, whatever is left (about 100 s); each test's outcome as a JSON line
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUDGET_S=${GPU_FIGURES_BUDGET_S:-540}
KILL_AFTER_S=3
WHEELS=""
OUT=""
ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --wheels) WHEELS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "gpu_figures.sh: error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-gpu-figures-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
FIGURES="$OUT/figures.jsonl"
LOG="$OUT/gpu_figures.log"
WORK=$(mktemp -d -t spp-cls-gpu-figures-XXXXXX)  # scratch: bench JSON, traces, shards (never in the results)
SITE="$WORK/site"
export PYTHONPATH="$ROOT:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
STARTED=$SECONDS

note() {  # one line to the terminal and the log
    echo "$*" | tee -a "$LOG"
}

record() {  # record FIGURE JSON-FIELDS: one line of figures.jsonl about the run itself
    echo "{\"figure\": \"$1\", $2}" >>"$FIGURES"
}

wanted() {
    [ -z "$ONLY" ] || [ "$1" = setup ] || [[ ",$ONLY," == *",$1,"* ]]
}

step() {  # step NAME LIMIT COMMAND...: one step under its limit, cut to what is left of the budget
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    local left=$((BUDGET_S - (SECONDS - STARTED) - KILL_AFTER_S))
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    if [ "$limit" -lt 5 ]; then
        note "=== $name: not run, $((SECONDS - STARTED)) s of the $BUDGET_S s budget used"
        record step "\"step\": \"$name\", \"status\": \"not run\""
        return 0
    fi
    note ""
    note "=== [$((SECONDS - STARTED)) s / $BUDGET_S s] $name (limit $limit s) $(date -u +%H:%M:%S) UTC"
    note "\$ $*"
    local started=$SECONDS
    STEP_LIMIT=$limit timeout --kill-after=$KILL_AFTER_S "$limit" "$@" 2>&1 | tee -a "$LOG"
    local status=${PIPESTATUS[0]} outcome
    case $status in
        0) outcome="done" ;;
        124 | 137) outcome="over its $limit s limit: stopped" ;;
        *) outcome="failed with exit status $status" ;;
    esac
    note "--- $name: $outcome after $((SECONDS - started)) s"
    record step "\"step\": \"$name\", \"status\": \"$outcome\", \"seconds\": $((SECONDS - started))"
}

as_figure() {  # as_figure NAME FILE: a bench --out JSON file as one line of figures.jsonl
    [ -f "$2" ] && "$PYTHON" -c 'import json, sys; print(json.dumps({"figure": sys.argv[2], **json.load(open(sys.argv[1]))}))' \
        "$2" "$1" >>"$FIGURES"
}

setup() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "cores: $(nproc); python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    if [ -n "$WHEELS" ]; then
        local missing=() wheel dist
        for wheel in "$WHEELS"/*.whl; do
            dist=$(basename "$wheel" | cut -d- -f1)
            "$PYTHON" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null \
                || missing+=("$wheel")
        done
        echo "installing ${#missing[@]} wheels of $WHEELS that are not installed: ${missing[*]##*/}"
        [ ${#missing[@]} -eq 0 ] || "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile \
            --disable-pip-version-check --target "$SITE" "${missing[@]}" || return 1
    fi
    "$PYTHON" - "$FIGURES" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" <<'EOF'
import importlib, json, os, platform, sys
import torch
needed = ("torch", "torchvision", "pytorch_lightning", "timm", "webdataset", "jsonargparse", "wandb",
          "nvidia.nvimgcodec", "pytest", "pytest_timeout", "spp_cls.cli")
missing = []
for name in needed:
    try:
        importlib.import_module(name)
    except Exception as error:  # not installed, or a library of it does not load
        missing.append(f"{name} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
machine = {"figure": "machine", "device": device, "cores": os.cpu_count(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(), "commit": sys.argv[2],
           "missing": missing}
with open(sys.argv[1], "a") as handle:
    handle.write(json.dumps(machine) + "\n")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {device}")
print("missing: " + ("; ".join(missing) if missing else "nothing"))
sys.exit(0 if device and not missing else 1)
EOF
}

GPU=(--device cuda --precision bf16 --channels-last --batch-size 128)
export PYTHONPATH="$SITE:$PYTHONPATH" PYTHON WHEELS SITE FIGURES ROOT
export -f setup
note "gpu_figures.sh: results in $OUT, scratch in $WORK, budget $BUDGET_S s"
step setup 30 bash -c setup

step nets 45 bash -c "\"$PYTHON\" benchmarks/compile_times.py --model zf5_spp convnet5_spp overfeat5_spp overfeat7_spp \
    --sizes 224,180 ${GPU[*]} --steps 20 --variants eager --deadline \$((STEP_LIMIT - 15)) --out \"$FIGURES\""

step lrn 35 "$PYTHON" -m spp_cls bench --lrn-check --model zf5_spp convnet5_spp --sizes 224 "${GPU[@]}" --steps 10 \
    --warmup 3 --out "$WORK/lrn_check.json"
as_figure lrn_check "$WORK/lrn_check.json"

step profile 30 "$PYTHON" -m spp_cls bench --profile --model zf5_spp --sizes 224 "${GPU[@]}" --steps 10 --warmup 5 \
    --out "$WORK/profile.json"
as_figure profile "$WORK/profile.json"

step decode 90 "$PYTHON" benchmarks/gpu_measure.py decode --out "$FIGURES" --workers "$(nproc)" --batch-size 128 \
    --steps 30

step windows 35 "$PYTHON" -m spp_cls bench windows --device cuda --width 1.0 --images 2 --windows 2000 \
    --out "$WORK/windows.json"
as_figure windows "$WORK/windows.json"

step tenview 30 "$PYTHON" benchmarks/gpu_measure.py tenview --out "$FIGURES" --batch-size 128 --steps 10

step compile 120 bash -c "\"$PYTHON\" benchmarks/compile_times.py --model zf5_spp convnet5_spp overfeat5_spp \
    overfeat7_spp --sizes 224,180 ${GPU[*]} --steps 20 --variants compiled --cold-only --child-timeout 45 \
    --deadline \$((STEP_LIMIT - 15)) --out \"$FIGURES\""

# The cheap CUDA tests come first (file and definition order), the compiling ones last: a cut leaves the most results.
step pytest 600 env SPP_CLS_TEST_OUTCOMES="$FIGURES" "$PYTHON" -m pytest -m cuda -p pytest_outcomes -q -rfEs \
    --tb=short --timeout 90 tests/test_cuda_speed.py tests/test_windows.py tests/test_cuda.py

note ""
note "=== [$((SECONDS - STARTED)) s / $BUDGET_S s] finished; figures: $FIGURES, log: $LOG"
