"""The engine's decode-step attention kernel (decode_attention.py, Triton): on the CPU through Triton's interpreter
(conftest sets TRITON_INTERPRET), on a GPU for real. Against fp32 attention written out, and inside
model.cache_attention against the masked path the CPU engine takes: same outputs, same cache writes."""
import math

import pytest
import torch

import model as M

triton_decode = M.triton_decode()
if triton_decode is None:  # requirements-test.txt installs Triton, so CI runs these
    pytest.skip("needs triton (pip install triton)", allow_module_level=True)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def reference(q, k_buf, v_buf, used):
    """fp32 attention of q (B, nh, hd) over each row's first used[b] positions of k_buf, v_buf (B, L, nkv, hd)."""
    B, nh, hd = q.shape
    L, nkv = k_buf.shape[1], k_buf.shape[2]
    k = k_buf.double().transpose(1, 2).repeat_interleave(nh // nkv, dim=1)  # (B, nh, L, hd)
    v = v_buf.double().transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    s = (q.double()[:, :, None] @ k.transpose(-1, -2))[:, :, 0] / math.sqrt(hd)  # (B, nh, L)
    s = s.masked_fill(torch.arange(L, device=q.device)[None, None] >= used[:, None, None].long(), float("-inf"))
    return (s.softmax(-1)[:, :, None] @ v)[:, :, 0].float()  # (B, nh, hd)


def inputs(B, L, nh, nkv, hd, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nh, hd, generator=g)
    k, v = torch.randn(B, L, nkv, hd, generator=g), torch.randn(B, L, nkv, hd, generator=g)
    return q.to(DEV), k.to(DEV), v.to(DEV)


# rows of one position, ending on a split's last position, on the next split's first, filling the whole cache;
# splits wholly past a row's end; a split smaller than a tile and one of several tiles
@pytest.mark.parametrize("B, L, nh, nkv, hd, split, block_n, used", [
    (3, 256, 14, 2, 64, 64, 32, [1, 64, 256]),
    (4, 320, 14, 2, 64, 128, 32, [65, 300, 128, 129]),
    (2, 96, 4, 4, 16, 32, 16, [96, 33]),  # no grouping (rep 1), hd 16
    (2, 200, 8, 1, 32, 256, 64, [200, 7]),  # one split for the whole row, rep 8
])
def test_kernel_equals_fp32_attention(B, L, nh, nkv, hd, split, block_n, used):
    q, k, v = inputs(B, L, nh, nkv, hd, seed=B + L)
    used_t = torch.tensor(used, dtype=torch.int32, device=DEV)
    got = triton_decode(q, k, v, used_t, split=split, block_n=block_n)
    assert got.shape == (B, nh, hd) and got.dtype == q.dtype
    assert (got - reference(q, k, v, used_t)).abs().max() < 1e-5
    # positions past a row's end are never read: garbage there changes nothing
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(used):
        k2[b, n:], v2[b, n:] = 1e4, float("nan")
    assert triton_decode(q, k2, v2, used_t, split=split, block_n=block_n).equal(got)


def test_fused_append_writes_the_cache_as_index_put_does():
    # the new key / value (strided views of different layouts, as the model's projections give) are written at
    # used - 1 of every row and attended to in the same call
    B, L, nh, nkv, hd = 4, 320, 14, 2, 64
    q, k, v = inputs(B, L, nh, nkv, hd, seed=1)
    g = torch.Generator().manual_seed(2)
    kn = torch.randn(B, 1, nkv, hd, generator=g).to(DEV).transpose(1, 2)[:, :, 0]  # (B, nkv, hd), strided
    vn = torch.randn(B, nkv, 3, hd, generator=g).to(DEV)[:, :, 1]  # another layout
    used = torch.tensor([1, 128, 129, 320], dtype=torch.int32, device=DEV)
    k_ref, v_ref = k.clone(), v.clone()
    rows = torch.arange(B, device=DEV)
    k_ref[rows, used.long() - 1], v_ref[rows, used.long() - 1] = kn, vn
    got = triton_decode(q, k, v, used, split=128, block_n=32, k_new=kn, v_new=vn)
    assert k.equal(k_ref) and v.equal(v_ref)
    assert (got - reference(q, k_ref, v_ref, used)).abs().max() < 1e-5


def test_cache_attention_decode_step_equals_the_masked_path():
    # model.cache_attention as the engine's decode step calls it on a GPU (the (cu_q, cu_k, used) form, every
    # cache row in order, q / k / v (B, heads, 1, hd) from the projections) against the additive-mask path the CPU
    # engine takes: the same output and the same cache afterwards, a row past max_len (pos clamped) included
    B, L, nh, nkv, hd = 5, 192, 14, 2, 64
    rep = nh // nkv
    _, k_buf, v_buf = inputs(B, L, nh, nkv, hd, seed=3)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, 1, nh, hd, generator=g).to(DEV).transpose(1, 2)  # (B, nh, 1, hd) views, as in Attention
    k = torch.randn(B, 1, nkv, hd, generator=g).to(DEV).transpose(1, 2)
    v = torch.randn(B, 1, nkv, hd, generator=g).to(DEV).transpose(1, 2)
    pos = torch.tensor([0, 5, 63, 191, 250], device=DEV)  # the last has run past the cache (a finished slot)
    used = (pos + 1).clamp(max=L).to(torch.int32)
    slots = pos.clamp(max=L - 1)[:, None]  # (B, 1)
    rows = torch.arange(B, device=DEV)[:, None]
    cu = torch.arange(B + 1, device=DEV, dtype=torch.int32)
    kb1, vb1 = k_buf.clone(), v_buf.clone()
    got = M.cache_attention(q, k, v, (cu, cu * L, used), (kb1, vb1, rows, slots), rep)
    mask = torch.arange(L, device=DEV) <= slots[..., None]  # (B, 1, L)
    mask = torch.zeros(B, 1, 1, L, device=DEV).masked_fill_(~mask[:, None], float("-inf")).repeat(1, 1, rep, 1)
    kb2, vb2 = k_buf.clone(), v_buf.clone()
    want = M.cache_attention(q, k, v, mask, (kb2, vb2, rows, slots), rep)
    assert got.shape == want.shape == (B, nh, 1, hd)
    assert (got - want).abs().max() < 1e-5
    assert kb1.equal(kb2) and vb1.equal(vb2)
