#!/usr/bin/env bash
# The engine on one H200 (random weights, no transfer). Two calls, chained while the machine is warm:
#   bash dev/gpu/engine_bench.sh check    engine_check.py at 0.5B, then bench.py gen --slots 64,256,512 (no HF)
#   bash dev/gpu/engine_bench.sh more     bench.py gen at 1.5B, and 0.5B head-to-head with HF generate (256)
set -o pipefail
export PYTHONUNBUFFERED=1
F="Warn\|warn(\|Loading\|it/s\]\|generate:"
case ${1:-check} in
check)
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
  timeout 330 python3 dev/engine_check.py --model 0.5b --n 256 --new 128 2>&1 | grep -v "$F" | tee $OUT/engine_check.log
  timeout 240 python3 bench.py gen --slots 64,256,512 --hf-n 0 2>&1 | grep -v "$F" | tee $OUT/bench_gen_05b.log ;;
more)
  timeout 280 python3 bench.py gen --model 1.5b --slots 64,256,512 --hf-n 0 2>&1 | grep -v "$F" | tee $OUT/bench_gen_15b.log
  timeout 300 python3 bench.py gen --slots 256 --hf-n 256 2>&1 | grep -v "$F" | tee $OUT/bench_gen_hf.log ;;
esac
