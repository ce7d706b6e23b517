"""
A candidate for the decode step's attention (issue 21), not used by the engine yet: split-KV decoding in Triton
over the engine's cache layout, for one query token per row. Measured against the flash kernel by
`dev/attn_decode_bench.py` (variant `triton`); it goes into model.py only if it wins there.

Why: the flash kernel's variable-length form takes time that follows the longest row, not the bytes it reads
(120 us a layer call at 832 positions for 64 or 512 slots alike, 3.7-7.5x the bandwidth bound; dev/README.md,
fifth session). Here each program owns one row, one kv head and one split of SPLIT positions: it reads that
split's keys and values once for all `rep` query heads of the kv head (a (16, hd) x (hd, BLOCK_N) dot; rows past
rep are padding), stops at the row's filled length, and writes a partial output with its log-sum-exp. A second
kernel combines a row's splits (cf. flash-decoding, Dao et al. 2023). Programs = B x nkv x ceil(L / SPLIT), so a
small batch still fills the GPU, and a short row costs only its own positions.

  q (B, nh, hd); k_buf, v_buf (B, L, nkv, hd) (the engine's cache of one layer); used (B,) int32 filled positions
  -> (B, nh, hd) in q's dtype. With k_new, v_new the kernel first writes the new token's key and value at
  position used - 1 (the engine's cache write fused in: the index_put kernels and the transposed copies of q, k
  and v that the flash path needs go, ~5 of a layer's ~21 kernels a decode step).

CPU check (Triton's interpreter; `pip install triton`): TRITON_INTERPRET=1 python dev/decode_attn_triton.py
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _partial(q_ptr, k_ptr, v_ptr, used_ptr, o_ptr, lse_ptr, scale,
             sq_b, sq_h, sk_b, sk_l, sk_h, n_split,
             kn_ptr, vn_ptr, sn_b, sn_h,
             REP: tl.constexpr, REP_P: tl.constexpr, HD: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
             APPEND: tl.constexpr):
    b, g, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_used = tl.load(used_ptr + b)
    start = s * SPLIT
    d = tl.arange(0, HD)
    if APPEND:  # the new token's key and value go to position n_used - 1; the split that holds it writes them
        last = n_used - 1
        k_new = tl.load(kn_ptr + b * sn_b + g * sn_h + d)  # (HD,)
        v_new = tl.load(vn_ptr + b * sn_b + g * sn_h + d)
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
    assert not append or (kn.stride(-1) == 1 and vn.stride() == kn.stride())
    o = torch.empty(B, nkv, n_split, rep_p, hd, device=q.device, dtype=torch.float32)
    lse = torch.empty(B, nkv, n_split, rep_p, device=q.device, dtype=torch.float32)
    _partial[(B, nkv, n_split)](q, k_buf, v_buf, used, o, lse, 1.0 / math.sqrt(hd),
                                q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), k_buf.stride(2), n_split,
                                kn, vn, kn.stride(0), kn.stride(1),
                                REP=rep, REP_P=rep_p, HD=hd, BLOCK_N=block_n, SPLIT=split, APPEND=append,
                                num_warps=num_warps)
    y = torch.empty(B, nh, hd, device=q.device, dtype=q.dtype)
    _combine[(B, nkv)](o, lse, y, n_split, y.stride(0), y.stride(1), REP=rep, REP_P=rep_p, HD=hd,
                       S_P=triton.next_power_of_2(n_split), num_warps=num_warps)
    return y


def reference(q, k_buf, v_buf, used):
    """fp32 attention of q (B, nh, hd) over each row's first used[b] positions."""
    B, nh, hd = q.shape
    L, nkv = k_buf.shape[1], k_buf.shape[2]
    k = k_buf.float().transpose(1, 2).repeat_interleave(nh // nkv, dim=1)  # (B, nh, L, hd)
    v = v_buf.float().transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    s = (q.float()[:, :, None] @ k.transpose(-1, -2))[:, :, 0] / math.sqrt(hd)  # (B, nh, L)
    s = s.masked_fill(torch.arange(L, device=q.device)[None, None] >= used[:, None, None].long(), float("-inf"))
    return (s.softmax(-1)[:, :, None] @ v)[:, :, 0]  # (B, nh, hd)


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    for B, L, split, used in ((3, 256, 64, [1, 64, 256]), (4, 320, 128, [65, 300, 128, 129])):
        q = torch.randn(B, 14, 64, generator=g)
        k, v = torch.randn(B, L, 2, 64, generator=g), torch.randn(B, L, 2, 64, generator=g)
        used_t = torch.tensor(used, dtype=torch.int32)
        diff = (decode_attention(q, k, v, used_t, split=split, block_n=32) - reference(q, k, v, used_t)).abs().max()
        print(f"B {B}, L {L}, split {split}, used {used}: max |diff| against fp32 {diff:.2e}")
        assert diff < 1e-4
        # the fused append: the new key / value written at used - 1, then attended, from strided views
        kn, vn = torch.randn(B, 2, 1, 64, generator=g), torch.randn(B, 2, 1, 64, generator=g)
        k2, v2 = k.clone(), v.clone()
        rows = torch.arange(B)
        k[rows, used_t.long() - 1], v[rows, used_t.long() - 1] = kn[:, :, 0], vn[:, :, 0]
        got = decode_attention(q[:, :, None][:, :, 0], k2, v2, used_t, split=split, block_n=32, k_new=kn[:, :, 0],
                               v_new=vn[:, :, 0])
        diff = (got - reference(q, k, v, used_t)).abs().max()
        print(f"  appended: max |diff| {diff:.2e}, caches written as index_put writes them: "
              f"{k2.equal(k) and v2.equal(v)}")
        assert diff < 1e-4 and k2.equal(k) and v2.equal(v)


def patch_engine():
    """Route the engine's one-token attention (model.cache_attention's flash branch) through decode_attention:
    for an end-to-end measurement before it goes into model.py, e.g.
      python -c "import sys; sys.path[:0] = ['.', 'dev']; import decode_attn_triton as d; d.patch_engine();
                 import bench; bench.main(['gen', '--n', '512', '--slots', '64,256,512', '--hf-n', '0'])"
    """
    import model
    flash = model.cache_attention

    @torch.compiler.disable
    def cache_attention(q, k, v, mask, kv, rep):
        if not isinstance(mask, tuple):  # prefill, or the masked CPU path: as before
            return flash(q, k, v, mask, kv, rep)
        # one token per row, every row of the cache in order (rows = arange(B)), each at slot used - 1: the
        # write fused into the kernel; q, k, v (B, heads, 1, hd) read in place
        k_buf, v_buf = kv[0], kv[1]
        return decode_attention(q[:, :, 0], k_buf, v_buf, mask[2], k_new=k[:, :, 0], v_new=v[:, :, 0])[:, :, None]
    model.cache_attention = cache_attention
