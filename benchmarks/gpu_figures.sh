#!/usr/bin/env bash
# Every GPU figure of docs/performance.md (issues 10, 11 and 12), in one run on one GPU: at most 10
# minutes (the sum of the commands' limits below).
#
#   benchmarks/gpu_figures.sh [RESULTS_DIR]      # default: gpu-figures-<date>; PYTHON=... to pick the interpreter
#
# Writes RESULTS_DIR/gpu_figures.log (everything printed, in order) and the JSON / Chrome-trace files the commands
# write beside it. Each command has its own time limit, so one that hangs or runs long costs only its share; a
# command over its limit is logged as such and the script goes on. The settings of the table's measurements:
# bf16 autocast, channels_last, batch 128, model only (tensors already on the GPU).
set -uo pipefail

RESULTS=${1:-gpu-figures-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_figures.log"
GPU=(--device cuda --precision bf16 --channels-last --batch-size 128)

step() {  # step LIMIT_S TITLE COMMAND...: run one measurement, its output appended to the log
    local limit=$1 title=$2
    shift 2
    {
        echo
        echo "=== $title ($(date -u +%H:%M:%S) UTC, limit ${limit} s)"
        echo "\$ $*"
    } | tee -a "$LOG"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep --line-buffered -v '^bench: ' | tee -a "$LOG"
    local status=${PIPESTATUS[0]}
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "!!! over its ${limit} s limit: stopped" | tee -a "$LOG"
    elif [ "$status" -ne 0 ]; then
        echo "!!! exit status $status" | tee -a "$LOG"
    fi
    echo "--- $title: $((SECONDS - started)) s" | tee -a "$LOG"
}

step 15 "machine" bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; \
$PYTHON -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", \
triton.__version__)'; git rev-parse --short HEAD 2>/dev/null || true"

# ---- issue 10: the training step of ZF-5 and Convnet*-5 -------------------------------------------------------------
# The one-op LRN against the old formula in one process: step time (best of 3 alternating rounds) and the activation
# bytes autograd saves per image.
step 40 "LRN check: one-op LRN vs old formula" \
    $PYTHON -m spp_cls bench --lrn-check --model zf5_spp convnet5_spp --sizes 224,180 "${GPU[@]}" --steps 20 \
    --warmup 5 --out "$RESULTS/lrn_check.json"

# Where the step goes, before (old LRN formula) and after: CUDA time per step by kernel family, top 15 kernels, traces.
step 30 "profile before (old LRN formula)" \
    $PYTHON -m spp_cls bench --profile --old-lrn --model zf5_spp convnet5_spp --sizes 224 "${GPU[@]}" --steps 10 \
    --warmup 5 --out "$RESULTS/profile_before.json"
step 30 "profile after (one-op LRN)" \
    $PYTHON -m spp_cls bench --profile --model zf5_spp convnet5_spp --sizes 224 "${GPU[@]}" --steps 10 --warmup 5 \
    --out "$RESULTS/profile_after.json"

# The four nets at both sizes, eager (docs/performance.md's table: model only, fed from shards, harness, 10-view).
step 80 "bench: four nets, eager" \
    $PYTHON -m spp_cls bench --sizes 224,180 "${GPU[@]}" --steps 30 --warmup 5 --workers 8 \
    --out "$RESULTS/bench_eager.json"

# torch.compile: compile time at each size in a fresh process with an empty cache (cold) and again with that cache
# (warm), graphs when 224/180 alternate (must be 2), compiled step against eager in the same process.
step 90 "compile: ZF-5, cold and warm cache" \
    $PYTHON benchmarks/compile_times.py --model zf5_spp --sizes 224,180 "${GPU[@]}" --steps 20 --child-timeout 50 \
    --out "$RESULTS/compile_zf5.json"
step 90 "compile: Convnet*-5, Overfeat-5, Overfeat-7, cold cache" \
    $PYTHON benchmarks/compile_times.py --model convnet5_spp overfeat5_spp overfeat7_spp --sizes 224,180 "${GPU[@]}" \
    --steps 20 --cold-only --child-timeout 35 --out "$RESULTS/compile_others.json"

# ---- issue 11: JPEG decode on the GPU (nvImageCodec) ------------------------------------------------------------------
# shards -> uint8 batches on the GPU per backend (target >= 25,000 img/s on a 16-core node) beside the worker path.
step 40 "data path: nvImageCodec backends vs loader workers" \
    $PYTHON benchmarks/data_throughput.py --images 1000 --workers 16 --batch-size 128 --batches 100 --device cuda \
    --work "$RESULTS/data"
# ZF-5 trained from shards with device decode against model only (target: fed / model-only >= 0.90).
step 40 "bench: ZF-5 fed from shards, device decode" \
    $PYTHON -m spp_cls bench --model zf5_spp --sizes 224 "${GPU[@]}" --workers 16 --steps 60 --warmup 20 \
    --decode device --out "$RESULTS/bench_decode_device.json"

# ---- issue 12: windows on shared conv maps (the paper's Table 9) -----------------------------------------------------
# Full-width ZF-5, 2,000 windows per image: SPP 1-scale / 5-scale against R-CNN, beside the paper's 0.142 / 0.382 /
# 9.03 s per image.
step 45 "bench windows: ZF-5, 2,000 windows, fp32" \
    $PYTHON -m spp_cls bench windows --device cuda --width 1.0 --images 3 --windows 2000 \
    --out "$RESULTS/windows_fp32.json"

# ---- the CUDA-only code paths: LRN under CUDA autocast, fused SGD, nvImageCodec per backend, stream order, memory
# over 1,000 steps, windows' bins, a whole fit + test on the fast path.
step 100 "pytest -m cuda" $PYTHON -m pytest -m cuda -q -rs tests/test_cuda_speed.py tests/test_cuda.py \
    tests/test_windows.py

echo "wrote $LOG"
