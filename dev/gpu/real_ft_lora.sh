#!/usr/bin/env bash
# On the GPU machine with the real model converted: 3 epochs of full fine-tuning with the compiled/flex path
# (0 skipped steps? the validation-loss curve?), then 3 epochs of LoRA (configs/gsm8k_qwen05b_lora.py), each
# followed by the full GSM8K test eval of its best.pt; then LoRA vs full memory and speed at the 1.5B shape.
set -o pipefail
export PYTHONUNBUFFERED=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
F='^ "\|^{\|^}\|val loss:\|^id \|^\.\.\.\|^data/\|Warn\|warn('
what=${1:-full}  # full | lora | bench15
[ $what = bench15 ] || for run in "full configs/gsm8k_qwen05b.py" "lora configs/gsm8k_qwen05b_lora.py"; do
  set -- $run
  [ $1 = $what ] || continue
  t0=$(date +%s); timeout 300 python3 train.py $2 --init_from=$M --out_dir=$HOME/$1 --save_interval=1000 2>&1 | grep -v "$F" \
    | tee $OUT/train_$1.log | grep -v "^step [0-9]*/[0-9]* | loss" | cut -c1-300
  grep "^step \(10\|100\|300\|510\)/" $OUT/train_$1.log; echo "wall $(( $(date +%s) - t0 )) s" | tee -a $OUT/train_$1.log
  cp $HOME/$1/metrics.jsonl $OUT/metrics_$1.jsonl
  ls -la $HOME/$1/*.pt | tee -a $OUT/train_$1.log
  timeout 120 python3 sample.py --ckpt $HOME/$1/best.pt --eval gsm8k 2>&1 | grep "accuracy" | tee -a $OUT/train_$1.log
done
[ $what = bench15 ] && timeout 150 python3 bench.py train --model 1.5b --config configs/math_qwen15b_lora.py --hf-steps 0 --steps 12 --warmup 3 2>&1 \
  | grep -v "Warn\|warn(\|Loading" | tail -4 | tee $OUT/bench_15b_lora.log
