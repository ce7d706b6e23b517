# configs/math_qwen15b.py with LoRA: rank-16 adapters on every projection, the 1.5B base frozen in bf16.
import os
exec(open(os.path.join(os.path.dirname(__file__), "math_qwen15b.py")).read())  # everything of the full recipe, then:
out_dir = "out/math_qwen15b_lora"
lr = 1e-4                 # LoRA: ~10x the full fine-tuning rate (1e-5)
grad_checkpointing = 0    # the frozen bf16 base and small adapters leave room for the activations
lora_rank = 16
lora_alpha = 32.0
lora_dropout = 0.05
