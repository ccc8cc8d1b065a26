#!/usr/bin/env bash
# The built-in benchmark (README, "The built-in benchmark"): the AFT paper's three claims
# (Wang et al. 2023, arXiv 2309.02144) and every other objective, each measured as a paired gain
# over continued SFT from ONE converged SFT start, so seeds vary only the post-training.
#   bash tools/benchmark.sh [out dir, default runs/benchmark]
#   ROWS=claims SEEDS="0 1" HARD=0 BON_ROWS=0 bash tools/benchmark.sh runs/quick  # a quick look: the claim rows, 2 seeds
# 1. The start: SFT for START_STEPS (default 3000) steps, validated every 250 on 500 problems
#    (its curve shows the plateau), then greedy and best-of-8 on the test set.
# 2. tools/from_start.sh: every row below × SEEDS (default 0-4), JOBS (default 2) at a time, each
#    on one thread, on the same task (COMMON, from TASK): 2,000 test and 500 validation problems.
# 3. tools/report.py: the table, each row's paired gain over continued SFT with a 95% CI, plots;
#    then best-of-8 at the end of each row (its seed-0 model; BON_ROWS=0 skips, =claims: claim rows).
# 4. Unless HARD=0, claims 1 and 3 again on a harder task (HARD_TASK: two-digit operands), where
#    the start's own samples are often wrong: its start is the converged start trained on it for
#    HARD_STEPS (default 1500) more SFT steps, validated every 250; then the control, RFT, AFT
#    and ranking × SEEDS from it, and their report in <out>/hard.
# A finished step is skipped on a rerun (the start's and each run's summary.json), so an
# interrupted benchmark resumes where it stopped.
set -euo pipefail
out=${1:-runs/benchmark}
# The task: the built-in one with 2,000 test and 500 validation problems; TASK="... data.digits=2"
# for a harder one (every step, the start included, takes it).
task=${TASK:-data.num_test=2000 data.num_val=500}
mkdir -p "$out"
began=$(date +%s)
if [ ! -f "$out/start/summary.json" ]; then
  OMP_NUM_THREADS=${START_THREADS:-2} python -m lit_align experiment=sft sft_steps="${START_STEPS:-3000}" \
    trainer.val_check_interval=250 $task seed=0 hydra.run.dir="$out/start" trainer.enable_progress_bar=false \
    > "$out/start.log" 2>&1
  python tools/report.py "$out/start" > /dev/null  # its curves.png: val/accuracy by step, the plateau
fi
# The control and the AFT claims share AFT's budget: 200 steps of 8 questions at lr 5e-4, the same
# gold chain per question; AFT's groups add 4 chains sampled once from the start.
control="objective=sft pipeline=post_sft data.batch_size=8"
rft="objective=aft objective.alignment_weight=0"   # RFT: L_VFT alone on AFT's batches (claim 1)
aft=objective=aft                                  # AFT, boundary constraint
none="objective=aft objective.constraint=none"     # claim 2: the unconstrained alignment term
detach="objective=aft objective.constraint=detach"
ranking=experiment=aft_ranking                     # claim 3: ranking feedback
claims=("$control" "$rft" "$aft" "$none" "$detach" "$ranking")
others=(objective=kto objective=dpo objective=grpo objective=simpo objective=rloo objective=ppo "objective=dpo rollout=online")
rows=("${claims[@]}")
[ "${ROWS:-all}" = claims ] || rows+=("${others[@]}")
# callbacks=default: best-of-8 is measured on the start (step 1); the rows are compared greedily.
SEEDS=${SEEDS:-0 1 2 3 4} COMMON="$task eval.before_train=false callbacks=default" \
  bash tools/from_start.sh "$out/start/model" "$out/runs" "${rows[@]}"
echo "benchmark wall time: $(( $(date +%s) - began )) s" | tee -a "$out/wall_time.txt"
# The paper's claims, each its own paired contrast: (1) AFT vs RFT (same batches, L_A off);
# (2) the unconstrained and detached alignment terms vs the boundary; (3) ranking vs binary.
python tools/report.py "$out/runs" --out "$out" --control "$control" --start "$out/start/summary.json" \
  --contrast "$aft" "$rft" --contrast "$none" "$rft" --contrast "$none" "$aft" --contrast "$detach" "$aft" \
  --contrast "$ranking" "$aft"
# Best-of-8 at the end (the start's is in step 1): each row's seed-0 model, evaluated only
# (trainer.max_steps=0), on the same test set; BON_ROWS=0 skips it, BON_ROWS=claims takes the claim rows.
if [ "${BON_ROWS:-all}" != 0 ]; then
  bon_rows=("${rows[@]}")
  [ "${BON_ROWS:-all}" = claims ] && bon_rows=("${claims[@]}")
  for config in "${bon_rows[@]}"; do
    name=$(echo "$config" | tr ' =/' '_-_')  # the row's run directory, as tools/from_start.sh names it
    [ -f "$out/end_bon/$name/summary.json" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n || true; done
    # shellcheck disable=SC2086  # the task is several overrides
    OMP_NUM_THREADS=1 python -m lit_align objective=sft $task seed=0 trainer.max_steps=0 eval.before_train=false \
      callbacks=best_of_n init=none model=hf model.name_or_path="$out/runs/$name/seed0/model" \
      hydra.run.dir="$out/end_bon/$name" trainer.enable_progress_bar=false > "$out/end_bon_$name.log" 2>&1 &
  done
  wait || true
  python tools/report.py "$out/end_bon" > /dev/null  # end_bon/report.md: greedy, pass@8, maj@8, bon@8 per row
fi
[ "${HARD:-1}" = 0 ] && exit 0
hard_task=${HARD_TASK:-data.digits=2 data.num_test=2000 data.num_val=500}
began=$(date +%s)
if [ ! -f "$out/hard/start/summary.json" ]; then
  OMP_NUM_THREADS=${START_THREADS:-2} python -m lit_align experiment=sft sft_steps="${HARD_STEPS:-1500}" \
    trainer.val_check_interval=250 $hard_task seed=0 init=none model=hf model.name_or_path="$out/start/model" \
    callbacks=default hydra.run.dir="$out/hard/start" trainer.enable_progress_bar=false > "$out/hard/start.log" 2>&1
  python tools/report.py "$out/hard/start" > /dev/null
fi
SEEDS=${SEEDS:-0 1 2 3 4} COMMON="$hard_task eval.before_train=false callbacks=default" \
  bash tools/from_start.sh "$out/hard/start/model" "$out/hard/runs" "$control" "$rft" "$aft" "$ranking"
echo "harder task wall time: $(( $(date +%s) - began )) s" | tee -a "$out/wall_time.txt"
python tools/report.py "$out/hard/runs" --out "$out/hard" --control "$control" --start "$out/hard/start/summary.json" \
  --contrast "$aft" "$rft" --contrast "$ranking" "$aft"
