"""Every GSM8K train batch of 16 in file order, right padded to the batch's longest (the HF recipe's batches), through
our masked attention path: count non-finite gradient norms with cuDNN attention allowed vs our kernel list."""
import sys, time, torch
from torch.nn.attention import SDPBackend
sys.path.insert(0, ".")
import data, model as M
from checkpoint import from_pretrained
from tokenizer import load_tokenizer
P = sys.argv[1]
m = from_pretrained(P, device="cuda", dtype=torch.float32); m.train()
tok = load_tokenizer(P)
rows = data.load_dataset("gsm8k", "train")
for e in rows:
    e["ids"], e["mask"] = data.render_example(tok, e, "chat")
ours = list(M.MASKED_SDPA_BACKENDS)
for name, backends in (("cuDNN allowed (torch default order)", [SDPBackend.CUDNN_ATTENTION] + ours), ("ours (no cuDNN)", ours)):
    M.MASKED_SDPA_BACKENDS = backends
    bad, t0 = [], time.time()
    for s in range(0, len(rows) - 15, 16):
        exs = rows[s:s + 16]
        T = max(len(e["ids"]) for e in exs)
        b = data.collate([[i] for i in range(16)], exs, T, tok.pad_id)
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(b["idx"].cuda(), b["targets"].cuda(), pos=b["pos"].cuda(), doc=b["doc"].cuda())
        loss.backward()
        g = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf")).item()
        if not (g == g and g != float("inf")) or loss.item() != loss.item():
            bad.append((s, T))
    print(f"{name}: {len(rows) // 16} batches, non-finite grad norm in {len(bad)}: {bad} ({time.time() - t0:.0f}s)", flush=True)
