"""GPU checks of the generation engine at the Qwen2.5-0.5B shape (random weights, bf16):
1. the CUDA-graph decode path gives the same greedy tokens as the eager path, and seeded sampling repeats;
2. time of one captured decode step at several batch sizes / cache lengths, with SDPA (folded GQA, masked
   memory-efficient kernel) and with a plain matmul-softmax-matmul attention, to pick the decode attention.
Run: python notes/gpu/engine_check.py"""
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
import engine as E  # noqa: E402
import model as M  # noqa: E402

torch.manual_seed(0)
cfg = M.ModelConfig(vocab_size=151936, n_layer=24, n_embd=896, n_head=14, n_kv_head=2, intermediate_size=4864)
with torch.device("cuda"):
    model = M.Transformer(cfg).to(torch.bfloat16).eval()
g = torch.Generator().manual_seed(1)
prompts = [torch.randint(0, 150000, (int(n),), generator=g).tolist() for n in torch.randint(20, 300, (96,), generator=g)]
stop = {int(x) for x in torch.randint(0, 150000, (300,), generator=g)}  # random weights: stops end rows at random steps

t = time.time()
a = E.generate(model, prompts, 64, stop_ids=stop, batch_size=32, cuda_graph=True)
t1 = time.time()
b = E.generate(model, prompts, 64, stop_ids=stop, batch_size=32, cuda_graph=False)
t2 = time.time()
c = E.generate(model, prompts, 64, stop_ids=stop, batch_size=7, cuda_graph=True)
same = sum(x.ids == y.ids for x, y in zip(a, b))
same7 = sum(x.ids == y.ids for x, y in zip(a, c))
lens = [len(x.ids) for x in a]
print(f"greedy, graph vs eager: {same}/{len(a)} identical ({t1 - t:.2f}s vs {t2 - t1:.2f}s); batch 32 vs 7: {same7}/{len(a)}; "
      f"lengths {min(lens)}-{max(lens)}")
kw = dict(temperature=0.8, top_p=0.95, seed=3, num_samples=4, batch_size=64)
s1, s2 = E.generate(model, prompts[:16], 32, **kw), E.generate(model, prompts[:16], 32, **kw)
s3 = E.generate(model, [p for p in prompts[:16] for _ in range(4)], 32, **{**kw, "num_samples": 1, "batch_size": 20})
print(f"sampling repeats: {all(x.ids == y.ids for x, y in zip(s1, s2))}; shared prefix == separate prompts: "
      f"{sum(x.ids == y.ids for x, y in zip(s1, s3))}/{len(s1)}")


def manual_attention(q, k, v, attn_mask=None, **kw):
    # q (B, nkv, R, hd), k/v (B, nkv, L, hd), mask (B, 1, R, L) bool
    s = torch.matmul(q, k.transpose(-1, -2)).float() * q.size(-1) ** -0.5
    s = s.masked_fill(~attn_mask, float("-inf")).softmax(-1)
    return torch.matmul(s.to(v.dtype), v)


def time_step(B, L, n=50):
    cache = model.make_cache(B, L)
    cache.pos.fill_(L // 2)
    tok = torch.randint(0, 1000, (B, 1), device="cuda")

    def step():
        cache.pos.fill_(L // 2)
        return model(tok, cache=cache)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        step()
    for _ in range(5):
        graph.replay()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n):
        graph.replay()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / n


sdpa = F.scaled_dot_product_attention
for name, fn in (("sdpa", sdpa), ("manual", manual_attention)):
    M.F.scaled_dot_product_attention = fn if name == "manual" else sdpa
    if name == "manual":  # keep the unmasked (prefill) path on SDPA
        M.F.scaled_dot_product_attention = lambda q, k, v, attn_mask=None, **kw: (
            manual_attention(q, k, v, attn_mask) if attn_mask is not None else sdpa(q, k, v, **kw))
    for B in (64, 128, 256):
        for L in (512, 1024):
            ms = time_step(B, L)
            print(f"decode step {name:6s} B={B:3d} L={L:4d}: {ms:6.2f} ms  ({B / ms * 1e3:8.0f} tok/s at full slots)")
M.F.scaled_dot_product_attention = sdpa
