#!/usr/bin/env bash
# GRPO on the real Qwen2.5-Coder-0.5B-Instruct, on one H200, after shared/real_model's device_append.sh calls and
# device_convert.sh (the model then lies in $HOME/real_model; files in $HOME last while the machine stays warm).
#   bash dev/gpu/grpo_real.sh run      one call's worth: rl.py for up to 8.5 min, then a checkpoint; call again to
#                                      continue (resume=auto) until max_iters
#   bash dev/gpu/grpo_real.sh test     best.pt on the full GSM8K test: greedy, then 16 samples at T 0.8
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
R=$HOME/grpo
case ${1:-run} in
run)
  timeout 580 python3 rl.py configs/gsm8k_qwen05b_grpo.py --init_from=$M --out_dir=$R --resume=auto --max_time=510 \
    2>&1 | grep -v '^ "\|^{\|^}\|Warn\|warn(' | cut -c1-400 | tee -a $OUT/grpo.log
  cp $R/metrics.jsonl $OUT/grpo_metrics.jsonl; cp $R/curves.png $OUT/ 2>/dev/null ;;
test)
  timeout 200 python3 sample.py --ckpt $R/best.pt --eval gsm8k --out $R/test_greedy.jsonl 2>&1 | tail -2 | tee $OUT/grpo_test.log
  timeout 350 python3 sample.py --ckpt $R/best.pt --eval gsm8k --num-samples 16 --temperature 0.8 --batch-size 512 \
    --out $R/test_k16.jsonl 2>&1 | tail -2 | tee -a $OUT/grpo_test.log ;;
esac
