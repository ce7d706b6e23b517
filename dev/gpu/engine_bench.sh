#!/usr/bin/env bash
# The engine on one H200 (random weights, no transfer). Two calls, chained while the machine is warm:
#   bash dev/gpu/engine_bench.sh check    engine_check.py at 0.5B (256 prompts: issue 21 asks >= 95% equal answers), then bench.py gen --slots 64,256,512 (no HF)
#   bash dev/gpu/engine_bench.sh more     bench.py gen at 1.5B, and 0.5B head-to-head with HF generate (256)
#   bash dev/gpu/engine_bench.sh real     the real model (after device_convert.sh): the full GSM8K test greedy at 256
#                                         and 512 slots, head-to-head with HF generate on 256 prompts; then 16 samples
#                                         a problem at T 0.8 (sample.py, 512 slots)
#   bash dev/gpu/engine_bench.sh attn     the decode step's attention alone: SDPA, flash (the engine's), Triton split-KV
#   bash dev/gpu/engine_bench.sh flash    the engine's attention by the flash kernel instead of Triton's (--flash-decode)
#   bash dev/gpu/engine_bench.sh profile  where a decode step's time goes, at 64 and 512 slots: its kernels outside the graph
#   bash dev/gpu/engine_bench.sh rl       rl.py's decode step (temperature 1, entropies and log-probs)
#                                         against greedy at 256 slots; temperature 0.8 against greedy at 512
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
F="Warn\|warn("
case ${1:-check} in
check)
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
  date +%T
  timeout 280 python3 bench.py gen --n 512 --slots 64,256,512 --hf-n 0 2>&1 | grep -v "$F" | tee $OUT/bench_gen_05b.log
  date +%T
  timeout 150 python3 dev/engine_check.py --model 0.5b --n 256 --new 64 2>&1 | grep -v "$F" | tee $OUT/engine_check.log
  date +%T ;;
more)
  timeout 200 python3 bench.py gen --model 1.5b --n 512 --slots 64,512 --hf-n 0 2>&1 | grep -v "$F" | tee $OUT/bench_gen_15b.log
  timeout 300 python3 bench.py gen --n 256 --slots 256 --hf-n 256 2>&1 | grep -v "$F" | tee $OUT/bench_gen_hf.log ;;
rl)  # and 16 samples' temperature 0.8 at 512 slots (sample.py --num-samples 16 --batch-size 512)
  for flags in "--slots 256" "--slots 256 --temperature 1 --logprobs" "--slots 512" "--slots 512 --temperature 0.8"; do
    timeout 150 python3 bench.py gen --n 512 --hf-n 0 $flags 2>&1 | grep -v "$F" | tee -a $OUT/gen_rl.log
  done ;;
profile)
  for slots in 64 512; do
    timeout 150 python3 bench.py gen --n $slots --slots $slots --hf-n 0 --max-new-tokens 128 --profile 2>&1 | grep -v "$F" \
      | tee -a $OUT/gen_profile.log
  done ;;
real)
  M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
  timeout 300 python3 bench.py gen --model $M --slots 256,512 --hf-n 256 2>&1 | grep -v "$F\|Loading" \
    | tee $OUT/bench_real.log
  timeout 250 python3 sample.py --ckpt $M --eval gsm8k --num-samples 16 --temperature 0.8 --batch-size 512 \
    --out $HOME/k16.jsonl 2>&1 | grep -v "$F" | tail -8 | tee $OUT/real_k16.log ;;
attn)
  timeout 300 python3 dev/attn_decode_bench.py 2>&1 | grep -v "$F" | tee $OUT/attn_decode.log ;;
flash)  # the reference for decode_attention.py's kernel, in the same call as `check`
  timeout 250 python3 bench.py gen --n 512 --slots 64,256,512 --hf-n 0 --flash-decode 2>&1 | grep -v "$F" \
    | tee $OUT/bench_gen_flash.log ;;
esac
