#!/usr/bin/env bash
# Copies what tools/report.py reads from each run under a directory (summary.json, metrics.csv,
# .hydra/overrides.yaml) to another, to commit a benchmark's seed-level results without its
# models and checkpoints; the start model's path in the overrides becomes "start/model" (or AS),
# so the copies name no machine's directories.
#   bash tools/keep_runs.sh runs/benchmark/runs docs/benchmark/runs runs/benchmark/start/model
#   bash tools/keep_runs.sh runs/benchmark/end_bon docs/benchmark/end_bon runs/benchmark/runs runs  # models evaluated
set -euo pipefail
from=$1 to=$2 start=$3 as=${4:-start/model}
find "$from" -name summary.json | while read -r summary; do
  run=$(dirname "$summary")
  dest="$to/${run#"$from"/}"
  mkdir -p "$dest/.hydra"
  cp "$summary" "$dest/"
  [ ! -f "$run/metrics.csv" ] || cp "$run/metrics.csv" "$dest/"
  grep -v "^- hydra\." "$run/.hydra/overrides.yaml" | sed "s|$start|$as|" > "$dest/.hydra/overrides.yaml"
done
