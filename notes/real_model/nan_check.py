"""The batches on which the HF Trainer recipe got a NaN grad norm (GSM8K train in file order, batches of 16 starting
at examples 1072, 2976, 6608, right padded): our forward/backward on the same examples, fp32 weights + bf16 autocast."""
import sys, math, torch
sys.path.insert(0, ".")
import data
from checkpoint import from_pretrained
from tokenizer import load_tokenizer
M = sys.argv[1]
m = from_pretrained(M, device="cuda", dtype=torch.float32); m.train()
tok = load_tokenizer(M)
rows = data.load_dataset("gsm8k", "train")
for start in (1072, 2976, 6608, 0, 16):
    exs = rows[start:start + 16]
    for e in exs:
        e["ids"], e["mask"] = data.render_example(tok, e, "chat")
    T = max(len(e["ids"]) for e in exs)
    b = data.collate([[i] for i in range(16)], exs, T, tok.pad_id)
    m.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = m(b["idx"].cuda(), b["targets"].cuda(), pos=b["pos"].cuda(), doc=b["doc"].cuda())
    loss.backward()
    g = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf")).item()
    # and without the doc mask: plain causal attention over right padding (pads come after every real token)
    m.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss2 = m(b["idx"].cuda(), b["targets"].cuda())
    loss2.backward()
    g2 = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf")).item()
    print(f"batch at {start}: padded to {T}: doc-mask path loss {loss.item():.4f} gnorm {g:.3f} | causal-only path loss {loss2.item():.4f} gnorm {g2:.3f}")
