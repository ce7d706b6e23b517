#!/usr/bin/env bash
set -o pipefail
export PYTHONUNBUFFERED=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
timeout 100 python3 sample.py --ckpt /tmp/ft/best.pt --eval gsm8k --max-samples 100 --batch-size 100 --out $OUT/ft 2>&1 | grep -v Warning | tail -4 | tee $OUT/ft.log
timeout 60 python3 sample.py --ckpt /tmp/ft/best.pt --export-hf /tmp/ft_hf 2>&1 | tail -3; ls /tmp/ft_hf
timeout 100 python3 notes/real_model/export_check.py /tmp/ft_hf 2>&1 | grep -v Warning | tee $OUT/export.log
timeout 330 python3 sample.py --ckpt $M --eval gsm8k --batch-size 128 --out $OUT/base_full 2>&1 | grep -v Warning | tail -3 | tee $OUT/base_full.log
