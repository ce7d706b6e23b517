#!/usr/bin/env bash
# On nvidia-h100-x1: the loss's new LinearCrossEntropy against the old checkpointed chunks (error vs fp32, time,
# memory) at the 0.5B and 1.5B widths; bench.py train at activation budgets 1.0 and 0.85 (no reference run), then
# the headline at gsm8k_qwen05b.py's 0.7 with the HF Trainer recipe in the same run. ~6 minutes.
set -o pipefail
export PYTHONUNBUFFERED=1
timeout 90 python3 notes/gpu/check_linear_ce.py --n 4500 --c 896 2>&1 | grep -v -i warn | tee $OUT/linear_ce.log
timeout 90 python3 notes/gpu/check_linear_ce.py --n 8000 --c 1536 2>&1 | grep -v -i warn | tee -a $OUT/linear_ce.log
for b in 1.0 0.85; do
  timeout 100 python3 bench.py train --activation-budget $b --hf-steps 0 2>&1 | grep -v -i warn | tail -5 | tee -a $OUT/bench_budget.log
done
timeout 240 python3 bench.py train --activation-budget 0.7 2>&1 | grep -v -i "warn\|Loading\|it/s" | tee $OUT/bench_train_lce.log
