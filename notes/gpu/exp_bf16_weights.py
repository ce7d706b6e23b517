"""Experiment for the training-speed issue (not part of the tool): what would bf16 working weights with fp32 master
weights in the optimizer buy over today's fp32 weights under bf16 autocast?

Today autocast casts every fp32 weight to bf16 at each use (9% of GPU time in the profile) and keeps the bf16 copy
for the backward. The alternative keeps the model in bf16 (no casts, bf16 gradients) and an fp32 master copy that
the optimizer steps, copied back into the model after each step. Both run the same packed GSM8K batches from the same
random weights at the 0.5B shape with compiled blocks; the script prints step time, tokens/s, peak memory, and the
two loss curves (they should stay within bf16 noise of each other).

    python notes/gpu/exp_bf16_weights.py                 # on the GPU machine, random weights, 0.5B shape
    python notes/gpu/exp_bf16_weights.py --tiny --steps 4   # a CPU smoke run of the script itself
"""
import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import bench  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402
from model import setup_numerics  # noqa: E402


def run(variant, args, folder, cuda):
    device, ctx, scaler, _ = setup_numerics("cuda" if cuda else "cpu", "bfloat16" if cuda else "float32")
    cfg = train.Config(init_from=folder, datasets="gsm8k", prompt_format="chat", seq_len=args.seq_len,
                       batch_size=args.batch_size, lr=1e-5, weight_decay=0.0, beta2=0.95, compile=cuda,
                       grad_checkpointing=args.grad_checkpointing, eval_samples=0)
    torch.manual_seed(0)
    model, tok, _ = train.build_model(cfg, device, "bfloat16")
    ds, _ = data.build_datasets(cfg.datasets, tok, cfg.seq_len, cfg.prompt_format, True, cfg.seed, val_size=200)
    model.grad_checkpointing = cfg.grad_checkpointing
    masters = None
    if variant == "bf16 weights + fp32 master":
        model.to(torch.bfloat16)
        ctx = nullcontext()  # nothing to cast: the weights already are bf16
        params = [p for p in model.parameters() if p.requires_grad]
        masters = [p.detach().float().requires_grad_() for p in params]
        opt = torch.optim.AdamW([{"params": [m for m in masters if m.dim() >= 2], "weight_decay": 0.0},
                                 {"params": [m for m in masters if m.dim() < 2], "weight_decay": 0.0}],
                                lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=cuda)
    else:
        opt, params = train.make_optimizer(model, cfg, device)
    if cuda:
        model.compile_blocks()
        torch.cuda.reset_peak_memory_stats()
    losses, times, toks = [], [], 0
    for step in range(args.steps):
        b = [ds.batch(step * cfg.batch_size, cfg.batch_size)]
        bench.sync()
        t0 = time.time()
        loss, _ = train.forward_backward(model, b, ctx, scaler, device)
        if masters is None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        else:
            for p, m in zip(params, masters):
                m.grad = p.grad.float()
                p.grad = None
            torch.nn.utils.clip_grad_norm_(masters, 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bench.sync()
        if step >= args.warmup:
            times.append(time.time() - t0)
            toks += ds.real_tokens(step * cfg.batch_size, cfg.batch_size)
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    dt = sum(times)
    print(f"{variant:28s} | {dt / max(1, len(times)) * 1e3:7.1f} ms/step | {toks / max(dt, 1e-9) / 1e3:6.1f}k real "
          f"tokens/s | peak {mem:5.1f} GiB | losses {' '.join(f'{x:.4f}' for x in losses[::max(1, len(losses) // 6)])}")
    del model, opt, masters
    if cuda:
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed (compilation)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--grad-checkpointing", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a 2-block model (CPU smoke run)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if args.tiny:
        bench.SHAPES["0.5b"] = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96)
        args.warmup = min(args.warmup, args.steps - 1)
    print(bench.machine())
    print(f"settings: 0.5B shape{' (tiny)' if args.tiny else ''}, random weights, packed GSM8K rows of {args.seq_len}, "
          f"batch {args.batch_size}, grad_checkpointing {args.grad_checkpointing}, {args.steps} steps "
          f"({args.warmup} untimed)")
    with tempfile.TemporaryDirectory() as tmp:
        bench.get_model("0.5b", "cuda" if cuda else "cpu", torch.bfloat16, tmp)
        for variant in ("fp32 weights + autocast", "bf16 weights + fp32 master"):
            run(variant, args, tmp, cuda)


if __name__ == "__main__":
    main()
