#!/usr/bin/env bash
# The paper's Table 2 on one machine: the 12 cells one after another (or several at once when the machine has more
# GPUs than one run uses), each `spp-cls fit` then the 10-view `spp-cls test`, then `spp-cls table`.
#
#   jobs/local/table1.sh            # all visible GPUs (nvidia-smi -L); 8 per run
#   jobs/local/table1.sh 4          # 4 GPUs: one run at a time on 4 GPUs (the LR follows the global batch)
#   SPP_CLS_GPUS_PER_RUN=2 jobs/local/table1.sh 8      # 4 runs at once, 2 GPUs each
#
# Settings: SPP_CLS_DATA (the --out of `spp-cls shards`, default /data/imagenet-wds), SPP_CLS_RUNS (default runs),
# SPP_CLS_CELLS (space-separated subset, default the 12 cells; add overfeat7_spp_random for the extra),
# SPP_CLS_EXTRA_ARGS (overrides for every fit and test). Cells with results.json are skipped; an interrupted cell
# resumes from its last checkpoint when the script is run again, so Ctrl-C and rerun is safe.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ $# -ge 1 ]; then
  gpus=$1
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L | wc -l)
else
  gpus=1
fi
per_run=${SPP_CLS_GPUS_PER_RUN:-$(( gpus < 8 ? gpus : 8 ))}
if [ "$per_run" -lt 1 ] || [ "$per_run" -gt "$gpus" ]; then
  echo "table1.sh: SPP_CLS_GPUS_PER_RUN=$per_run does not fit $gpus GPUs" >&2
  exit 2
fi
slots=$(( gpus / per_run ))
runs=${SPP_CLS_RUNS:-runs}
# shellcheck disable=SC2206  # the cell list is space-separated on purpose
cells=(${SPP_CLS_CELLS:-zf5_nospp convnet5_nospp overfeat5_nospp overfeat7_nospp zf5_spp_single convnet5_spp_single
       overfeat5_spp_single overfeat7_spp_single zf5_spp_multi convnet5_spp_multi overfeat5_spp_multi overfeat7_spp_multi})

run_cell() {  # run_cell CONFIG SLOT
  local config=$1 slot=$2 first
  first=$(( slot * per_run ))
  local devices
  devices=$(seq -s, "$first" $(( first + per_run - 1 )))
  # shellcheck disable=SC2206  # word splitting of the extra overrides is intended
  local args=(--config "$config" --data.root "${SPP_CLS_DATA:-/data/imagenet-wds}" --runs_dir "$runs"
              --trainer.devices "$per_run" ${SPP_CLS_EXTRA_ARGS:-})
  echo "table1.sh: $(date -Is) $config on GPUs $devices"
  CUDA_VISIBLE_DEVICES=$devices spp-cls fit "${args[@]}"
  CUDA_VISIBLE_DEVICES=$devices spp-cls test "${args[@]}"
}

trap 'echo "table1.sh: interrupted; rerun to resume" >&2; kill 0' INT TERM
declare -a busy=()
failed=0
for cell in "${cells[@]}"; do
  config="configs/table1/$cell.yaml"
  if [ ! -f "$config" ]; then echo "table1.sh: no $config" >&2; exit 2; fi
  if [ -f "$(spp-cls run-dir --config "$config" --runs_dir "$runs")/results.json" ]; then
    echo "table1.sh: $cell done (results.json exists), skipped"
    continue
  fi
  while true; do  # the first free slot
    for slot in $(seq 0 $(( slots - 1 ))); do
      if [ -z "${busy[$slot]:-}" ] || ! kill -0 "${busy[$slot]}" 2>/dev/null; then
        if [ -n "${busy[$slot]:-}" ]; then wait "${busy[$slot]}" || failed=1; fi
        run_cell "$config" "$slot" & busy[slot]=$!
        continue 3
      fi
    done
    sleep 5
  done
done
for pid in "${busy[@]}"; do wait "$pid" || failed=1; done
spp-cls table "$runs/table1"
if [ "$failed" -ne 0 ]; then echo "table1.sh: some cells failed; see above, then rerun" >&2; exit 1; fi
