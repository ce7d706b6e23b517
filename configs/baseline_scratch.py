# The seeds' from-scratch baseline: the scratch-22m preset (4 layers, hidden 256, 4 heads, 512 context) with the math
# tokenizer, trained on GSM8K + MATH solutions within a 2-hour wall-clock budget. With the 4,096-token math
# vocabulary (tied embedding) the model has 5.2M parameters; the preset's ~22M counts a 65,536-token vocabulary.
# At 512 tokens, 1,233 of the 14,952 training examples (long MATH solutions) are truncated (train.py reports it).
init_from = "scratch"
model_preset = "scratch-22m"
n_layer = 0               # 0 = the preset's values
n_embd = 0
n_head = 0
tokenizer = "math"
out_dir = "out/baseline_scratch"
datasets = "gsm8k,math"
prompt_format = "plain"
seq_len = 512
batch_size = 32
grad_accum = 1
epochs = 10.0             # max_time usually ends the run first
max_iters = 0
max_time = 7200.0         # the 2-hour budget; saves before it exits
lr = 1e-3
min_lr_ratio = 0.1
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
log_interval = 50
eval_interval = 1000
eval_samples = 200        # held-out training problems (val_size), never a test split
eval_max_new_tokens = 256
save_interval = 1000
keep_last = 2
