"""
The engine's decode-step attention on a GPU: split-KV decoding in Triton over the KV cache, one query token per
row, with the cache write fused in. model.cache_attention calls it for the one-token step when Triton is there
(torch's CUDA builds ship it); without it, the flash kernel's variable-length form.

Why not the flash kernel: its variable-length form takes time that follows the longest row, not the bytes it
reads (~120 us a layer call at 832 positions for 64 or 512 slots alike, 3.7-7.5x the bandwidth bound on an
H200; dev/README.md). Here each program owns one row, one kv head and one split of SPLIT positions: it reads
that split's keys and values once for all `rep` query heads of the kv head (a (16, hd) x (hd, BLOCK_N) dot; rows
past rep are padding), stops at the row's filled length, and writes a partial output with its log-sum-exp. A
second kernel combines a row's splits (cf. flash-decoding, Dao et al. 2023). Programs = B x nkv x ceil(L /
SPLIT), so a small batch still fills the GPU, and a short row costs only its own positions. The new token's
key and value are stored by the program whose split holds them, which attends to them from registers: no
index_put kernels and no transposed copies of q, k and v (~5 of a layer's ~21 kernels a decode step).
Measured in the engine on an H200 (0.5B shape, 512 new tokens, `bench.py gen`): 35.6k / 101.1k / 139.2k new
tokens/s at 64 / 256 / 512 slots against 29.2k / 82.8k / 115.4k with the flash kernel.

  q (B, nh, hd); k_buf, v_buf (B, L, nkv, hd) (the engine's cache of one layer); used (B,) int32 filled positions
  -> (B, nh, hd) in q's dtype.

Tested on the CPU with Triton's interpreter (TRITON_INTERPRET=1; tests/test_decode_attention.py).
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _partial(q_ptr, k_ptr, v_ptr, used_ptr, o_ptr, lse_ptr, scale,
             sq_b, sq_h, sk_b, sk_l, sk_h, n_split,
             kn_ptr, vn_ptr, skn_b, skn_h, svn_b, svn_h,
             REP: tl.constexpr, REP_P: tl.constexpr, HD: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
             APPEND: tl.constexpr):
    b, g, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_used = tl.load(used_ptr + b)
    start = s * SPLIT
    d = tl.arange(0, HD)
    if APPEND:  # the new token's key and value go to position n_used - 1; the split that holds it writes them
        last = n_used - 1
        k_new = tl.load(kn_ptr + b * skn_b + g * skn_h + d)  # (HD,)
        v_new = tl.load(vn_ptr + b * svn_b + g * svn_h + d)
        if (last >= start) & (last < start + SPLIT):
            at = b.to(tl.int64) * sk_b + last * sk_l + g * sk_h + d
            tl.store(k_ptr + at, k_new.to(k_ptr.dtype.element_ty))
            tl.store(v_ptr + at, v_new.to(v_ptr.dtype.element_ty))
    end = tl.minimum(start + SPLIT, n_used)
    r = tl.arange(0, REP_P)  # query heads g*REP .. g*REP + REP - 1 of this kv head, padded to REP_P rows
    q = tl.load(q_ptr + b * sq_b + (g * REP + r)[:, None] * sq_h + d[None, :], mask=r[:, None] < REP, other=0.0)
    m_i = tl.full([REP_P], float("-inf"), tl.float32)
    l_i = tl.zeros([REP_P], tl.float32)
    acc = tl.zeros([REP_P, HD], tl.float32)
    kv_base = b.to(tl.int64) * sk_b + g * sk_h  # a large cache passes 2^31 elements
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        live = n < end
        k = tl.load(k_ptr + kv_base + n[:, None] * sk_l + d[None, :], mask=live[:, None], other=0.0)  # (BLOCK_N, HD)
        if APPEND:  # the position written above, from registers (this program's store need not be visible yet)
            k = tl.where(n[:, None] == last, k_new[None, :].to(k.dtype), k)
        sc = tl.dot(q, tl.trans(k)) * scale  # (REP_P, BLOCK_N) fp32
        sc = tl.where(live[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, 1))  # finite: every tile of the loop holds one live position at least
        p = tl.exp(sc - m_new[:, None])
        alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_base + n[:, None] * sk_l + d[None, :], mask=live[:, None], other=0.0)  # (BLOCK_N, HD)
        if APPEND:
            v = tl.where(n[:, None] == last, v_new[None, :].to(v.dtype), v)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # a split past the row's end read nothing: weight 0 in the combine (lse = -inf, output 0)
    has = l_i > 0
    out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    row = (b * tl.num_programs(1) + g) * n_split + s  # o (B, nkv, n_split, REP_P, HD), lse (B, nkv, n_split, REP_P)
    tl.store(o_ptr + (row * REP_P + r)[:, None] * HD + d[None, :], out)
    tl.store(lse_ptr + row * REP_P + r, lse)


@triton.jit
def _combine(o_ptr, lse_ptr, y_ptr, n_split, sy_b, sy_h,
             REP: tl.constexpr, REP_P: tl.constexpr, HD: tl.constexpr, S_P: tl.constexpr):
    b, g = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, S_P)
    r = tl.arange(0, REP_P)
    d = tl.arange(0, HD)
    row = (b * tl.num_programs(1) + g) * n_split + s  # (S_P,)
    ok = s < n_split
    lse = tl.load(lse_ptr + row[:, None] * REP_P + r[None, :], mask=ok[:, None], other=float("-inf"))  # (S_P, REP_P)
    m = tl.max(lse, 0)  # (REP_P,): finite, split 0 always holds position 0 (a row has >= 1 filled position)
    w = tl.exp(lse - m[None, :])  # (S_P, REP_P)
    w = w / tl.sum(w, 0)[None, :]
    o = tl.load(o_ptr + (row[:, None, None] * REP_P + r[None, :, None]) * HD + d[None, None, :],
                mask=ok[:, None, None], other=0.0)  # (S_P, REP_P, HD)
    y = tl.sum(o * w[:, :, None], 0)  # (REP_P, HD)
    tl.store(y_ptr + b * sy_b + (g * REP + r)[:, None] * sy_h + d[None, :], y.to(y_ptr.dtype.element_ty),
             mask=r[:, None] < REP)


def decode_attention(q, k_buf, v_buf, used, split=256, block_n=64, num_warps=4, k_new=None, v_new=None):
    """q (B, nh, hd) (any strides, the last 1), k_buf / v_buf (B, L, nkv, hd), used (B,) int32 (each >= 1) ->
    (B, nh, hd). With k_new, v_new (B, nkv, hd): first the new token's key and value are written at position
    used - 1 of each row (the engine's cache write, fused: no index_put, no transposed copies)."""
    B, nh, hd = q.shape
    L, nkv = k_buf.shape[1], k_buf.shape[2]
    rep = nh // nkv
    rep_p = max(16, triton.next_power_of_2(rep))  # tl.dot wants 16 rows at least
    n_split = math.ceil(L / split)
    assert q.stride(-1) == 1 and k_buf.stride(-1) == 1 and v_buf.stride() == k_buf.stride()
    append = k_new is not None
    kn, vn = (k_new, v_new) if append else (q, q)  # unused without APPEND
    assert kn.stride(-1) == 1 and vn.stride(-1) == 1
    o = torch.empty(B, nkv, n_split, rep_p, hd, device=q.device, dtype=torch.float32)
    lse = torch.empty(B, nkv, n_split, rep_p, device=q.device, dtype=torch.float32)
    _partial[(B, nkv, n_split)](q, k_buf, v_buf, used, o, lse, 1.0 / math.sqrt(hd),
                                q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), k_buf.stride(2), n_split,
                                kn, vn, kn.stride(0), kn.stride(1), vn.stride(0), vn.stride(1),
                                REP=rep, REP_P=rep_p, HD=hd, BLOCK_N=block_n, SPLIT=split, APPEND=append,
                                num_warps=num_warps)
    y = torch.empty(B, nh, hd, device=q.device, dtype=q.dtype)
    _combine[(B, nkv)](o, lse, y, n_split, y.stride(0), y.stride(1), REP=rep, REP_P=rep_p, HD=hd,
                       S_P=triton.next_power_of_2(n_split), num_warps=num_warps)
    return y
