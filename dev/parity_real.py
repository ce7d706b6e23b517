"""On the GPU machine: our model vs transformers on the real Qwen2 checkpoint (logits, greedy tokens), plus the
tokenizer and chat template vs the checkpoint's own HF tokenizer."""
import sys, time, torch
sys.path.insert(0, ".")
from checkpoint import from_pretrained
from tokenizer import load_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = load_tokenizer(path); htok = AutoTokenizer.from_pretrained(path)
msgs = [{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
        {"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"}]
ours_ids = tok.render_chat(msgs, add_generation_prompt=True)[0]
ref_ids = htok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
ref_ids = ref_ids["input_ids"] if hasattr(ref_ids, "keys") else ref_ids
print("chat ids equal:", ours_ids == list(ref_ids), len(ours_ids))
for dtype in (torch.float32, torch.bfloat16):
    t0 = time.time(); m = from_pretrained(path, device="cuda", dtype=dtype); t1 = time.time()
    h = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").cuda().eval(); t2 = time.time()
    print(f"{dtype}: load ours {t1-t0:.2f}s, transformers {t2-t1:.2f}s")
    x = torch.tensor([ours_ids], device="cuda")
    with torch.no_grad():
        a = m(x).float(); b = h(x).logits.float()
    d = (a - b).abs().max().item(); rel = ((a - b).norm() / b.norm()).item()
    print(f"{dtype}: max abs logit diff {d:.3e}, rel {rel:.3e}, argmax agree {(a.argmax(-1)==b.argmax(-1)).float().mean().item():.4f}")
    with torch.no_grad():
        g = h.generate(x, max_new_tokens=64, do_sample=False)[0, x.size(1):].tolist()
    from engine import generate
    o = generate(m, [ours_ids], 64, stop_ids=())[0].ids
    n = next((i for i, (p, q) in enumerate(zip(g, o)) if p != q), min(len(g), len(o)))
    print(f"{dtype}: greedy 64 tokens: first {n} identical (ours {len(o)}, hf {len(g)})")
    print(repr(tok.decode(o[:64])))
    del m, h; torch.cuda.empty_cache()
