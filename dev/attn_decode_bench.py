"""
The decode step's attention alone, at the real shapes: what the engine does now against flex decoding with a
per-row block mask, before either goes into model.py. One decode step attends each slot's one new query (14
query heads sharing 2 kv heads) over its own cached positions; the cache is static (B, 2, L, 64) per layer and
rows are filled to different lengths.

  python dev/attn_decode_bench.py                      # GPU: 0.5B shape, B 64,256,512, L 832, bf16
  python dev/attn_decode_bench.py --device cpu --slots 4 --max-len 256 --iters 2     # CPU: correctness only

  sdpa   the engine's path: query heads folded into the query axis, (B, 2, 7, 64), an additive mask (B, 1, 7, L)
         over every slot, the memory-efficient SDPA kernel: reads all L positions of every row
  flashv the flash kernel's variable-length form on a cache laid out (B, L, nkv, hd): each row reads only its own
         pos + 1 positions (seqused_k), query heads grouped by the kernel itself (no mask, no fold)
  flashp flashv with the 7 query heads of a kv head packed as 7 query rows of one sequence (not causal): each row's
         keys and values are read once per kv head rather than once per query head (the engine's path)
  triN   decode_attention.py: split-KV decoding in Triton, each program one row, one kv head and N (128,
         256, 512) positions, all 7 query heads of the kv head in one tile; a second kernel combines the splits
  flex   (--flex) flex_attention (compiled; on CUDA its split-KV decoding kernel) with a BlockMask built from the rows'
         lengths by tensor ops (no host sync, so a CUDA graph can hold it): full blocks unmasked, the row's last
         block masked by kv <= pos, blocks past it never read

Prints per layer call: microseconds, the bytes each variant must read (the whole cache, or the filled part), the
bandwidth bound for those bytes, and the largest difference from sdpa's output (fp32 reference on CPU).
"""
import argparse
import functools
import inspect
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root


def sdpa_decode(q, k, v, pos):
    """The engine's attention: q (B, nh, 1, hd), cache k, v (B, nkv, L, hd), pos (B,) the query's slot."""
    B, nh, _, hd = q.shape
    nkv, L = k.shape[1], k.shape[2]
    rep = nh // nkv
    keep = torch.arange(L, device=q.device) <= pos[:, None]  # (B, L)
    mask = torch.zeros(B, 1, 1, L, dtype=q.dtype, device=q.device).masked_fill_(~keep[:, None, None], float("-inf"))
    mask = mask.repeat(1, 1, rep, 1)  # (B, 1, rep, L)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        y = F.scaled_dot_product_attention(q.reshape(B, nkv, rep, hd), k, v, attn_mask=mask)
    return y.reshape(B, nh, 1, hd)


def row_block_mask(pos, L, block):
    """A BlockMask for one query per row at slot pos (B,): blocks wholly <= pos are full (no mask_mod), the
    block holding pos is partial (kv <= pos), later blocks are skipped. Tensor ops only."""
    B, n = pos.shape[0], L // block
    idx = torch.arange(n, device=pos.device, dtype=torch.int32)
    full = ((pos + 1) // block).to(torch.int32)  # (B,) blocks before the one that holds pos (or all, if it ends one)
    partial = ((pos + 1) % block != 0).to(torch.int32)  # (B,) 1 if pos's block is cut
    full_idx = idx.expand(B, n).contiguous()  # (B, n): full blocks first, in order
    part_idx = torch.where(idx[None] == 0, full[:, None], idx[None] + n).clamp(max=n - 1).to(torch.int32)  # first slot
    kw = {"compute_q_blocks": False} if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters \
        else {}

    def mask_mod(b, h, q, kv):
        return kv <= pos[b]
    return BlockMask.from_kv_blocks(partial[:, None, None], part_idx[:, None, None], full[:, None, None],
                                    full_idx[:, None, None], BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(1, L), **kw)


def flash_decode(q, k_bl, v_bl, pos):
    """q (B, nh, 1, hd); cache k_bl, v_bl (B, L, nkv, hd) (the layout this variant needs); pos (B,)."""
    B, nh, _, hd = q.shape
    L, nkv = k_bl.shape[1], k_bl.shape[2]
    cu_q = torch.arange(B + 1, device=q.device, dtype=torch.int32)
    cu_k = cu_q * L
    out = torch.ops.aten._flash_attention_forward(
        q.reshape(B, nh, hd), k_bl.view(B * L, nkv, hd), v_bl.view(B * L, nkv, hd), cu_q, cu_k, 1, L, 0.0, False,
        False, seqused_k=(pos + 1).to(torch.int32))[0]  # (B, nh, hd)
    return out.view(B, nh, 1, hd)


def flash_packed(q, k_bl, v_bl, pos):
    """flash_decode with the query heads of a kv head as the query rows of one sequence (the engine's form):
    (B, nh, 1, hd) -> (B*rep, nkv, hd), cu_q = rep * b, not causal; each kv head is read once for its rep heads."""
    B, nh, _, hd = q.shape
    L, nkv = k_bl.shape[1], k_bl.shape[2]
    rep = nh // nkv
    cu = torch.arange(B + 1, device=q.device, dtype=torch.int32)
    qp = q.reshape(B, nkv, rep, hd).transpose(1, 2).reshape(B * rep, nkv, hd)
    out = torch.ops.aten._flash_attention_forward(
        qp, k_bl.view(B * L, nkv, hd), v_bl.view(B * L, nkv, hd), cu * rep, cu * L, rep, L, 0.0, False,
        False, seqused_k=(pos + 1).to(torch.int32))[0]  # (B*rep, nkv, hd)
    return out.view(B, rep, nkv, hd).transpose(1, 2).reshape(B, nh, 1, hd)


def triton_decode(q, k_bl, v_bl, pos, split=256):
    """decode_attention.py: split-KV decoding, each program one row, one kv head, `split` positions."""
    from decode_attention import decode_attention  # the engine's kernel (needs triton: CUDA builds have it)
    B, nh, _, hd = q.shape
    return decode_attention(q.reshape(B, nh, hd), k_bl, v_bl, (pos + 1).to(torch.int32),
                            split=split).view(B, nh, 1, hd)


def flex_decode(q, k, v, pos, block=128):
    return flex_attention(q, k, v, block_mask=row_block_mask(pos, k.shape[2], block), enable_gqa=True)


def timed(fn, iters, cuda):
    fn()  # compile / warm up
    if cuda:
        torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(iters):
        out = fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.time() - t0) / iters, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--slots", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256, 512])
    ap.add_argument("--max-len", type=int, default=832, help="cache positions per slot (a multiple of 128)")
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--flex", action="store_true", help="also flex decoding (slow and wrong on torch 2.11)")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    L, hd = args.max_len, args.head_dim
    flex = torch.compile(flex_decode, dynamic=False) if cuda else flex_decode
    bw = None
    if cuda:
        x = torch.empty(2**30, dtype=torch.uint8, device=args.device)
        y = torch.empty_like(x)
        t, _ = timed(lambda: y.copy_(x), 20, True)
        bw = 2 * x.numel() / t  # bytes read + written per second
        del x, y
        print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw / 1e12:.2f} TB/s")
    print(f"shape: {args.heads} query heads, {args.kv_heads} kv heads, head dim {hd}, {L} cache positions, {dtype}")
    print(f"{'slots':>6} {'variant':>8} {'us/call':>9} {'GB read':>8} {'bound us':>9} {'max |diff|':>11}")
    g = torch.Generator(device="cpu").manual_seed(0)
    for B in args.slots:
        q = torch.randn(B, args.heads, 1, hd, generator=g).to(args.device, dtype)
        k = torch.randn(B, args.kv_heads, L, hd, generator=g).to(args.device, dtype)
        v = torch.randn(B, args.kv_heads, L, hd, generator=g).to(args.device, dtype)
        pos = torch.randint(L // 4, L, (B,), generator=g).to(args.device)  # rows filled to different lengths
        pos[0] = L - 1  # a full row, and one that ends a block exactly
        if B > 1:
            pos[1] = 127
        per_pos = 2 * args.kv_heads * hd * dtype.itemsize  # k and v bytes per position of a row
        ref = sdpa_decode(q.float(), k.float(), v.float(), pos)
        k_bl, v_bl = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        filled = int((pos + 1).sum()) * per_pos
        for name, fn, need in (("sdpa", sdpa_decode, B * L * per_pos), ("flashv", flash_decode, filled),
                               ("flashp", flash_packed, filled),
                               *((f"tri{sp}", functools.partial(triton_decode, split=sp), filled)
                                 for sp in (128, 256, 512)),
                               ("flex", flex, filled)):
            if name.startswith("flash") and not cuda or name == "flex" and not args.flex:
                continue
            kk, vv = (k_bl, v_bl) if name.startswith(("flash", "tri")) else (k, v)
            try:
                t, out = timed(lambda: fn(q, kk, vv, pos), args.iters, cuda)
            except Exception as e:  # an op this build lacks: say so, measure the others
                print(f"{B:>6} {name:>8} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
                continue
            diff = (out.float() - ref).abs().max().item()
            bound = f"{need / bw * 1e6:>9.1f}" if bw else f"{'-':>9}"
            print(f"{B:>6} {name:>8} {t * 1e6:>9.1f} {need / 1e9:>8.3f} {bound} {diff:>11.2e}", flush=True)


if __name__ == "__main__":
    main()
