"""Experiment for the multi-GPU issue (not part of the tool): where does a DDP step lose time against one GPU, and
do DDP's own knobs win it back? train.py's step (forward_backward + apply_update, compiled blocks, packed GSM8K rows
of 1024, 0.5B shape with random weights) under DDP as train.py wraps it, plus variants, timed over a window of steps
on every rank; then a torch.profiler trace of 3 steps on rank 0: GPU busy time, NCCL time, the top kernels.

    torchrun --nproc_per_node=2 notes/gpu/exp_ddp.py --batch-size 16 default static bucket100 bucket10
    python notes/gpu/exp_ddp.py --batch-size 16 default        # one GPU: the reference (no DDP)
    torchrun --nproc_per_node=2 notes/gpu/exp_ddp.py --tiny --steps 3 --warmup 1 default static   # CPU smoke run

Variants: default (train.py's DDP: gradient_as_bucket_view), static (static_graph=True), bucketN (bucket_cap_mb=N),
bf16hook (gradients all-reduced in bf16 by DDP's bf16_compress_hook), old (default as it was before 2026-11-22:
the BlockMask from create_block_mask's vmap, batches copied from pageable memory, which made the host wait).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import bench  # noqa: E402
import data  # noqa: E402
import model as model_module  # noqa: E402
import train  # noqa: E402
from model import setup_numerics  # noqa: E402


def old_mask(doc):
    """The BlockMask as model.py built it before 2026-11-22: create_block_mask's vmap over the mask function."""
    from torch.nn.attention.flex_attention import create_block_mask
    B, T = doc.shape
    return create_block_mask(lambda b, h, q, k: (doc[b, q] == doc[b, k]) & (k <= q), B, None, T, T, device=doc.device)


def run(variant, args, folder, rank, world, local, cuda):
    if variant == "old":  # the step before 2026-11-22: vmap-built mask, batches copied from pageable memory
        saved = model_module.doc_block_mask, torch.Tensor.pin_memory
        model_module.doc_block_mask, torch.Tensor.pin_memory = old_mask, lambda self, *a, **k: self
        try:
            return run_("default", args, folder, rank, world, local, cuda, label="old")
        finally:
            model_module.doc_block_mask, torch.Tensor.pin_memory = saved
    return run_(variant, args, folder, rank, world, local, cuda)


def run_(variant, args, folder, rank, world, local, cuda, label=None):
    device, ctx, scaler, _ = setup_numerics(f"cuda:{local}" if cuda else "cpu", "bfloat16" if cuda else "float32")
    cfg = train.Config(init_from=folder, datasets="gsm8k", prompt_format="chat", seq_len=args.seq_len,
                       batch_size=args.batch_size, lr=1e-5, weight_decay=0.0, beta2=0.95, compile=cuda, eval_samples=0)
    torch.manual_seed(0)
    model, tok, _ = train.build_model(cfg, device, "bfloat16")
    ds, _ = data.build_datasets(cfg.datasets, tok, cfg.seq_len, cfg.prompt_format, True, cfg.seed, val_size=200)
    if cuda:
        model.compile_blocks()
    opt, params = train.make_optimizer(model, cfg)
    if world > 1:
        kw = {"gradient_as_bucket_view": True}
        if variant == "static":
            kw["static_graph"] = True
        elif variant.startswith("bucket"):
            kw["bucket_cap_mb"] = int(variant[6:])
        model = DDP(model, device_ids=[local] if cuda else None, **kw)
        if variant == "bf16hook":  # PyTorch's own hook: all-reduce the gradients in bf16, half the bytes
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = args.batch_size * world

    def step(s):
        b = [ds.batch(s * rows + rank * args.batch_size, args.batch_size)]
        loss, _ = train.forward_backward(model, b, ctx, scaler, device, world, ds.supervised_tokens(s * rows, rows))
        return train.apply_update(opt, params, loss, 1.0, scaler)

    toks = 0
    for s in range(args.steps):
        if s == args.warmup:
            bench.sync()
            t0 = time.time()
        values = step(s)
        if s >= args.warmup:
            toks += ds.real_tokens(s * rows, rows)
    bench.sync()
    dt = time.time() - t0
    loss = values[0].item()
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    if rank == 0:
        print(f"{label or variant:10s} | {world} x batch {args.batch_size} | {dt / (args.steps - args.warmup) * 1e3:6.1f} ms/step | "
              f"{toks / dt / 1e3:6.1f}k real tokens/s (all ranks) | peak {mem:5.1f} GiB | loss at step {args.steps} "
              f"{loss:.4f}", flush=True)
    if args.profile and cuda:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            bench.sync()
            t0 = time.time()
            for s in range(args.steps, args.steps + 3):
                step(s)
            bench.sync()
            wall = time.time() - t0
        if rank == 0:
            ev = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.self_device_time_total for e in ev) / 1e3
            nccl = sum(e.self_device_time_total for e in ev if "nccl" in e.key.lower()) / 1e3
            print(f"{label or variant:10s} | profile of 3 steps: wall {wall * 1e3:.0f} ms (profiler on), kernels {busy:.0f} ms "
                  f"of which NCCL {nccl:.0f} ms (NCCL overlaps compute on its own stream)", flush=True)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60),
                  flush=True)
            if args.trace:
                path = os.path.join(args.trace, f"trace_{label or variant}_{world}.json")
                prof.export_chrome_trace(path)
                os.system(f"gzip -f {path}")
    del model, opt
    if cuda:
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="default, static, bucketN")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="rows per GPU")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--profile", action="store_true", help="profile 3 more steps of each variant on rank 0")
    ap.add_argument("--trace", default="", help="with --profile: write rank 0's chrome trace into this folder")
    ap.add_argument("--tiny", action="store_true", help="a 2-block model (CPU smoke run)")
    args = ap.parse_args()
    for v in args.variants:
        if not (v in ("default", "static", "bf16hook", "old") or (v.startswith("bucket") and v[6:].isdigit())):
            sys.exit(f"unknown variant {v!r}: default, old, static, bf16hook or bucketN")
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    cuda = torch.cuda.is_available()
    if world > 1:
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    if args.tiny:
        bench.SHAPES["0.5b"] = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96)
        args.warmup = min(args.warmup, args.steps - 1)
    if rank == 0:
        print(bench.machine())
        print(f"settings: 0.5B shape{' (tiny)' if args.tiny else ''}, random weights, packed GSM8K rows of "
              f"{args.seq_len}, {world} process(es) x batch {args.batch_size}, {args.steps} steps ({args.warmup} "
              f"untimed)", flush=True)
    # every rank loads the same weights, written once by rank 0 (to a folder all ranks can read: one host)
    folder = os.path.join(tempfile.gettempdir(), f"exp_ddp_{os.environ.get('TORCHELASTIC_RUN_ID', os.getpid())}")
    if rank == 0:
        bench.get_model("0.5b", f"cuda:{local}" if cuda else "cpu", torch.bfloat16, folder)
    if world > 1:
        dist.barrier()
    for v in args.variants:
        run(v, args, folder, rank, world, local, cuda)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
