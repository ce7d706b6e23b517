"""Experiment for the training-speed issue (not part of the tool): which changes to the training step buy speed or
memory, measured in one run on the same packed GSM8K batches from the same random weights at the 0.5B shape.

A variant is a set of features on top of today's step (fp32 weights under bf16 autocast, compiled blocks with flex
attention, eager chunked loss, one host sync per step for the non-finite guard):
    master   bf16 weights, no autocast, an fp32 master copy stepped by AdamW and copied back (no per-use casts)
    ce       the chunked loss's (n, V) cross-entropy compiled (fused upcast, log-softmax, gather; and their backward)
    nosync   no host sync in the step: the guard's decision goes to fused AdamW as found_inf (it skips the update
             on the GPU) and the loss / grad norm are read one step late, from pinned memory after an event
    cg       the blocks compiled with mode="reduce-overhead" (CUDA graphs: no per-kernel launch cost)
    cpp      Inductor's C++ wrapper (cheaper launches than its Python wrapper)
    bs16     16 rows per step instead of 8
    ckptN    the first N of the 24 blocks recomputed in backward (ckpt16: 16 of them)
    mbN      torch._functorch.config.activation_memory_budget = N/100: the compiled blocks' partitioner recomputes
             cheap ops (not whole blocks) in backward to keep that fraction of the activations
Each variant runs in its own process (clean compile caches and memory) and prints ms/step, real tokens/s, peak
memory and its loss curve (curves of variants with the same batch must agree within bf16 noise).

    python notes/gpu/exp_train_speed.py base ce master,ce nosync,master,ce ...    # on the GPU machine
    python notes/gpu/exp_train_speed.py --tiny --steps 4 base master,nosync       # a CPU smoke run of the script
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import bench  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402
from model import setup_numerics  # noqa: E402

FEATURES = {"base", "master", "ce", "nosync", "cg", "cpp", "bs16"}


def known(f):
    return f in FEATURES or (f[:4] == "ckpt" and f[4:].isdigit()) or (f[:2] == "mb" and f[2:].isdigit())


def run(feats, args, folder):
    cuda = torch.cuda.is_available()
    if "cpp" in feats:
        import torch._inductor.config as ic
        ic.cpp_wrapper = True
    budget = min([int(f[2:]) / 100 for f in feats if f.startswith("mb")] or [1.0])
    device, ctx, scaler, _ = setup_numerics("cuda" if cuda else "cpu", "bfloat16" if cuda else "float32")
    bs = 16 if "bs16" in feats else args.batch_size
    cfg = train.Config(init_from=folder, datasets="gsm8k", prompt_format="chat", seq_len=args.seq_len,
                       batch_size=bs, lr=1e-5, weight_decay=0.0, beta2=0.95, compile=cuda, eval_samples=0)
    torch.manual_seed(0)
    t0 = time.time()
    model, tok, _ = train.build_model(cfg, device, "bfloat16")
    ds, _ = data.build_datasets(cfg.datasets, tok, cfg.seq_len, cfg.prompt_format, True, cfg.seed, val_size=200)
    model.grad_checkpointing = max([int(f[4:]) for f in feats if f.startswith("ckpt")] or [0])
    masters = None
    if "master" in feats:
        model.to(torch.bfloat16 if cuda else torch.float32)
        ctx = nullcontext()  # nothing to cast: the weights already are in the compute dtype
        params = [p for p in model.parameters() if p.requires_grad]
        masters = [p.detach().float().requires_grad_() for p in params]
        opt = torch.optim.AdamW([{"params": masters, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                fused=True)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": params, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                fused=True)
    if cuda:
        model.compile_blocks(activation_budget=budget)  # compiles the loss's cross-entropy too: "ce" keeps it
        if "cg" in feats:
            model.compiled_blocks = [torch.compile(b, dynamic=False, mode="reduce-overhead") for b in model.layers]
    if "ce" not in feats:
        model.chunk_ce = model._chunk_ce
    elif not cuda:
        model.chunk_ce = torch.compile(model._chunk_ce, dynamic=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    pinned = torch.empty(2, pin_memory=cuda)  # nosync: last step's loss and grad norm land here
    ev, pending = None, None
    losses, t_first, t_steady, toks = [], None, None, 0
    for step in range(args.steps):
        if step == args.warmup:
            bench.sync()
            t_steady = time.time()
        if "cg" in feats:
            torch.compiler.cudagraph_mark_step_begin()
        b = [ds.batch(step * bs, bs)]
        loss, _ = train.forward_backward(model, b, ctx, scaler, device)
        if masters is not None:
            for p, m in zip(params, masters):
                m.grad = p.grad.float()
                p.grad = None
        gnorm = torch.nn.utils.clip_grad_norm_(masters or params, 1.0)
        if "nosync" in feats:
            # skip the update on the GPU when loss or norm is not finite; read both next step (no stall now)
            opt.found_inf = (~(torch.isfinite(loss) & torch.isfinite(gnorm))).float()
            opt.step()
            if ev is not None:
                ev.synchronize()
                losses.append(pinned[0].item())
            pinned.copy_(torch.stack([loss.detach().float(), gnorm.float()]), non_blocking=True)
            ev = torch.cuda.Event() if cuda else None
            if ev is not None:
                ev.record()
            else:
                losses.append(pinned[0].item())
        else:
            loss_v, gnorm_v = loss.item(), gnorm.item()  # train.py's guard: one host sync per step
            losses.append(loss_v)
            opt.step()
        if masters is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
        opt.zero_grad(set_to_none=True)
        if step == 0:
            bench.sync()
            t_first = time.time() - t0
        if step >= args.warmup:
            toks += ds.real_tokens(step * bs, bs)
    bench.sync()
    if ev is not None:
        losses.append(pinned[0].item())
    dt = time.time() - t_steady
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    n = args.steps - args.warmup
    print(f"{','.join(sorted(feats)):28s} | batch {bs:2d} | {dt / n * 1e3:6.1f} ms/step | {toks / dt / 1e3:6.1f}k real "
          f"tokens/s | peak {mem:5.1f} GiB | first step {t_first:5.1f} s | losses "
          f"{' '.join(f'{x:.4f}' for x in losses[::max(1, len(losses) // 6)])}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="comma-separated features each, e.g. base master,ce")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10, help="steps not timed (compilation, CUDA-graph recording)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--tiny", action="store_true", help="a 2-block model (CPU smoke run)")
    ap.add_argument("--folder", help=argparse.SUPPRESS)  # set for the child processes
    args = ap.parse_args()
    for v in args.variants:
        if not all(known(f) for f in v.split(",")):
            sys.exit(f"unknown feature in {v!r}; features: {sorted(FEATURES)}")
    if args.tiny:
        bench.SHAPES["0.5b"] = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96)
        args.warmup = min(args.warmup, args.steps - 1)
    if args.folder:  # a child: one variant
        run(set(args.variants[0].split(",")), args, args.folder)
        return
    cuda = torch.cuda.is_available()
    print(bench.machine())
    print(f"settings: 0.5B shape{' (tiny)' if args.tiny else ''}, random weights, packed GSM8K rows of {args.seq_len}, "
          f"batch {args.batch_size} unless bs16, {args.steps} steps ({args.warmup} untimed)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bench.get_model("0.5b", "cuda" if cuda else "cpu", torch.bfloat16, tmp)
        torch.cuda.empty_cache() if cuda else None
        for v in args.variants:
            cmd = [sys.executable, os.path.abspath(__file__), v, "--folder", tmp, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
            r = subprocess.run(cmd + (["--tiny"] if args.tiny else []), capture_output=True, text=True)
            if r.returncode:
                print(f"{v:28s} | failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}", flush=True)
            else:
                print(r.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
