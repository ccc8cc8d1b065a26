#!/usr/bin/env bash
# Methods compared from ONE start: every configuration and seed begins from the same model
# directory, so seeds vary only the post-training (paired by seed in the report).
#   bash tools/from_start.sh <start model dir> <out dir> "<config 1>" "<config 2>" ...
#   SEEDS="0 1 2" JOBS=2 bash tools/from_start.sh runs/sft/model runs/offline \
#     "objective=sft pipeline=preference" objective=dpo objective=kto objective=simpo objective=orpo
#   python tools/report.py runs/offline --control "objective=sft pipeline=preference"
# Each configuration runs on its own defaults (its pipeline's steps, learning rate and batch)
# with init=none (the start replaces the pipeline's SFT stage); JOBS runs at once, each on one
# thread (OMP_NUM_THREADS=1), so a run's numbers do not depend on the machine's core count.
# Runs already finished (a summary.json) are skipped: rerunning the script resumes the table.
# COMMON: overrides every run takes (e.g. the task's split sizes), kept out of the run names.
set -euo pipefail
start=$1 out=$2
shift 2
seeds=${SEEDS:-0 1 2}
jobs=${JOBS:-2}
common=${COMMON:-}
mkdir -p "$out"
export OMP_NUM_THREADS=1
began=$(date +%s)
run_name() { echo "$(echo "$1" | tr ' =/' '_-_')/seed$2"; }  # a configuration's run dir for a seed
for config in "$@"; do
  for seed in $seeds; do
    name=$(run_name "$config" "$seed")
    [ -f "$out/$name/summary.json" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    # shellcheck disable=SC2086  # a configuration (and COMMON) is several overrides
    python -m lit_align $config $common seed="$seed" init=none model=hf model.name_or_path="$start" \
      hydra.run.dir="$out/$name" trainer.enable_progress_bar=false > "$out/${name//\//_}.log" 2>&1 &
  done
done
wait || true
for config in "$@"; do  # a failed run has no summary.json: name it (its log says why)
  for seed in $seeds; do
    name=$(run_name "$config" "$seed")
    [ -f "$out/$name/summary.json" ] || echo "failed: $config seed=$seed (log: $out/${name//\//_}.log)"
  done
done
echo "from_start wall time: $(( $(date +%s) - began )) s (JOBS=$jobs)" | tee -a "$out/wall_time.txt"
