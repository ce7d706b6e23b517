#!/usr/bin/env bash
# On the GPU machine, after shared/real_model's device_convert.sh: issue 14 on the real Qwen2.5-Coder-0.5B-Instruct,
# one stage per call (each fits the device tool's 10-minute limit; files live in $HOME while the machine is warm).
#   bash dev/gpu/rft_verifier.sh sample a|b   8 samples at T=0.8 for each GSM8K training problem (in two halves)
#   bash dev/gpu/rft_verifier.sh rft          train configs/gsm8k_qwen05b_rft.py on them, then the GSM8K test eval
#   bash dev/gpu/rft_verifier.sh verifier     train configs/gsm8k_qwen05b_verifier.py on the graded samples
#   bash dev/gpu/rft_verifier.sh bo16         GSM8K test, 16 samples: pass@16, maj@16, the verifier's pick
#   bash dev/gpu/rft_verifier.sh round2       expert iteration: 8 more samples per problem from the round-1 model,
#                                               the distinct correct ones of both rounds -> rft2.jsonl
#   bash dev/gpu/rft_verifier.sh rft2         configs/gsm8k_qwen05b_rft2.py (base model, gsm8k + rft2.jsonl), test eval
#   bash dev/gpu/rft_verifier.sh unpack       on a fresh machine: the samples of an earlier machine, carried in
#                                               .rft_data/ (samples_a/b.jsonl.gz, rft.jsonl.gz), instead of sampling
#   bash dev/gpu/rft_verifier.sh readme-sample    the README's rejection-sampling command as written (into a fresh
#                                               out/rft/, which it must make itself); give it a call of its own
#   bash dev/gpu/rft_verifier.sh readme-verifier  the README's verifier command as written (its own call as well)
# SAMPLE_ARGS / TRAIN_ARGS add flags (a CPU smoke run of this script uses them to shrink everything).
set -o pipefail
export PYTHONUNBUFFERED=1
now() { date +%s.%N; }
since() { python3 -c "import sys, time; print(f'wall {time.time() - float(sys.argv[1]):.1f} s')" $1; }
M=${M:-$HOME/real_model/qwen2.5-coder-0.5b-instruct}
H=${H:-$HOME/rft}; mkdir -p $H
BS=${BS:-512}
quiet() { grep -v "Warn\|generate:\|^id \|^\.\.\.\|^data/\|^tr_.\.jsonl:"; }
train_eval() {  # $1 name, $2 config, $3 datasets: train from the base model, then GSM8K test on best.pt and the last step
  t0=$(now)
  python3 train.py $2 --init_from=$M --out_dir=$HOME/$1_run --datasets=$3 --save_interval=100000 $TRAIN_ARGS 2>&1 \
    | grep -v '^ "\|^{\|^}' | quiet | tee -a $OUT/$1_train.log
  since $t0 | tee -a $OUT/$1_train.log
  cp $HOME/$1_run/metrics.jsonl $OUT/$1_metrics.jsonl
  for ck in best $(basename $(ls $HOME/$1_run/ckpt-*.pt | tail -1) .pt); do
    t0=$(now)
    python3 sample.py --ckpt $HOME/$1_run/$ck.pt --eval gsm8k --overwrite $SAMPLE_ARGS 2>&1 | quiet | tee -a $OUT/$1_eval.log
    since $t0 | tee -a $OUT/$1_eval.log
    cp $HOME/$1_run/eval-$ck-gsm8k-test.summary.json $OUT/$1_$ck.summary.json
  done
}
case $1 in
sample)  # the two halves of the training set are sampled in two calls; the problems keep distinct ids (file:line)
  [ -f $H/tr_b.jsonl ] || { head -n 3737 data/gsm8k/train.jsonl > $H/tr_a.jsonl; tail -n +3738 data/gsm8k/train.jsonl > $H/tr_b.jsonl; }
  t0=$(now)
  python3 sample.py --ckpt $M --eval $H/tr_$2.jsonl --num-samples 8 --temperature 0.8 --batch-size $BS --overwrite \
    --out $H/samples_$2.jsonl --rft-out $H/rft_$2.jsonl $SAMPLE_ARGS 2>&1 | quiet | tee $OUT/sample_$2.log
  since $t0 | tee -a $OUT/sample_$2.log
  gzip -9 -c $H/samples_$2.jsonl > $OUT/samples_$2.jsonl.gz
  cp $H/samples_$2.summary.json $OUT/ ;;
unpack)
  for f in samples_a samples_b rft; do gunzip -c .rft_data/$f.jsonl.gz > $H/$f.jsonl; done
  wc -l $H/*.jsonl ;;
rft)
  [ -f $H/rft_a.jsonl ] && cat $H/rft_a.jsonl $H/rft_b.jsonl > $H/rft.jsonl
  wc -l $H/rft.jsonl | tee $OUT/rft_train.log
  train_eval rft configs/gsm8k_qwen05b_rft.py gsm8k:1,$H/rft.jsonl:1 ;;
round2)
  [ -f $H/tr_b.jsonl ] || { head -n 3737 data/gsm8k/train.jsonl > $H/tr_a.jsonl; tail -n +3738 data/gsm8k/train.jsonl > $H/tr_b.jsonl; }
  for h in a b; do
    t0=$(now)
    python3 sample.py --ckpt $HOME/rft_run/best.pt --eval $H/tr_$h.jsonl --num-samples 8 --temperature 0.8 \
      --batch-size $BS --overwrite --out $H/r2_samples_$h.jsonl $SAMPLE_ARGS 2>&1 | quiet | tail -2 | tee -a $OUT/round2.log
    since $t0 | tee -a $OUT/round2.log
  done
  python3 -c "
import json, sys, data
recs = [json.loads(l) for f in sys.argv[2:] for l in open(f)]  # round 1 first: its solutions are kept first
rows = data.rft_rows(recs)
open(sys.argv[1], 'w').write(''.join(json.dumps(r) + '\\n' for r in rows))
print(f'{sum(r[\"correct\"] for r in recs)} correct of {len(recs)} samples (2 rounds) -> {len(rows)} distinct solutions '
      f'of {len({r[\"id\"] for r in rows})} problems')" $H/rft2.jsonl $H/samples_a.jsonl $H/samples_b.jsonl \
    $H/r2_samples_a.jsonl $H/r2_samples_b.jsonl | tee -a $OUT/round2.log
  gzip -9 -c $H/rft2.jsonl > $OUT/rft2.jsonl.gz ;;
rft2)
  train_eval rft2 configs/gsm8k_qwen05b_rft2.py gsm8k:1,$H/rft2.jsonl:1 ;;
verifier)
  cat $H/samples_a.jsonl $H/samples_b.jsonl > $H/samples.jsonl
  t0=$(now)
  python3 train.py configs/gsm8k_qwen05b_verifier.py --init_from=$M --out_dir=$HOME/ver --datasets=$H/samples.jsonl \
    $TRAIN_ARGS 2>&1 | grep -v '^ "\|^{\|^}' | quiet | tee $OUT/verifier_train.log
  since $t0 | tee -a $OUT/verifier_train.log
  cp $HOME/ver/metrics.jsonl $OUT/verifier_metrics.jsonl ;;
bo16)
  t0=$(now)
  python3 sample.py --ckpt $M --eval gsm8k --num-samples 16 --temperature 0.8 --batch-size $BS --overwrite \
    --verifier $HOME/ver/best.pt --out $H/bo16.jsonl $SAMPLE_ARGS 2>&1 | quiet | tee $OUT/bo16.log
  since $t0 | tee -a $OUT/bo16.log
  cp $H/bo16.summary.json $OUT/
  gzip -9 -c $H/bo16.jsonl > $OUT/bo16.jsonl.gz ;;
readme-sample)
  ls -d out/rft 2>&1 | tee $OUT/readme_sample.log
  t0=$(now)
  timeout 570 python3 sample.py --ckpt $M --eval gsm8k --split train --num-samples 8 --temperature 0.8 \
    --out out/rft/samples.jsonl --rft-out out/rft/rft.jsonl $SAMPLE_ARGS 2>&1 | quiet | tee -a $OUT/readme_sample.log
  since $t0 | tee -a $OUT/readme_sample.log
  ls -la out/rft | tee -a $OUT/readme_sample.log
  cp out/rft/samples.summary.json $OUT/ ;;
readme-verifier)
  t0=$(now)
  timeout 570 python3 train.py configs/gsm8k_qwen05b_verifier.py --init_from=$M $TRAIN_ARGS 2>&1 \
    | grep -v '^ "\|^{\|^}' | quiet | tee $OUT/readme_verifier.log
  since $t0 | tee -a $OUT/readme_verifier.log
  ls -la out/gsm8k_qwen05b_verifier | tee -a $OUT/readme_verifier.log
  cp out/gsm8k_qwen05b_verifier/metrics.jsonl $OUT/readme_verifier_metrics.jsonl ;;
*) echo "usage: $0 sample a|b | unpack | rft | round2 | rft2 | verifier | bo16 | readme-sample | readme-verifier"; exit 1 ;;
esac
