# shellcheck shell=bash
# Shared by fit.sbatch and table1.sbatch (sourced inside the job). Settings a user sets once, e.g. in ~/.bashrc:
#   SPP_CLS_REPO        the spp-cls checkout (default: the directory sbatch was called from)
#   SPP_CLS_DATA        the --out of `spp-cls shards` (default /data/imagenet-wds)
#   SPP_CLS_RUNS        where run directories go (default: runs, inside the checkout)
#   SPP_CLS_VENV        virtualenv to activate (default: the checkout's .venv when it exists)
#   SPP_CLS_SETUP       a shell line run before anything else, e.g. "module load cuda/12.4" (default: none)
#   SPP_CLS_EXTRA_ARGS  extra overrides for every fit and test, e.g. "--trainer.precision 32-true"
# Partition and account are sbatch's own: export SBATCH_PARTITION=... SBATCH_ACCOUNT=... (or sbatch -p / -A).

cd "${SPP_CLS_REPO:-${SLURM_SUBMIT_DIR:-.}}" || exit 2
if [ -n "${SPP_CLS_SETUP:-}" ]; then eval "$SPP_CLS_SETUP"; fi
VENV="${SPP_CLS_VENV:-.venv}"
if [ -f "$VENV/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
command -v spp-cls >/dev/null || { echo "spp-cls is not on PATH: set SPP_CLS_VENV or SPP_CLS_SETUP" >&2; exit 2; }

# One task per GPU (Lightning needs --ntasks-per-node = devices); the CPUs of a task feed its loader workers,
# one CPU is left to the training process itself.
NODES="${SLURM_NNODES:-1}"
TASKS_PER_NODE="${SLURM_NTASKS_PER_NODE:-1}"
WORKERS=$(( ${SLURM_CPUS_PER_TASK:-2} > 1 ? ${SLURM_CPUS_PER_TASK:-2} - 1 : 1 ))

# run_cell CONFIG [overrides...]: fit (resuming by itself), then the 10-view test that writes results.json.
run_cell() {
  local config=$1
  shift
  local args=(--config "$config" --data.root "${SPP_CLS_DATA:-/data/imagenet-wds}" --runs_dir "${SPP_CLS_RUNS:-runs}"
              --trainer.num_nodes "$NODES" --trainer.devices "$TASKS_PER_NODE" --data.num_workers "$WORKERS")
  # shellcheck disable=SC2206  # word splitting of the extra overrides is intended
  args+=(${SPP_CLS_EXTRA_ARGS:-} "$@")
  echo "spp-cls: $(date -Is) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $config on $NODES x $TASKS_PER_NODE tasks, $WORKERS workers each"
  srun --kill-on-bad-exit=1 spp-cls fit "${args[@]}"
  srun --kill-on-bad-exit=1 spp-cls test "${args[@]}"
  echo "spp-cls: $(date -Is) done: $(spp-cls run-dir --config "$config" --runs_dir "${SPP_CLS_RUNS:-runs}")/results.json"
}
