# Rejection-sampling fine-tuning (Yuan et al. 2023) on GSM8K: the model's own correct, distinct solutions, mixed with
# the reference solutions. Round 1, two commands (README "Beyond SFT"):
#   python sample.py --ckpt Qwen/Qwen2.5-0.5B-Instruct --eval gsm8k --split train --num-samples 8 --temperature 0.8 \
#       --out out/rft/samples.jsonl --rft-out out/rft/rft.jsonl
#   python train.py configs/gsm8k_qwen05b_rft.py
# Round 2 (expert iteration): configs/gsm8k_qwen05b_rft2.py.
# The held-out problems (val_size) are drawn from all GSM8K training problems, not from the easier ones the model
# solved, and dropped from both datasets: best.pt is picked on problems no file taught.
import os
exec(open(os.path.join(os.path.dirname(__file__), "gsm8k_qwen05b.py")).read())  # the SFT recipe, then:
out_dir = "out/gsm8k_qwen05b_rft"
datasets = "gsm8k:1,out/rft/rft.jsonl:1"   # reference solutions : own solutions (weights repeat or subsample)
epochs = 2.0
