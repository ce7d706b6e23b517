#!/usr/bin/env bash
# On the GPU machine: baseline GSM8K eval of the real model, a 3-epoch fine-tune with train.py, eval after.
set -o pipefail
export PYTHONUNBUFFERED=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 sample.py --ckpt $M --eval gsm8k --max-samples 100 --batch-size 100 --out $OUT/base 2>&1 | grep -v Warning | tail -12 | tee $OUT/base.log
timeout 360 python3 train.py configs/gsm8k_qwen05b.py --init_from=$M --out_dir=/tmp/ft --eval_samples=100 --eval_batch_size=100 --eval_interval=250 --save_interval=100000 --keep_last=1 --log_interval=25 "$@" 2>&1 | grep -v '^ "' | tee $OUT/train.log | grep -v "^id \|^data/" 
cp /tmp/ft/metrics.jsonl $OUT/ 2>/dev/null
ls -la /tmp/ft
