# A verifier for GSM8K (cf. Cobbe et al. 2021): a value head on the decoder's final hidden states learns whether a
# sampled solution's final answer is correct, from the graded samples sample.py writes:
#   python sample.py --ckpt Qwen/Qwen2.5-0.5B-Instruct --eval gsm8k --split train --num-samples 8 --temperature 0.8 \
#       --out out/rft/samples.jsonl
#   python train.py configs/gsm8k_qwen05b_verifier.py
#   python sample.py --ckpt Qwen/Qwen2.5-0.5B-Instruct --eval gsm8k --num-samples 16 --temperature 0.8 \
#       --verifier out/gsm8k_qwen05b_verifier/best.pt          # best-of-16 by the verifier, next to pass@ and maj@
# The head is trained on every solution token (its target is the solution's correctness, the denser signal Cobbe et
# al. found better than the last token alone) and scores a solution by its value at the closing end token.
# best.pt follows AUROC on the samples of held-out problems (val_size problems, all their samples).
import os
exec(open(os.path.join(os.path.dirname(__file__), "gsm8k_qwen05b.py")).read())  # the SFT recipe, then:
out_dir = "out/gsm8k_qwen05b_verifier"
datasets = "out/rft/samples.jsonl"
objective = "verifier"
verifier_backbone = "lora"    # frozen (the head alone), lora, or full
lora_rank = 16
lora_alpha = 32.0
lr = 1e-4
epochs = 1.0
val_size = 100                # problems held out, with all their samples (800 at 8 per problem)
eval_samples = 0              # a verifier is judged by AUROC, not by generating
activation_budget = 1.0   # with LoRA 0.7 saved nothing (13.2 GiB both) and ran 7% slower (H100, bench.py train)
