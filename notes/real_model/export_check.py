"""Exported folder -> transformers load -> greedy output equals ours (bf16 on the GPU)."""
import sys, torch
sys.path.insert(0, ".")
from transformers import AutoModelForCausalLM, AutoTokenizer
from checkpoint import load_model
from engine import generate
from data import render_prompt, load_dataset
d = sys.argv[1]
m, tok, _ = load_model(d, device="cuda")
m = m.to(torch.bfloat16)
h = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
htok = AutoTokenizer.from_pretrained(d)
probs = load_dataset("gsm8k", "test")[:4]
same = 0
for p in probs:
    ids = render_prompt(tok, p["prompt"], "chat")
    msgs = [{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."}, {"role": "user", "content": p["prompt"]}]
    hids = htok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    hids = hids["input_ids"] if hasattr(hids, "keys") else hids
    assert list(hids) == ids
    g = h.generate(torch.tensor([ids], device="cuda"), max_new_tokens=128, do_sample=False)[0, len(ids):].tolist()
    o = generate(m, [ids], 128, stop_ids=tok.stop_ids)[0].ids
    n = next((i for i, (a, b) in enumerate(zip(g, o)) if a != b), min(len(g), len(o)))
    print(f"prompt {p['id']}: ours {len(o)} tokens, hf {len(g)} tokens (incl. stop), identical prefix {n}")
    same += g[:len(o)] == o
print(f"{same}/{len(probs)} greedy outputs identical")
