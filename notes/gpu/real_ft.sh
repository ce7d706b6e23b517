#!/usr/bin/env bash
# On the GPU machine, after real_eval.sh: 3 epochs of configs/gsm8k_qwen05b.py on the real model (eval on held-out
# training problems picks best.pt), then the full GSM8K test eval of the final and best checkpoints.
set -o pipefail
export PYTHONUNBUFFERED=1
now() { date +%s.%N; }
since() { python3 -c "import sys, time; print(f'wall {time.time() - float(sys.argv[1]):.1f} s')" $1; }
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
t0=$(now); timeout 420 python3 train.py configs/gsm8k_qwen05b.py --init_from=$M --out_dir=$HOME/ft "$@" 2>&1 \
  | grep -v '^ "\|^{\|^}\|val loss:' | tee $OUT/train.log | grep -v "^id \|^\.\.\.\|^data/"
since $t0 | tee -a $OUT/train.log
cp $HOME/ft/metrics.jsonl $OUT/ 2>/dev/null
last=$(ls $HOME/ft/ckpt-*.pt | tail -1)
for ck in best $(basename $last .pt); do
  t0=$(now); timeout 120 python3 sample.py --ckpt $HOME/ft/$ck.pt --eval gsm8k 2>&1 | grep -v "Warn\|generate:" | tail -3 | tee -a $OUT/ft_eval.log
  since $t0 | tee -a $OUT/ft_eval.log
  cp $HOME/ft/eval-$ck-gsm8k-test.summary.json $OUT/ 2>/dev/null
done
ls -la $HOME/ft | tee -a $OUT/ft_eval.log
