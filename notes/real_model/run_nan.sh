#!/usr/bin/env bash
set -o pipefail
export PYTHONUNBUFFERED=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
timeout 120 python3 notes/real_model/nan_check.py $M 2>&1 | grep -v Warning | tee $OUT/nan_check.log
timeout 300 python3 train.py configs/gsm8k_qwen05b.py --init_from=$M --out_dir=/tmp/ftpad --pack=false --batch_size=16 --seq_len=512 --epochs=1 --eval_samples=0 --eval_interval=100000 --save_interval=100000 --keep_last=1 --log_interval=50 2>&1 | grep -v '^ "' | tee $OUT/train_pad.log
grep -c skipped /tmp/ftpad/metrics.jsonl; cp /tmp/ftpad/metrics.jsonl $OUT/metrics_pad.jsonl
