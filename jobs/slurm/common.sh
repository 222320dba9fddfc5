# shellcheck shell=bash
# Shared by fit.sbatch and table1.sbatch; sourced, never run. What the scripts assume of the cluster, as variables
# a user sets once (e.g. in ~/.bashrc), with their defaults:
#
#   SPP_CLS_DATA           shard root, the --out of `spp-cls shards`      default: each config's data.root
#                          (/data/imagenet-wds)
#   SPP_CLS_RUNS           where run directories go                        default: runs (in the checkout)
#   SPP_CLS_EXPERIMENT     experiment name (wandb group, folder in RUNS)   default: SPP_CLS_TABLE for table1.sbatch, the
#                                                                          config's own for fit.sbatch
#   SPP_CLS_VENV           virtualenv with spp-cls installed               default: .venv of the checkout if present
#   SPP_CLS_MODULES        environment modules to load first, e.g. "cuda/12.4 nccl"             default: none
#   SPP_CLS_SETUP          any shell line to run first, e.g. "source ~/miniforge/bin/activate spp"  default: none
#   SPP_CLS_EXTRA_ARGS     overrides added to every fit and test, whitespace-separated         default: none
#   SPP_CLS_TABLE          which table's cells: a folder of configs/, e.g. imagenette         default: table1
#   SPP_CLS_SEEDS          seeds to train every cell with, e.g. 0,1,2 (each its own run:       default: 0
#                          <backbone>-<variant>-seed<N>; the table averages them)
#   SPP_CLS_WORKERS        data loader workers per task        default: SLURM_CPUS_PER_TASK - 1 (one CPU is left to
#                                                               the training process itself)
#   SPP_CLS_REPO           the spp-cls checkout                             default: where sbatch was called from
# The shape of a job (used when you run a .sbatch file directly instead of through sbatch, so that it submits itself;
# plain `sbatch FILE` takes the #SBATCH lines of FILE instead, and sbatch's own options win over both):
#   SPP_CLS_NODES          nodes per run                                                       default: 1
#   SPP_CLS_GPUS_PER_NODE  GPUs per node = tasks per node (Lightning: one task per GPU)        default: 8
#   SPP_CLS_CPUS_PER_GPU   CPUs per task                                                       default: 8
#   SPP_CLS_GPU_TYPE       GPU type where the cluster wants one, e.g. a100 (--gpus-per-node=a100:8)  default: none
#   SPP_CLS_NO_GPU=1       ask for no GPU (--gpus-per-node=0): tasks on CPUs, to try the scripts on a CPU partition
#   SPP_CLS_SBATCH_ARGS    more sbatch options, e.g. "--time=24:00:00 --qos=long"              default: none
# Partition, account, time limit: sbatch's own variables SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT (or
# -p / -A / -t on the sbatch line).

# ---- submission (outside a job) ---------------------------------------------------------------------------------
# spp_submit SCRIPT [sbatch options] -- [script arguments]: sbatch SCRIPT with the shape variables above.
spp_submit() {
    local script=$1
    shift
    local options=() gpus_per_node=${SPP_CLS_GPUS_PER_NODE:-8}
    while (($#)) && [[ $1 != -- ]]; do options+=("$1"); shift; done
    (($#)) && shift
    local gpus=${SPP_CLS_GPU_TYPE:+$SPP_CLS_GPU_TYPE:}$gpus_per_node
    [[ ${SPP_CLS_NO_GPU:-0} == 1 ]] && gpus=0
    # shellcheck disable=SC2206  # SPP_CLS_SBATCH_ARGS is whitespace-separated on purpose
    options+=(--nodes="${SPP_CLS_NODES:-1}" --ntasks-per-node="$gpus_per_node" --gpus-per-node="$gpus"
              --cpus-per-task="${SPP_CLS_CPUS_PER_GPU:-8}" ${SPP_CLS_SBATCH_ARGS:-})
    # the job finds this checkout through SPP_CLS_REPO (sbatch runs a copy of the script, away from the checkout)
    SPP_CLS_REPO=${SPP_CLS_REPO:-$(cd "$(dirname "$script")/../.." && pwd)} sbatch "${options[@]}" "$script" "$@"
}

# ---- inside a job (and in jobs/local/table1.sh) -----------------------------------------------------------------
die() { echo "${SPP_CLS_PROGRAM:-spp-cls job}: error: $*" >&2; exit 2; }

# spp_activate: load the modules, run the setup line, activate the venv (in the checkout, the current directory).
spp_activate() {
    if [[ -n ${SPP_CLS_MODULES:-} ]]; then
        # shellcheck disable=SC2086  # a list of modules
        module load $SPP_CLS_MODULES
    fi
    if [[ -n ${SPP_CLS_SETUP:-} ]]; then eval "$SPP_CLS_SETUP"; fi
    local venv=${SPP_CLS_VENV:-.venv}
    if [[ -f $venv/bin/activate ]]; then
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
    elif [[ -n ${SPP_CLS_VENV:-} ]]; then
        die "SPP_CLS_VENV=$SPP_CLS_VENV has no bin/activate"
    fi
    command -v spp-cls >/dev/null || die "spp-cls is not on PATH: set SPP_CLS_VENV, SPP_CLS_MODULES or SPP_CLS_SETUP"
}

# spp_setup: cd into the checkout, load modules, activate the venv, work out the task shape.
spp_setup() {
    cd "${SPP_CLS_REPO:-${SLURM_SUBMIT_DIR:-.}}" || die "cannot cd to ${SPP_CLS_REPO:-${SLURM_SUBMIT_DIR:-.}}"
    [[ -f jobs/slurm/common.sh ]] || die "$PWD is not the spp-cls checkout: submit from it or set SPP_CLS_REPO"
    spp_activate

    # Lightning wants one task per GPU and refuses --ntasks: it reads the shape from --ntasks-per-node and --nodes
    [[ -n ${SLURM_NTASKS_PER_NODE:-} ]] || die "submit with --ntasks-per-node (= GPUs per node), not --ntasks"
    NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
    TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE%%(*}
    CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
    WORKERS=${SPP_CLS_WORKERS:-$((CPUS_PER_TASK > 1 ? CPUS_PER_TASK - 1 : 0))}
    # for the OpenMP libraries of the loader workers; spp-cls sizes torch's own threads per rank (SLURM_CPUS_PER_TASK)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    _note_shape SPP_CLS_NODES "$NODES"
    _note_shape SPP_CLS_GPUS_PER_NODE "$TASKS_PER_NODE"
}

# _note_shape VARIABLE ACTUAL: say so when a shape variable asks for something else than the job got.
_note_shape() {
    local wanted=${!1:-}
    if [[ -n $wanted && $wanted != "$2" ]]; then
        echo "spp-cls job: note: $1=$wanted, but this job has $2 (sbatch's options and the #SBATCH lines decide;" \
             "run the .sbatch file directly, not through sbatch, to submit with the SPP_CLS_* shape)" >&2
    fi
}

# spp_step COMMAND...: srun COMMAND as one job step. The batch shell forwards SIGUSR1 to the step, so that
# `--signal=B:USR1@90` and `scancel --signal=USR1 --batch` reach Lightning as well as the usual `--signal=USR1@90`
# (which SLURM sends to the step's tasks directly). Without the trap, SIGUSR1 would kill the batch shell and fail
# the job. NOTE: `scancel --signal=USR1 --full` would deliver it twice (directly and forwarded); don't use it.
spp_step() {
    # srun does not pass the job's --cpus-per-task on to the step since SLURM 22.05: ask again, or every task
    # (and all its loader workers) is bound to one CPU where tasks are bound
    srun --kill-on-bad-exit=1 --cpus-per-task="$CPUS_PER_TASK" "$@" &
    local pid=$! status=0
    # shellcheck disable=SC2064  # the pid is meant to be expanded now
    trap "kill -USR1 $pid 2>/dev/null || true" USR1
    while :; do
        status=0
        wait "$pid" || status=$?
        kill -0 "$pid" 2>/dev/null || break  # else `wait` returned early to run the trap: wait again
    done
    trap - USR1
    return "$status"
}

# spp_run_cell CONFIG [overrides...]: `spp-cls fit` (which resumes by itself from the run directory), then the
# 10-view `spp-cls test` that writes results.json, both as srun steps over the whole allocation.
spp_run_cell() {
    local config=$1
    shift
    [[ -f $config ]] || die "no config $config"
    local args=(--config "$config" --trainer.num_nodes "$NODES" --trainer.devices "$TASKS_PER_NODE"
                --data.num_workers "$WORKERS")
    [[ -n ${SPP_CLS_DATA:-} ]] && args+=(--data.root "$SPP_CLS_DATA")
    [[ -n ${SPP_CLS_RUNS:-} ]] && args+=(--runs_dir "$SPP_CLS_RUNS")
    [[ -n ${SPP_CLS_EXPERIMENT:-} ]] && args+=(--experiment "$SPP_CLS_EXPERIMENT")
    # shellcheck disable=SC2206  # the extra overrides are whitespace-separated on purpose
    args+=(${SPP_CLS_EXTRA_ARGS:-} "$@")
    echo "spp-cls job: $(date -Is) job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $config on" \
         "$NODES node(s) x $TASKS_PER_NODE task(s), $CPUS_PER_TASK CPU(s) and $WORKERS loader worker(s) per task," \
         "nodes ${SLURM_JOB_NODELIST:-?}"
    spp_step spp-cls fit "${args[@]}"
    spp_step spp-cls test "${args[@]}"
}

# spp_cell_done CONFIG [SEED]: the cell's results.json exists (the run directory as `spp-cls fit` would use it).
spp_cell_done() {
    local run_dir
    run_dir=$(spp-cls run-dir --config "$1" ${SPP_CLS_RUNS:+--runs_dir "$SPP_CLS_RUNS"} \
                              ${SPP_CLS_EXPERIMENT:+--experiment "$SPP_CLS_EXPERIMENT"} \
                              ${2:+--seed_everything "$2"}) || exit 2
    [[ -f $run_dir/results.json ]]
}

# spp_seeds: the seeds of SPP_CLS_SEEDS (comma- or space-separated whole numbers), one a line; default 0.
spp_seeds() {
    local seeds=${SPP_CLS_SEEDS:-0} seed
    [[ -n ${seeds//[, ]/} ]] || seeds=0
    for seed in ${seeds//,/ }; do
        [[ $seed =~ ^[0-9]+$ ]] || die "SPP_CLS_SEEDS=$seeds: '$seed' is not a whole number"
        echo "$((10#$seed))"
    done
}

# spp_table_runs: "CONFIG SEED" lines, every cell of spp_table_cells with each seed of spp_seeds, seed by seed (so
# that a table with one seed of every cell comes first).
spp_table_runs() {
    local cells seeds seed config
    cells=$(spp_table_cells) || exit 2
    seeds=$(spp_seeds) || exit 2
    for seed in $seeds; do
        for config in $cells; do
            echo "$config $seed"
        done
    done
}

# spp_table_cells: the table's config files, one a line, as configs/$SPP_CLS_TABLE/ holds them (table1 by default,
# imagenette for the ten-class subset; every file but base.yaml, which the cells include): the 12 cells of Table 2,
# variant by variant (no SPP, SPP single-size, SPP multi-size), backbones in name order; then the random-size extra
# when SPP_CLS_RANDOM_SIZE=1. SPP_CLS_CELLS (names such as "zf5_nospp zf5_spp_multi") picks others.
spp_table_cells() {
    local cell config variant folder=configs/${SPP_CLS_TABLE:-table1}
    [[ -d $folder ]] || die "SPP_CLS_TABLE=${SPP_CLS_TABLE:-}: no folder $folder"
    if [[ -n ${SPP_CLS_CELLS:-} ]]; then
        for cell in $SPP_CLS_CELLS; do
            [[ -f $folder/$cell.yaml && $cell != base ]] || die "no cell $cell ($folder/$cell.yaml)"
            echo "$folder/$cell.yaml"
        done
        return
    fi
    local variants=(nospp spp_single spp_multi)
    [[ ${SPP_CLS_RANDOM_SIZE:-0} == 1 ]] && variants+=(spp_random)
    for variant in "${variants[@]}"; do
        for config in "$folder"/*_"$variant".yaml; do
            [[ -f $config ]] && echo "$config"
        done
    done
}
