#!/usr/bin/env bash
# The built-in benchmark: SFT (with best-of-8), DPO, AFT (binary and ranking), RLOO and PPO on
# the built-in arithmetic task, seeds 0, 1, 2, as one Hydra multirun; then the table and plots.
#   bash tools/benchmark.sh [out dir, default runs/benchmark]
# Every method but SFT starts from the seed's SFT model, trained once into a fresh cache inside
# the sweep directory (so no stale start from an older checkout is reused).
set -euo pipefail
out=${1:-runs/benchmark}
mkdir -p "$out"
export LIT_ALIGN_CACHE="$out/.sft_cache"
start=$(date +%s)
python -m lit_align -m seed=0,1,2 experiment=sft,dpo,aft,aft_ranking,rloo,ppo \
  hydra.sweep.dir="$out" trainer.enable_progress_bar=false
echo "benchmark wall time: $(( $(date +%s) - start )) s" | tee "$out/wall_time.txt"
python tools/report.py "$out"
