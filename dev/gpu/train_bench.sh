#!/usr/bin/env bash
# On the GPU machine (random weights, no transfer): training benchmarks for the speed issue.
set -o pipefail
export PYTHONUNBUFFERED=1
F="Warn\|warn(\|Loading\|it/s\]"
timeout 280 python3 bench.py train --profile 2>&1 | grep -v "$F" | tee $OUT/train_05b.log
timeout 100 python3 bench.py train --no-compile --hf-steps 0 --steps 25 2>&1 | grep -v "$F" | tee $OUT/train_05b_eager.log
timeout 200 python3 bench.py train --model 1.5b --config configs/math_qwen15b.py --hf-steps 0 --steps 12 --warmup 3 2>&1 | grep -v "$F" | tee $OUT/train_15b.log
