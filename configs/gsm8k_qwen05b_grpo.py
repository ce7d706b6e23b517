# GRPO on GSM8K from Qwen2.5-0.5B-Instruct (rl.py): 32 problems x 8 samples per step, reward 1 for a right final
# answer, no KL, full fine-tuning. `huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct`, or set init_from.
#   python rl.py configs/gsm8k_qwen05b_grpo.py
#   python sample.py --ckpt out/gsm8k_qwen05b_grpo/best.pt --eval gsm8k     # the test split, once, at the end
# best.pt follows greedy accuracy on 200 held-out GSM8K *training* problems (the same ones train.py holds out).
# Measured on Qwen2.5-Coder-0.5B-Instruct, one H200: 3.0 s a step; best.pt at step 175 (47.0% held out) read
# 41.0% greedy on the GSM8K test, from 27.37% (dev/README.md).
init_from = "Qwen/Qwen2.5-0.5B-Instruct"
out_dir = "out/gsm8k_qwen05b_grpo"
datasets = "gsm8k"
prompt_format = "chat"
val_size = 200
prompts_per_step = 32
group_size = 8
max_new_tokens = 512
temperature = 1.0
slots = 256               # all 256 samples of a step decode at once
seq_len = 2048            # rows of packed samples for the update (a prompt is at most ~250 tokens)
batch_size = 8
max_iters = 200
lr = 2e-6
schedule = "constant"
warmup_iters = 5
eval_interval = 25
eval_samples = 200
eval_max_new_tokens = 512
save_interval = 25
