"""Experiment for the training-speed issue (not part of the tool): the loss's vocab projection + cross-entropy as
model.py does it now (LinearCrossEntropy: gradients in the forward pass, chunk by chunk, the weight's gradient
summed in fp32 by the matmul) against how it did it before 2026-11-22 (each chunk under autocast, checkpointed and
recomputed in backward, the fp32 weight cast to bf16 per chunk and its bf16 gradient added to the fp32 one), at a
real shape: N supervised rows of the 0.5B (C 896) or 1.5B (C 1536) model, vocab 151936, fp32 weight, bf16 hidden
states. Both compiled as compile_blocks() does. Prints each one's error against an fp32 reference (loss, and the
gradients of h and of the weight, relative L2), ms per forward+backward and the peak memory above the inputs.

    python notes/gpu/check_linear_ce.py --n 4500 --c 896
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from model import LinearCrossEntropy, Transformer  # noqa: E402


def old_chunk_ce(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")


def old(h, w, t, chunk, ce):
    loss = 0.0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(0, h.size(0), chunk):
            loss = loss + checkpoint(ce, h[i:i + chunk], w, t[i:i + chunk], use_reentrant=False)
    return loss


def new(h, w, t, chunk, ce):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return LinearCrossEntropy.apply(h, w, t, chunk, ce)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4500)
    ap.add_argument("--c", type=int, default=896)
    ap.add_argument("--v", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    w = (torch.randn(args.v, args.c, device=dev) * 0.02).requires_grad_()
    h = torch.randn(args.n, args.c, device=dev).bfloat16().requires_grad_()
    t = torch.randint(0, args.v, (args.n,), device=dev)
    scale = 1.0 / args.n  # as forward_backward scales the summed loss
    # fp32 reference in chunks (exact gradients of the fp32 loss of the same bf16 inputs)
    hf = h.detach().float().requires_grad_()
    ref = sum(checkpoint(lambda a, b: F.cross_entropy(a @ w.T, b, reduction="sum"), hf[i:i + args.chunk],
                         t[i:i + args.chunk], use_reentrant=False) for i in range(0, args.n, args.chunk))
    (ref * scale).backward()
    ref_h, ref_w = hf.grad.clone(), w.grad.clone()
    print(f"shape: N {args.n}, C {args.c}, V {args.v}, chunk {args.chunk}; {torch.cuda.get_device_name()}")
    fns = {"old": (old, torch.compile(old_chunk_ce, dynamic=True)),
           "new": (new, torch.compile(Transformer._chunk_ce, dynamic=True))}
    for name, (fn, ce) in list(fns.items()) * 2:  # twice, interleaved: the second round is the timed one
        h.grad, w.grad = None, None
        loss = fn(h, w, t, args.chunk, ce)
        (loss * scale).backward()
        rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
        errs = (abs(loss.item() - ref.item()) / ref.item(), rel(h.grad, ref_h), rel(w.grad, ref_w))
        h.grad, w.grad = None, None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        for _ in range(args.iters):
            h.grad, w.grad = None, None
            (fn(h, w, t, args.chunk, ce) * scale).backward()
        torch.cuda.synchronize()
        ms = (time.time() - t0) / args.iters * 1e3
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        print(f"{name}: {ms:6.2f} ms fwd+bwd | peak +{peak:.2f} GiB | rel err vs fp32: loss {errs[0]:.1e}, "
              f"grad h {errs[1]:.1e}, grad w {errs[2]:.1e}", flush=True)


if __name__ == "__main__":
    main()
