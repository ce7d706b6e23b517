#!/usr/bin/env bash
# On the GPU machine (random weights, no transfer): training benchmarks for the speed issues.
#   bash dev/gpu/train_bench.sh          0.5B against the HF Trainer recipe (with --profile), eager, the 1.5B MATH config
#   bash dev/gpu/train_bench.sh working  0.5B with and without bf16 working weights, alternating, then the 1.5B MATH
#                                        config (packed) and its LoRA variant
#   bash dev/gpu/train_bench.sh host     is the 0.5B step bound by the host? --profile (kernels and host ops), then the
#                                        blocks replayed as CUDA graphs (--cudagraphs), without and with working weights;
#                                        LoRA (7 adapters x 24 blocks x ~9 kernels: ~1,500 more a step, by count) without and with
#   bash dev/gpu/train_bench.sh launch   LoRA 0.5B with --profile (0.63x full fine-tuning's speed: where does it go?),
#                                        then full and LoRA with inductor's C++ wrapper (is the step launch-bound?)
set -o pipefail
export PYTHONUNBUFFERED=1
F="Warn\|warn(\|Loading\|it/s\]"
case ${1:-all} in
all)
  timeout 280 python3 bench.py train --profile 2>&1 | grep -v "$F" | tee $OUT/train_05b.log
  timeout 100 python3 bench.py train --no-compile --hf-steps 0 --steps 25 2>&1 | grep -v "$F" | tee $OUT/train_05b_eager.log
  timeout 200 python3 bench.py train --model 1.5b --config configs/math_qwen15b.py --hf-steps 0 --steps 12 --warmup 3 2>&1 \
    | grep -v "$F" | tee $OUT/train_15b.log ;;
working)
  for flag in --working-weights "" --working-weights ""; do
    timeout 100 python3 bench.py train --activation-budget 0.7 --hf-steps 0 $flag 2>&1 | grep -v "$F" | tail -4 \
      | tee -a $OUT/train_working.log
  done
  timeout 120 python3 bench.py train --model 1.5b --config configs/math_qwen15b.py --hf-steps 0 --steps 12 --warmup 3 \
    2>&1 | grep -v "$F" | tee $OUT/train_15b.log
  timeout 120 python3 bench.py train --model 1.5b --config configs/math_qwen15b_lora.py --hf-steps 0 --steps 12 \
    --warmup 3 2>&1 | grep -v "$F" | tee $OUT/train_15b_lora.log ;;
host)
  for flag in "--profile" "--cudagraphs" "--cudagraphs --working-weights" "--config configs/gsm8k_qwen05b_lora.py" \
      "--config configs/gsm8k_qwen05b_lora.py --cudagraphs"; do
    timeout 150 python3 bench.py train --activation-budget 0.7 --hf-steps 0 --steps 25 $flag 2>&1 | grep -v "$F" \
      | tail -60 | tee -a $OUT/train_host.log
  done ;;
launch)
  for flag in "--config configs/gsm8k_qwen05b_lora.py --profile" "--cpp-wrapper" \
      "--config configs/gsm8k_qwen05b_lora.py --cpp-wrapper"; do
    timeout 150 python3 bench.py train --activation-budget 0.7 --hf-steps 0 --steps 25 $flag 2>&1 | grep -v "$F" \
      | tail -60 | tee -a $OUT/train_launch.log
  done ;;
esac
