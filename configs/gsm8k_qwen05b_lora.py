# configs/gsm8k_qwen05b.py with LoRA: rank-16 adapters on every projection (q, k, v, o, gate, up, down), the base
# frozen in bf16. LoRA wants a ~10x higher learning rate than full fine-tuning (1e-4 here vs 1e-5). Checkpoints hold
# the adapters only (a few MB) and name the base; sample.py and --export-hf merge them into the weights.
init_from = "Qwen/Qwen2.5-0.5B-Instruct"
out_dir = "out/gsm8k_qwen05b_lora"
datasets = "gsm8k"
prompt_format = "chat"
seq_len = 1024
batch_size = 8
grad_accum = 1
epochs = 3.0
max_iters = 0
lr = 1e-4                 # full fine-tuning: 1e-5
min_lr_ratio = 0.1
warmup_iters = 30
weight_decay = 0.0
beta2 = 0.95
grad_clip = 1.0
lora_rank = 16
lora_alpha = 32.0
lora_dropout = 0.05
lora_targets = "q,k,v,o,gate,up,down"
log_interval = 10
eval_interval = 200
eval_samples = 200        # held-out GSM8K training problems (val_size) graded at each eval; best.pt follows them
eval_max_new_tokens = 512
eval_batch_size = 64
save_interval = 200
keep_last = 2
