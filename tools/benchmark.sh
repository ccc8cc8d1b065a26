#!/usr/bin/env bash
# The built-in benchmark: SFT (with best-of-8), DPO, AFT (binary and ranking), RLOO and PPO on
# the built-in arithmetic task, seeds 0, 1, 2; then the table and plots.
#   bash tools/benchmark.sh [out dir, default runs/benchmark]      (SEEDS="0 1" to run fewer)
# Per seed, in turn: the SFT preset, a Hydra multirun of the objectives that start from SFT (each
# on its defaults: objective=dpo, aft, rloo, ppo) and the AFT ranking preset; all seeds at once,
# each on one thread (OMP_NUM_THREADS=1), so the seeds share the cores rather than each run its threads; a seed's
# results do not depend on the machine's core count. Every method but SFT starts from its seed's SFT
# model, trained once per seed into a fresh cache inside the output folder (so no stale start
# from an older checkout is reused).
set -euo pipefail
out=${1:-runs/benchmark}
seeds=${SEEDS:-0 1 2}
mkdir -p "$out"
export LIT_ALIGN_CACHE="$out/.sft_cache" OMP_NUM_THREADS=1
start=$(date +%s)
pids=()
for seed in $seeds; do
  (
    began=$(date +%s)
    for runs in 0_sft:experiment=sft 1_objectives:objective=dpo,aft,rloo,ppo 2_aft_ranking:experiment=aft_ranking; do
      python -m lit_align -m seed="$seed" "${runs#*:}" hydra.sweep.dir="$out/seed$seed/${runs%%:*}" \
        trainer.enable_progress_bar=false >> "$out/seed$seed.log" 2>&1
    done
    echo "seed $seed: $(( $(date +%s) - began )) s" >> "$out/wall_time.txt"
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # any failed seed fails the script (set -e)
echo "benchmark wall time: $(( $(date +%s) - start )) s" | tee -a "$out/wall_time.txt"
python tools/report.py "$out"
