# configs/math_qwen15b.py with LoRA adapters (rank 16, every projection), the 1.5B base frozen in bf16.
# Qwen2.5-Math-1.5B fine-tuned on MATH (the seeds' recipe): lr 1e-5, batch 4 x accumulation 8, 3 epochs,
# length 1024, 100 warmup steps, clip 1.0, eval and save every 500 steps, keep 3.
# `huggingface-cli download Qwen/Qwen2.5-Math-1.5B`, or set init_from to the folder.
init_from = "Qwen/Qwen2.5-Math-1.5B"
out_dir = "out/math_qwen15b_lora"
datasets = "math"
prompt_format = "chat"
seq_len = 1024
pack = False              # one example per row, as in the recipe: 32 examples per optimizer step
batch_size = 4
grad_accum = 8
epochs = 3.0
max_iters = 0
lr = 1e-4                 # LoRA: ~10x the full fine-tuning rate (1e-5)
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
grad_checkpointing = 0    # the frozen bf16 base and small adapters leave room for activations
lora_rank = 16
lora_alpha = 32.0
lora_dropout = 0.05
