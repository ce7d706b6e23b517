"""model.py: logits parity with transformers (the reference, test-only), KV cache vs full forward vs HF generate,
independent cache rows, packing isolation, chunked loss, numerics, and what `import model` pulls in."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers

import model as M
from checkpoint import from_pretrained
from conftest import PROMPTS
from engine import Sampling, generate

torch.set_num_threads(2)


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]  # (T, V)


def _greedy_full(model, ids, max_new_tokens):
    """Greedy decoding by re-running the full forward on the whole sequence each step (no cache)."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-max_new_tokens:]


# -----------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("name", ["qwen-fp32", "qwen-sharded", "llama-fp32", "llama-sharded"])
def test_logits_match_hf_padded_batch(ckpts, name):
    fam = name.split("-")[0]
    ours = from_pretrained(ckpts[name])
    assert ours.config.qkv_bias == (fam == "qwen") and ours.config.tie_embeddings == (fam == "qwen")
    assert all(p.requires_grad for p in ours.parameters())  # loaded weights are trainable Parameters
    if fam == "qwen":
        assert ours.lm_head.weight is ours.embed_tokens.weight
    else:
        assert ours.config.head_dim == 24 and ours.config.rope_theta == 500.0
    refs = [_hf_logits(ckpts[fam], p) for p in PROMPTS]
    # right-padded batch, plain causal forward: real positions never see the pads after them
    T = max(map(len, PROMPTS))
    idx = torch.tensor([p + [0] * (T - len(p)) for p in PROMPTS])
    with torch.no_grad():
        logits = ours(idx)
    assert logits.shape == (3, T, 128)
    for i, p in enumerate(PROMPTS):
        assert (logits[i, :len(p)] - refs[i]).abs().max() <= 1e-4
    # HF on the same right-padded batch with its attention mask agrees too
    am = torch.tensor([[1] * len(p) + [0] * (T - len(p)) for p in PROMPTS])
    with torch.no_grad():
        hf_batch = ckpts[fam](idx, attention_mask=am).logits
    for i, p in enumerate(PROMPTS):
        assert (logits[i, :len(p)] - hf_batch[i, :len(p)]).abs().max() <= 1e-4
    # the same batch as a prefill into the KV cache, then each row appends its last token again: every real
    # position matches, and the appended token sees exactly its own row's tokens
    lengths = torch.tensor([len(p) for p in PROMPTS])
    cache = ours.make_cache(3, T + 4)
    with torch.no_grad():
        logits = ours(idx, cache=cache, rows=torch.arange(3), lengths=lengths)
        assert cache.pos.tolist() == lengths.tolist()
        step = ours(torch.tensor([[p[-1]] for p in PROMPTS]), cache=cache)[:, 0]  # (3, V)
    assert torch.isfinite(logits).all() and cache.pos.tolist() == (lengths + 1).tolist()
    for i, p in enumerate(PROMPTS):
        assert (logits[i, :len(p)] - refs[i]).abs().max() <= 1e-4
        assert (step[i] - _hf_logits(ckpts[fam], p + [p[-1]])[-1]).abs().max() <= 1e-4


@pytest.mark.parametrize("fam", ["qwen", "llama"])
def test_bf16_checkpoint(ckpts, fam):
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.float32)
    ours = from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.float32)
    ids = PROMPTS[2]
    assert (ours(torch.tensor([ids]))[0] - _hf_logits(hf, ids)).abs().max() <= 1e-4
    # bf16 weights, bf16 compute: close to HF in bf16 (not exact: op order differs), and the loss is fp32
    ours16 = from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.bfloat16)
    assert ours16.embed_tokens.weight.dtype == torch.bfloat16
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.bfloat16)
    with torch.no_grad():
        a = ours16(torch.tensor([ids]))[0].float()
        b = hf16(torch.tensor([ids])).logits[0].float()
    ref = _hf_logits(hf, ids)
    assert (a - b).abs().max() <= 0.05 * ref.abs().max()
    loss = ours16(torch.tensor([ids]), torch.tensor([ids[1:] + [-100]]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("fam", ["qwen", "llama"])
def test_greedy_kv_cache_matches_full_forward_and_hf_generate(ckpts, fam):
    ours = from_pretrained(ckpts[f"{fam}-fp32"])
    n = 32
    cached = [s.ids for s in generate(ours, PROMPTS, Sampling(n))]  # the engine: batched prefill, then a token per row per step
    hf = ckpts[fam]
    for i, p in enumerate(PROMPTS):
        full = _greedy_full(ours, p, n)
        with torch.no_grad():
            hf_out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                 eos_token_id=None)[0, len(p):].tolist()
        assert cached[i] == full, f"row {i}: KV cache decode differs from full forward"
        assert cached[i] == hf_out, f"row {i}: differs from transformers generate"
    assert len(set(map(tuple, cached))) > 1  # the rows really are different


def test_cache_rows_are_independent_and_restartable():
    torch.manual_seed(0)
    m = M.Transformer(M.ModelConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48))
    alone = lambda ids: m(torch.tensor([ids]))[0, -1]  # noqa: E731  full forward, no cache
    cache = m.make_cache(3, 12)
    with torch.no_grad():
        # rows 0 and 2 get prompts of lengths 5 and 1 (right-padded together); row 1 stays empty
        idx = torch.tensor([[1, 2, 3, 4, 5], [9, 0, 0, 0, 0]])
        m(idx, cache=cache, rows=torch.tensor([0, 2]), lengths=torch.tensor([5, 1]))
        assert cache.pos.tolist() == [5, 0, 1]
        step = m(torch.tensor([[7], [7], [7]]), cache=cache)[:, 0]  # every row appends one token
        assert torch.isfinite(step).all() and cache.pos.tolist() == [6, 1, 2]
        assert (step[0] - alone([1, 2, 3, 4, 5, 7])).abs().max() <= 1e-5
        assert (step[1] - alone([7])).abs().max() <= 1e-5
        assert (step[2] - alone([9, 7])).abs().max() <= 1e-5
        # row 0 restarts with a new prompt while the others keep their state
        m(torch.tensor([[4, 4]]), cache=cache, rows=torch.tensor([0]))
        step = m(torch.tensor([[8], [8], [8]]), cache=cache)[:, 0]
        assert cache.pos.tolist() == [3, 2, 3]
        for row, ids in enumerate(([4, 4, 8], [7, 8], [9, 7, 8])):
            assert (step[row] - alone(ids)).abs().max() <= 1e-5
        # a multi-token append with last= picks each row's logits at the given position
        out = m(torch.tensor([[1, 2], [1, 2], [1, 2]]), cache=cache, last=torch.tensor([1, 0, 1]))
        assert out.shape == (3, 64) and (out[1] - alone([7, 8, 1])).abs().max() <= 1e-5
        assert (out[0] - alone([4, 4, 8, 1, 2])).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="positions come from the cache"):
            m(idx, cache=cache, pos=torch.zeros_like(idx))


# -----------------------------------------------------------------------------
# packing and loss


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = M.ModelConfig(vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48, **kw)
    return M.Transformer(cfg)


def test_packed_row_equals_docs_alone():
    m = _tiny()
    a, b, c = torch.randint(0, 96, (5,)), torch.randint(0, 96, (8,)), torch.randint(0, 96, (3,))
    row = torch.cat([a, b, c])[None]  # (1, 16): three documents back to back
    doc = torch.tensor([[0] * 5 + [1] * 8 + [2] * 3])
    pos = torch.cat([torch.arange(5), torch.arange(8), torch.arange(3)])[None]
    with torch.no_grad():
        packed = m(row, pos=pos, doc=doc)[0]
        for d, (s, e) in zip((a, b, c), ((0, 5), (5, 13), (13, 16))):
            assert (packed[s:e] - m(d[None])[0]).abs().max() <= 1e-5
        # without the doc mask the second document would see the first: the test can tell
        leaky = m(row, pos=pos)[0]
        assert (leaky[5:13] - m(b[None])[0]).abs().max() > 1e-3


def test_chunked_loss_matches_cross_entropy():
    m = _tiny()
    m.loss_chunk = 7  # several chunks, the last one partial
    idx = torch.randint(0, 96, (3, 12))
    targets = torch.randint(0, 96, (3, 12))
    targets[0, :5] = -100
    targets[2] = -100  # a fully padded row
    logits = m(idx)
    ref = F.cross_entropy(logits.float().view(-1, 96), targets.view(-1), ignore_index=-100)
    ref.backward()
    ref_grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad()
    loss = m(idx, targets)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) <= 1e-5
    loss.backward()
    for k, p in m.named_parameters():
        assert torch.allclose(p.grad, ref_grads[k], atol=1e-6), k
    ref_sum = F.cross_entropy(logits.float().view(-1, 96), targets.view(-1), ignore_index=-100, reduction="sum")
    assert abs(m(idx, targets, reduction="sum").item() - ref_sum.item()) <= 1e-4
    # a frozen vocab projection (LoRA): the hidden states still get their gradient, the weight none
    m.zero_grad()
    m.lm_head.weight.requires_grad_(False)
    m(idx, targets).backward()
    assert m.lm_head.weight.grad is None
    assert torch.allclose(m.layers[0].mlp.down_proj.weight.grad, ref_grads["layers.0.mlp.down_proj.weight"], atol=1e-6)
    m.lm_head.weight.requires_grad_(True)
    # nothing supervised: 0, not NaN, in both modes, and backward still works
    none = torch.full_like(targets, -100)
    for red in ("sum", "mean"):
        z = m(idx, none, reduction=red)
        assert z.item() == 0.0
        z.backward()


def test_grad_checkpointing_and_autocast():
    m = _tiny()
    idx, targets = torch.randint(0, 96, (2, 10)), torch.randint(0, 96, (2, 10))
    loss = m(idx, targets)
    loss.backward()
    g = m.embed_tokens.weight.grad.clone()
    m.zero_grad()
    m.grad_checkpointing = -1
    loss2 = m(idx, targets)
    loss2.backward()
    assert abs(loss.item() - loss2.item()) <= 1e-6 and torch.allclose(g, m.embed_tokens.weight.grad, atol=1e-6)
    # fp32 master weights under bf16 autocast: fp32 loss close to the fp32 one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l16 = m(idx, targets)
    assert l16.dtype == torch.float32 and abs(l16.item() - loss.item()) <= 0.05
    # the KV cache follows the autocast dtype, and decoding under autocast stays finite
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        cache = m.make_cache(2, 8)
        assert cache.k[0].dtype == torch.bfloat16 and m.make_cache(2, 8, dtype=torch.float32).k[0].dtype == torch.float32
        prefill = m(torch.tensor([[1, 2, 3], [4, 0, 0]]), cache=cache, rows=torch.arange(2), lengths=torch.tensor([3, 1]))
        assert torch.isfinite(prefill).all()
        assert torch.isfinite(m(torch.tensor([[5], [6]]), cache=cache)).all()


def test_tie_survives_load_state_dict_assign():
    # the meta-device + assign=True load that train.py / from_pretrained use must keep a single tied Parameter
    src = _tiny()
    sd = {k: v.clone() for k, v in src.state_dict().items()}  # two separate tensors for embed and head
    with torch.device("meta"):
        m = M.Transformer(src.config)
    m.load_state_dict(sd, assign=True)
    assert m.lm_head.weight is m.embed_tokens.weight and m.num_params() == src.num_params()
    assert torch.equal(m(torch.tensor([[1, 2, 3]])), src(torch.tensor([[1, 2, 3]])))


def test_num_params_and_presets():
    m = _tiny(tie_embeddings=False, qkv_bias=False)
    emb = 96 * 32
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    assert m.num_params(non_embedding=True) == m.num_params() - 2 * emb
    t = _tiny()
    assert t.num_params() == m.num_params() - emb + 2 * 2 * 16 + 2 * 32  # tied (-emb), plus q/k/v biases per layer
    assert t.flops_per_token(64) == 6 * (t.num_params(True) + emb) + 12 * 2 * 4 * 8 * 64
    p = M.PRESETS["scratch-22m"]
    assert (p.n_layer, p.n_embd, p.n_head, p.max_seq_len) == (4, 256, 4, 512)
    with torch.device("meta"):
        assert 18e6 < M.Transformer(p).num_params() < 24e6
        assert 0.8e9 < M.Transformer(M.PRESETS["scratch-1b"]).num_params() < 1.6e9
        assert 6e9 < M.Transformer(M.PRESETS["scratch-7b"]).num_params() < 8e9


# -----------------------------------------------------------------------------
# dependencies


def test_import_pulls_only_torch_numpy_stdlib():
    code = (
        "import sys, torch, numpy\n"
        "before = set(sys.modules)\n"
        "import model\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        # torch.compiler.disable (cache_attention) loads torch's compiler and with it torch's own dependencies
        "bad = sorted(m for m in new - set(sys.stdlib_module_names)\n"
        "             - {'model', 'torch', 'numpy', 'sympy', 'mpmath', 'triton'}\n"
        "             if not m.startswith('_') and m != 'cython_runtime')\n"
        "bad += [m for m in ('transformers', 'safetensors', 'tokenizers', 'tiktoken') if m in sys.modules]\n"
        "print(bad)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


@pytest.mark.parametrize("T", [1024, 300, 128, 77])
def test_doc_block_mask_equals_create_block_mask(T):
    # doc_block_mask builds the packed rows' BlockMask from the dense mask in a few tensor ops instead of
    # create_block_mask's vmap over the mask function; the blocks it lists (partial and full, by kv and by q for the
    # backward) must be the same sets, rows cut inside a block (T=300, 77) and one-document rows included
    from torch.nn.attention.flex_attention import create_block_mask
    g = torch.Generator().manual_seed(T)
    doc = torch.sort(torch.randint(0, 5, (3, T), generator=g), dim=1).values
    doc[2] = 0  # a single document: causal only, whole blocks full
    ours = M.doc_block_mask(doc)
    ref = create_block_mask(lambda b, h, q, k: (doc[b, q] == doc[b, k]) & (k <= q), 3, None, T, T, device="cpu")
    assert ours.seq_lengths == ref.seq_lengths and ours.BLOCK_SIZE == ref.BLOCK_SIZE
    for num, ind in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
                     ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")):
        n = getattr(ours, num)
        assert torch.equal(n, getattr(ref, num)), num
        assert n.sum() > 0 or num.startswith("full"), num
        for b in range(3):
            for i in range(n.shape[-1]):
                k = int(n[b, 0, i])
                got, want = getattr(ours, ind)[b, 0, i, :k], getattr(ref, ind)[b, 0, i, :k]
                assert torch.equal(got.sort().values, want.sort().values), (ind, b, i)
    assert ours.full_kv_num_blocks.sum() > 0 or T <= 128  # full blocks are tested wherever there can be any


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_ce_gradient_is_softmax_minus_one_hot(dtype):
    # the loss's per-chunk kernel returns d loss / d logits itself (LinearTokenLoss uses it in the forward
    # pass): it must equal autograd's gradient of the fp32 cross-entropy, and the loss its value
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(13, 50, generator=g) * 4).to(dtype)
    t = torch.randint(0, 50, (13,), generator=g)
    ref_in = logits.float().requires_grad_()
    ref = F.cross_entropy(ref_in, t, reduction="sum")
    ref.backward()
    logp, grad = M.Transformer._chunk_ce(logits, t)
    loss = -logp.sum()  # the cross-entropy, from the per-token log-probabilities
    assert grad.dtype == dtype and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(grad.float(), ref_in.grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3)
    assert M.Transformer._chunk_ce(logits, t, False)[1] is None
