# Expert iteration, round 2 of configs/gsm8k_qwen05b_rft.py: sample again from the round-1 model, keep the distinct
# correct solutions of both rounds, and train the base model again on all of them (as Yuan et al. do: more distinct
# reasoning paths, one fine-tuning from the start rather than a chain of them):
#   python sample.py --ckpt out/gsm8k_qwen05b_rft/best.pt --eval gsm8k --split train --num-samples 8 \
#       --temperature 0.8 --out out/rft/samples2.jsonl --rft-out out/rft/rft2.jsonl --rft-with out/rft/samples.jsonl
#   python train.py configs/gsm8k_qwen05b_rft2.py
# Round 2's file is ~2.4x round 1's (30.4k solutions against 12.8k on the real 0.5B model): one epoch over it costs
# what round 1's two epochs did. The held-out problems are the same as round 1's (same seed, same GSM8K order).
import os
exec(open(os.path.join(os.path.dirname(__file__), "gsm8k_qwen05b_rft.py")).read())  # round 1's recipe, then:
out_dir = "out/gsm8k_qwen05b_rft2"
datasets = "gsm8k:1,out/rft/rft2.jsonl:1"
epochs = 1.0
