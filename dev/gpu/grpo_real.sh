#!/usr/bin/env bash
# GRPO on the real Qwen2.5-Coder-0.5B-Instruct, on one H200, after shared/real_model's device_append.sh calls and
# device_convert.sh (the model then lies in $HOME/real_model; files in $HOME last while the machine stays warm).
#   bash dev/gpu/grpo_real.sh smoke    no real model: a tiny arithmetic model (train.py, 1 min) then 12 GRPO steps
#                                      with the compiled update and the CUDA-graph engine: every GPU code path
#   bash dev/gpu/grpo_real.sh run [S] [--key=value ...]
#                                      one call's worth: rl.py for up to S seconds (default 480), then a checkpoint
#                                      (~20 s: weights and AdamW state, 7.5 GB); call again to continue (resume=auto)
#                                      until max_iters. After device_convert.sh in the same call, S=420: the call's
#                                      10 minutes cut off a first run given 520 (dev/README.md)
#   bash dev/gpu/grpo_real.sh test     best.pt on the full GSM8K test: greedy, then 16 samples at T 0.8
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
R=$HOME/grpo
case ${1:-run} in
smoke)
  S=/tmp/smoke
  python3 train.py --n_layer=2 --n_embd=64 --n_head=2 --seq_len=64 --batch_size=32 --max_iters=500 --warmup_iters=20 \
    --eval_interval=500 --eval_samples=0 --val_size=50 --log_interval=250 --out_dir=$S/sft 2>&1 | tail -3
  python3 rl.py --init_from=$S/sft/ckpt-000500.pt --out_dir=$S/rl --datasets=arith2 --prompt_format=plain \
    --max_new_tokens=32 --eval_max_new_tokens=32 --seq_len=64 --val_size=20 --eval_samples=8 --prompts_per_step=16 \
    --group_size=16 --slots=256 --batch_size=128 --lr=1e-3 --max_iters=12 --eval_interval=6 --save_interval=6 \
    --max_samples=16 2>&1 | grep -v '^ "\|^{\|^}' | tee $OUT/smoke.log ;;
run)
  timeout $(( ${2:-480} + 90 )) python3 rl.py configs/gsm8k_qwen05b_grpo.py --init_from=$M --out_dir=$R --resume=auto --max_time=${2:-480} "${@:3}" \
    2>&1 | grep -v '^ "\|^{\|^}\|Warn\|warn(' | cut -c1-400 | tee -a $OUT/grpo.log
  cp $R/metrics.jsonl $OUT/grpo_metrics.jsonl; cp $R/curves.png $OUT/ 2>/dev/null ;;
test)
  timeout 200 python3 sample.py --ckpt $R/best.pt --eval gsm8k --out $R/test_greedy.jsonl 2>&1 | tail -2 | tee $OUT/grpo_test.log
  timeout 350 python3 sample.py --ckpt $R/best.pt --eval gsm8k --num-samples 16 --temperature 0.8 --batch-size 512 \
    --out $R/test_k16.jsonl 2>&1 | tail -2 | tee -a $OUT/grpo_test.log ;;
esac
