"""Which attention variant gives the NaN gradient on GSM8K train batch 6608..6623 (right padded to 320)?"""
import sys, torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
sys.path.insert(0, ".")
import data, model as M
from checkpoint import from_pretrained
from tokenizer import load_tokenizer
P = sys.argv[1]
m = from_pretrained(P, device="cuda", dtype=torch.float32); m.train()
tok = load_tokenizer(P)
exs = data.load_dataset("gsm8k", "train")[6608:6624]
for e in exs:
    e["ids"], e["mask"] = data.render_example(tok, e, "chat")
T = max(len(e["ids"]) for e in exs)
b = {k: v.cuda() for k, v in data.collate([[i] for i in range(16)], exs, T, tok.pad_id).items() if torch.is_tensor(v)}
print("T", T, "lengths", [len(e["ids"]) for e in exs])
def run(name, doc=None, pos=None, backend=None, autocast=True, pad_to=None):
    idx, tgt = b["idx"], b["targets"]
    m.zero_grad(set_to_none=True)
    ctx = sdpa_kernel(backend) if backend is not None else torch.autocast("cuda", enabled=True)
    with ctx, torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = m(idx, tgt, pos=pos, doc=doc)
    loss.backward()
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    g = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf")).item()
    print(f"{name:55s} loss {loss.item():.4f} gnorm {g:.3f} nonfinite grads in {len(bad)} tensors {bad[:3]}")
causal_doc = torch.zeros_like(b["doc"])  # everything one document: explicit causal mask
run("doc mask (pads own doc), default backend", b["doc"], b["pos"])
run("doc mask, pads own doc, EFFICIENT", b["doc"], b["pos"], SDPBackend.EFFICIENT_ATTENTION)
run("doc mask, pads own doc, MATH", b["doc"], b["pos"], SDPBackend.MATH)
run("explicit causal bool mask (one doc), EFFICIENT", causal_doc, None, SDPBackend.EFFICIENT_ATTENTION)
run("explicit causal bool mask, positions restart for pads", causal_doc, b["pos"], SDPBackend.EFFICIENT_ATTENTION)
run("doc mask, pads own doc, fp32 no autocast, EFFICIENT", b["doc"], b["pos"], SDPBackend.EFFICIENT_ATTENTION, autocast=False)
run("is_causal (flash), no mask", None, None)
# the pad rows: does the NaN come from pad-token queries? zero their contribution by giving pads the doc of the last real token
d2 = b["doc"].clone(); d2[d2 == 1] = 0
run("pads join the example's doc (causal over real), EFFICIENT", d2, None, SDPBackend.EFFICIENT_ATTENTION)
# flex attention
try:
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    print("flex available")
except Exception as e:
    print("no flex", e)
