#!/usr/bin/env bash
# On the GPU machine (no transfer): configs/math_qwen15b.py and its LoRA variant end to end at the Qwen2.5-Math-1.5B
# shape with random weights (no 1.5B checkpoint can be downloaded here): training steps, the held-out MATH eval that
# picks best.pt, checkpoints, then sample.py on MATH-500 from best.pt. Short runs (max_iters) show that every part
# runs and what it costs, not what the recipe learns.
set -o pipefail
export PYTHONUNBUFFERED=1
now() { date +%s.%N; }
since() { python3 -c "import sys, time; print(f'wall {time.time() - float(sys.argv[1]):.1f} s')" $1; }
R=$HOME/q15b_random
[ -f $R/config.json ] || python3 -c "import sys, torch, bench; bench.get_model('1.5b', 'cuda', torch.bfloat16, sys.argv[1])" $R
SHORT="--max_iters=30 --warmup_iters=5 --eval_interval=15 --save_interval=30 --eval_samples=32 --log_interval=5"
for v in full lora; do
  cfg=configs/math_qwen15b.py; [ $v = lora ] && cfg=configs/math_qwen15b_lora.py
  t0=$(now)
  python3 train.py $cfg --init_from=$R --out_dir=$HOME/m15_$v $SHORT 2>&1 | grep -v '^ "\|^{\|^}\|val loss:\|Warn' \
    | tee $OUT/math15b_$v.log | grep -v "^id \|^\.\.\.\|^data/"
  since $t0 | tee -a $OUT/math15b_$v.log
  ls -la $HOME/m15_$v | tee -a $OUT/math15b_$v.log
  t0=$(now)
  python3 sample.py --ckpt $HOME/m15_$v/best.pt --eval math500 --max-samples 64 2>&1 | grep -v "Warn\|generate:" \
    | tail -2 | tee -a $OUT/math15b_$v.log
  since $t0 | tee -a $OUT/math15b_$v.log
done
