#!/usr/bin/env bash
# On nvidia-h100-x1: the step before and after the two host-side fixes of 2026-11-22 (BlockMask without vmap,
# batches from pinned memory), in the same run, in two interleaved pairs; a trace of the new step; the bench headline.
set -o pipefail
export PYTHONUNBUFFERED=1
E="notes/gpu/exp_ddp.py --batch-size 8 --steps 40 --warmup 10"
timeout 200 python3 $E old default old default 2>&1 | grep -v -i "warn" | tee $OUT/pin_mask.log
timeout 80 python3 $E --profile --trace $OUT default 2>&1 | grep -v -i "warn" | grep -v "^ " >> $OUT/pin_mask.log
timeout 300 python3 bench.py train --activation-budget 0.7 2>&1 | grep -v -i "warn" | tee $OUT/bench_train_pin.log
