#!/usr/bin/env bash
# On the GPU machine, after shared/real_model's device_convert.sh: the real Qwen2.5-Coder-0.5B-Instruct against
# transformers (logits, greedy tokens), the full GSM8K test eval, the head-to-head with HF generate (bench.py),
# MATH-500, and 8 samples per problem on 1,000 GSM8K training problems. Logs and summaries go to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
now() { date +%s.%N; }
since() { python3 -c "import sys, time; print(f'wall {time.time() - float(sys.argv[1]):.1f} s')" $1; }
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
E=$HOME/evals; mkdir -p $E
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/evals.log
timeout 150 python3 dev/parity_real.py $M 2>&1 | grep -v Warn | tee $OUT/parity.log
run() { name=$1; shift; echo "== $name: python3 sample.py $*" | tee -a $OUT/evals.log
  t0=$(now); timeout 300 python3 sample.py "$@" --out $E/$name.jsonl 2>&1 | grep -v "Warn\|generate:" | tail -4 | tee -a $OUT/evals.log
  since $t0 | tee -a $OUT/evals.log
  cp $E/$name.summary.json $OUT/ 2>/dev/null; }
run base_gsm8k --ckpt $M --eval gsm8k
cp $E/base_gsm8k.jsonl $OUT/
timeout 300 python3 bench.py gen --model $M --hf-n 256 2>&1 | grep -v "Warn\|generate:\|Loading" | tee $OUT/bench_real.log
run base_math500 --ckpt $M --eval math500
run samples_train --ckpt $M --eval gsm8k --split train --max-samples 1000 --num-samples 8 --temperature 0.7
