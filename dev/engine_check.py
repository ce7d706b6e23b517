"""The engine's GPU path against its eager path, on one model (random weights at a Qwen2.5 shape, or a checkpoint):
compiled + CUDA-graph decoding vs eager decoding on the same greedy prompts (bf16: identical sequences and, for a
real model, identical graded answers), weights changed in place between two calls of one engine against a fresh
engine, the returned log-probabilities against a separate forward pass, and LoRA adapters generating unmerged.

    python dev/engine_check.py [--model 0.5b|PATH] [--n 256] [--new 128]
    python dev/engine_check.py --model 0.5b --device cpu --n 4 --new 8   # the CPU smoke run (tests/test_dev.py)
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import grade as G  # noqa: E402
from bench import get_model  # noqa: E402
from engine import Engine, Sampling  # noqa: E402
from lora import apply_lora, lora_layers  # noqa: E402


def common(x, y):
    """The number of tokens two samples chose alike before they first differ."""
    return next((i for i, (s, t) in enumerate(zip(x.ids, y.ids)) if s != t), min(len(x.ids), len(y.ids)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="0.5b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args(argv)
    dt = torch.bfloat16 if args.device == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, _, label = get_model(args.model, args.device, dt, tmp)
    model.eval()
    problems = data.load_dataset("gsm8k", "test")[:args.n]
    fmt = "chat" if tok.has_chat_template else "plain"
    prompts = [data.render_prompt(tok, p["prompt"], fmt) for p in problems]
    L = -(-(max(map(len, prompts)) + args.new) // 64) * 64
    sampling = Sampling(args.new, stop_ids=tuple(sorted(tok.stop_ids)))
    print(f"{label}, {args.device}, {dt}: {len(prompts)} GSM8K test prompts, {args.new} new tokens")

    fast = Engine(model, 64, L, args.new)  # compiled and captured on CUDA
    t0 = time.time()
    a = fast.generate(prompts, sampling)
    print(f"fast path: {time.time() - t0:.1f}s with compile and capture; memory {fast.memory()}")
    b = Engine(model, 64, L, args.new, cuda_graph=False, compile=False).generate(prompts, sampling)
    same = sum(x.ids == y.ids for x, y in zip(a, b))
    first16 = sum(x.ids[:16] == y.ids[:16] for x, y in zip(a, b))
    answers = [(G.grade(tok.decode(x.ids), p["answer"]).extracted, G.grade(tok.decode(y.ids), p["answer"]).extracted)
               for x, y, p in zip(a, b, problems)]
    print(f"graph vs eager: {same}/{len(a)} identical sequences, {first16}/{len(a)} identical first 16 tokens, "
          f"{sum(x == y for x, y in answers)}/{len(a)} identical extracted answers")

    s1 = Sampling(args.new, temperature=1.0, seed=3, stop_ids=sampling.stop_ids)
    # sampled: the graph's compiled token_sums (the draw's block sums, the log-probs' sums) against eager's
    a = fast.generate(prompts[:32], s1, num_samples=2, logprobs=True)
    b = Engine(model, 64, L, args.new, cuda_graph=False, compile=False).generate(prompts[:32], s1, num_samples=2,
                                                                                logprobs=True)
    lp = max(max((abs(u - w) for u, w in zip(x.logprobs[:common(x, y)], y.logprobs)), default=0.0)
             for x, y in zip(a, b))
    print(f"sampled at T 1, graph vs eager: {sum(x.ids == y.ids for x, y in zip(a, b))}/{len(a)} identical "
          f"sequences, {sum(x.ids[:16] == y.ids[:16] for x, y in zip(a, b))}/{len(a)} identical first 16 tokens; "
          f"log-probs of the common prefix max |diff| {lp:.2e}")
    first = fast.generate(prompts[:32], s1, num_samples=2, logprobs=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + 0.02 * torch.randn_like(p))  # an optimizer step's worth of change, in place
    second = fast.generate(prompts[:32], s1, num_samples=2, logprobs=True)
    fresh = Engine(model, 64, L, args.new).generate(prompts[:32], s1, num_samples=2, logprobs=True)
    print(f"weights changed in place: second call equals a fresh engine on "
          f"{sum(x.ids == y.ids for x, y in zip(second, fresh))}/{len(fresh)} sequences (differs from the first "
          f"on {sum(x.ids != y.ids for x, y in zip(second, first))})")
    err = []
    for i, smp in enumerate(second[:16]):
        p = prompts[i // 2]
        with torch.no_grad():
            logits = model(torch.tensor([p + smp.ids], device=args.device))[0, len(p) - 1:-1].float()
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(smp.ids, device=args.device)[:, None])[:, 0]
        err.append((torch.tensor(smp.logprobs, device=args.device) - want).abs().max().item())
    print(f"log-probs vs a forward pass: max abs difference {max(err):.2e} over 16 sequences")

    apply_lora(model, rank=8, alpha=16, targets=("q", "v", "up"))
    for m in lora_layers(model):
        m.lora_B.data.normal_(0, 0.01)
    if args.device == "cuda":
        model.to(torch.bfloat16)
    lora = Engine(model, 64, L, args.new).generate(prompts[:64], sampling)
    ref = Engine(model, 64, L, args.new, cuda_graph=False, compile=False).generate(prompts[:64], sampling)
    print(f"LoRA unmerged, graph vs eager: {sum(x.ids == y.ids for x, y in zip(lora, ref))}/{len(ref)} identical")


if __name__ == "__main__":
    main()
