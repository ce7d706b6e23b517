# Qwen2.5-Math-1.5B fine-tuned on MATH (the seeds' recipe: lr 1e-5, 32 examples per step, 3 epochs, length 1024,
# 100 warmup steps, clip 1.0, eval and save every 500 steps, keep 3), its examples packed into rows.
# `huggingface-cli download Qwen/Qwen2.5-Math-1.5B`, or set init_from to the folder.
init_from = "Qwen/Qwen2.5-Math-1.5B"
out_dir = "out/math_qwen15b"
datasets = "math"
prompt_format = "chat"
seq_len = 1024
pack = True               # rows of 1024 tokens hold ~3 examples: 97.1% real tokens, against 31.9% one example
                          # per row, as the seeds' recipe had it; H200, random 1.5B weights (bench.py train --model
                          # 1.5b --config configs/math_qwen15b.py): 26.4k real tokens/s at 26.6 GiB, against 10.4k
                          # at 37.9 GiB one example per row
batch_size = 4
grad_accum = 3            # 12 rows, ~36 examples per optimizer step (the recipe: 32)
epochs = 3.0
max_iters = 0
lr = 1e-5                 # full fine-tuning; the LoRA variant uses 1e-4
min_lr_ratio = 0.0
warmup_iters = 100
weight_decay = 0.0
beta2 = 0.95
grad_clip = 1.0
log_interval = 10
eval_interval = 500
val_size = 500            # MATH training problems held out: validation loss, and the eval that picks best.pt
eval_samples = 500        # (MATH-500 is drawn from the MATH test set: it is for sample.py --eval only)
eval_max_new_tokens = 1024
eval_batch_size = 64
save_interval = 500
keep_last = 3
grad_checkpointing = -1   # every block: 1.5B with fp32 AdamW on one 24-80 GB GPU
