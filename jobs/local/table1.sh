#!/usr/bin/env bash
# The paper's Table 2 on one machine: each cell `spp-cls fit` then the 10-view `spp-cls test`, one after another on
# all GPUs, or several at once when the machine has more GPUs than one run uses; then `spp-cls table`.
#
#   jobs/local/table1.sh [GPUS]        GPUS: how many GPUs to use (default: all visible ones)
#   SPP_CLS_DATA=/data/imagenet-wds jobs/local/table1.sh        the 12 cells, 8 GPUs each (or all, when fewer)
#   SPP_CLS_GPUS_PER_RUN=4 jobs/local/table1.sh 8               2 cells at a time, 4 GPUs each
#
# Settings (environment; the shared ones are described in jobs/slurm/common.sh):
#   SPP_CLS_DATA           shard root, the --out of `spp-cls shards`      default: each config's data.root
#   SPP_CLS_RUNS           where run directories go                        default: runs (in the checkout)
#   SPP_CLS_EXPERIMENT     experiment name (wandb group, folder in RUNS)   default: SPP_CLS_TABLE
#   SPP_CLS_GPUS_PER_RUN   GPUs per run (--trainer.devices)                default: min(GPUS, 8), as the configs
#   SPP_CLS_CELLS          the cells, e.g. "zf5_nospp zf5_spp_multi"       default: the 12 (configs/table1/)
#   SPP_CLS_RANDOM_SIZE=1  adds Overfeat-7 random-size to the 12
#   SPP_CLS_SEEDS          seeds, e.g. 0,1,2: every cell once per seed     default: 0
#   SPP_CLS_TABLE          the cells of configs/<TABLE>/, e.g. imagenette  default: table1
#   SPP_CLS_EXTRA_ARGS     overrides for every fit and test, whitespace-separated (not ones that move the run
#                          directory: backbone, head, size schedule, runs_dir, experiment, seed)
#   SPP_CLS_VENV / SPP_CLS_MODULES / SPP_CLS_SETUP   how to get spp-cls on PATH     default: .venv if present
#   SPP_CLS_RANK_THREADS   CPU threads per rank (torch, JPEG decoder)      default: cores / (GPUs in use)
#
# Concurrent runs get disjoint GPUs through CUDA_VISIBLE_DEVICES (a subset of the one you set, if you set one).
# Each cell's output goes to table1.log in its run directory (runs/table1/<backbone>-<variant>/); this script
# prints one line per step. A cell whose results.json exists is skipped. Ctrl-C stops every run cleanly (Lightning
# keeps last.ckpt of the last finished epoch and no test runs): the same command again resumes the unfinished
# cells from their checkpoints. Exit status: 0 all cells done, 1 some failed, 130 interrupted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=jobs/slurm/common.sh
source jobs/slurm/common.sh
SPP_CLS_PROGRAM=table1.sh
say() { echo "table1.sh: $*"; }

# ---- GPUs and slots ----------------------------------------------------------------------------------------------
if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    mapfile -t visible < <(seq 0 $(($(nvidia-smi -L | wc -l) - 1)))
else
    visible=()
fi
gpus=${1:-${#visible[@]}}
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "no GPU found and none given: jobs/local/table1.sh GPUS (got '${1:-}')"
((${#visible[@]} == 0)) && mapfile -t visible < <(seq 0 $((gpus - 1)))  # no GPU seen: CPU runs, ids are nominal
((gpus <= ${#visible[@]})) || die "$gpus GPUs asked for, ${#visible[@]} visible (${visible[*]})"
per_run=${SPP_CLS_GPUS_PER_RUN:-$((gpus < 8 ? gpus : 8))}
if ! [[ $per_run =~ ^[1-9][0-9]*$ ]] || ((per_run > gpus)); then
    die "SPP_CLS_GPUS_PER_RUN=$per_run does not fit $gpus GPUs"
fi
slots=$((gpus / per_run))
# the ranks of all the slots share this machine's cores (one run alone would size its threads for its own ranks only)
threads=$(($(nproc) / (slots * per_run)))
export SPP_CLS_RANK_THREADS=${SPP_CLS_RANK_THREADS:-$((threads > 0 ? threads : 1))}

export SPP_CLS_EXPERIMENT=${SPP_CLS_EXPERIMENT:-${SPP_CLS_TABLE:-table1}}
export SPP_CLS_RUNS=${SPP_CLS_RUNS:-runs}
spp_activate
runs=$(spp_table_runs)
mapfile -t table_runs <<<"$runs"
state=$(mktemp -d)  # claimed/ (one entry per cell taken by a slot), failed (cells that failed)
trap 'rm -rf "$state"' EXIT
mkdir "$state/claimed"
# shellcheck disable=SC2206  # the extra overrides are whitespace-separated on purpose
extra=(${SPP_CLS_EXTRA_ARGS:-})

# ---- one slot: takes the next unclaimed cell until none is left ----------------------------------------------------
# step NAME CONFIG DEVICES LOG: spp-cls NAME for the cell on DEVICES, output appended to LOG.
step() {
    local args=(--config "$2" --runs_dir "$SPP_CLS_RUNS" --experiment "$SPP_CLS_EXPERIMENT"
                --trainer.devices "$per_run" --seed_everything "$5")
    [[ -n ${SPP_CLS_DATA:-} ]] && args+=(--data.root "$SPP_CLS_DATA")
    echo "==== table1.sh $(date -Is): spp-cls $1 (seed $5) on CUDA devices $3" >>"$4"
    CUDA_VISIBLE_DEVICES=$3 spp-cls "$1" "${args[@]}" "${extra[@]}" </dev/null >>"$4" 2>&1
}

slot() {
    local devices=$1 stop=0 run config seed cell run_dir log status
    trap 'stop=1' INT TERM  # the running spp-cls gets the same SIGINT and stops; this slot then stops too
    for run in "${table_runs[@]}"; do
        read -r config seed <<<"$run"
        cell=$(basename "$config" .yaml)
        ((seed)) && cell+="-seed$seed"
        mkdir "$state/claimed/$cell" 2>/dev/null || continue  # another slot has it
        ((stop)) && return 0
        if ! run_dir=$(spp-cls run-dir --config "$config" --runs_dir "$SPP_CLS_RUNS" --experiment "$SPP_CLS_EXPERIMENT" \
                                       --seed_everything "$seed")
        then
            echo "$cell" >>"$state/failed"
            continue
        fi
        if [[ -f $run_dir/results.json ]]; then
            say "$cell: done before (results.json exists), skipped"
            continue
        fi
        mkdir -p "$run_dir"
        log=$run_dir/table1.log
        for name in fit test; do
            say "$cell: $name on GPUs $devices (log: $log)"
            status=0
            step "$name" "$config" "$devices" "$log" "$seed" || status=$?
            ((stop)) && return 0
            if ((status != 0)); then
                say "$cell: $name FAILED (exit $status), see $log"
                grep -h "^spp-cls: error" "$log" | tail -n 1 || true
                echo "$cell" >>"$state/failed"
                continue 2
            fi
        done
        say "$cell: done: $run_dir/results.json"
    done
}

# ---- run the slots, each in its own process group so that Ctrl-C reaches them only through the trap below -------
say "${#table_runs[@]} run(s), $slots at a time, $per_run GPU(s) each; runs in $SPP_CLS_RUNS/$SPP_CLS_EXPERIMENT"
slot_pids=()
interrupted=0
# forward SIGINT: Lightning stops at once on KeyboardInterrupt (on SIGTERM it would finish the epoch first)
trap 'interrupted=1; for pid in "${slot_pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null || true; done' INT TERM HUP
set -m
for ((i = 0; i < slots; i++)); do
    devices=$(IFS=,; echo "${visible[*]:i*per_run:per_run}")
    slot "$devices" &
    slot_pids+=($!)
done
for pid in "${slot_pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done  # `wait` also returns to run the trap
done
set +m
if ((interrupted)); then
    say "interrupted: run the same command again to resume (finished cells are skipped, the others resume from" \
        "their checkpoints)"
    exit 130
fi
table_status=0
spp-cls table "$SPP_CLS_RUNS/$SPP_CLS_EXPERIMENT" || table_status=$?
if [[ -s $state/failed ]]; then
    say "failed: $(tr '\n' ' ' <"$state/failed")- see their table1.log, then run the same command again"
    exit 1
fi
exit "$table_status"
