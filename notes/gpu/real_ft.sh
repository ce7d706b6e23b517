#!/usr/bin/env bash
# On the GPU machine, after real_eval.sh: 3 epochs of configs/gsm8k_qwen05b.py on the real model (eval on held-out
# training problems picks best.pt), then the full GSM8K test eval of the final and best checkpoints.
set -o pipefail
export PYTHONUNBUFFERED=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
/usr/bin/time -f "wall %e s" timeout 420 python3 train.py configs/gsm8k_qwen05b.py --init_from=$M --out_dir=$HOME/ft "$@" 2>&1 \
  | grep -v '^ "\|^{\|^}\|val loss:' | tee $OUT/train.log | grep -v "^id \|^\.\.\.\|^data/"
cp $HOME/ft/metrics.jsonl $OUT/ 2>/dev/null
for ck in best ckpt-000515; do
  [ -f $HOME/ft/$ck.pt ] || continue
  /usr/bin/time -f "wall %e s" timeout 120 python3 sample.py --ckpt $HOME/ft/$ck.pt --eval gsm8k 2>&1 | grep -v "Warn\|generate:" | tail -3 | tee -a $OUT/ft_eval.log
  cp $HOME/ft/eval-$ck-gsm8k-test.summary.json $OUT/ 2>/dev/null
done
ls -la $HOME/ft | tee -a $OUT/ft_eval.log
