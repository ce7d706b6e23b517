#!/usr/bin/env bash
# The restructuring's GPU check (one H200, random weights, no transfer): bench.py train on the tree before it
# (c03aeed, unpacked in .old/ and carried) and on this one, alternating, in one process each; then a short
# train.py run with compiled blocks, the generation eval, checkpoints and a resume. ~7 minutes.
#   mkdir .old && git archive c03aeed -- '*.py' configs | tar x -C .old && ln -s ../data .old/data \
#     && mkdir .old/tests && ln -s ../../tests/fixtures .old/tests/fixtures      # here, once; carry .old
set -o pipefail
export PYTHONUNBUFFERED=1
F="Warn\|warn(\|Loading\|it/s\]\|^ "
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
for i in 1 2; do
  for tree in .old .; do
    echo "== $tree, run $i: bench.py train --activation-budget 0.7 --hf-steps 0"
    (cd $tree && timeout 150 python3 bench.py train --activation-budget 0.7 --hf-steps 0 2>&1 | grep -v "$F" | tail -5)
  done
done 2>&1 | tee $OUT/bench_old_new.log
python3 -c "import sys, torch, bench; bench.get_model('0.5b', 'cuda', torch.bfloat16, '/dev/shm/r05')" >/dev/null 2>&1
A="--init_from=/dev/shm/r05 --out_dir=/dev/shm/t --eval_interval=10 --eval_samples=16 --eval_max_new_tokens=64"
A="$A --log_interval=5 --save_interval=10 --keep_last=1"
{ timeout 200 python3 train.py configs/gsm8k_qwen05b.py $A --max_iters=20
  timeout 120 python3 train.py configs/gsm8k_qwen05b.py $A --max_iters=25 --resume=auto; } 2>&1 \
  | grep -v '^ "\|^{\|^}\|Warn\|warn(\|val loss:' | cut -c1-250 | tee $OUT/train_smoke.log
