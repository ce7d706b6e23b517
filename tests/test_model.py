"""model.py: logits parity with transformers (the reference, test-only), KV cache vs full forward vs HF generate,
packing isolation, chunked loss, checkpoint reading/writing and its error messages, hub-id resolution."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import model as M

import transformers

torch.set_num_threads(2)

PROMPTS = [[5, 17, 99, 3, 42, 8, 61], [7, 7, 120], [33, 2, 90, 14, 71, 11, 4, 19, 56, 23, 100]]  # lengths 7, 3, 11


def _randomize(model, seed):
    # HF inits biases to zero and norms to one; random values everywhere make every weight matter in the test
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def _hf_qwen():
    cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)
    m = transformers.Qwen2ForCausalLM(cfg)
    _randomize(m, 0)
    return m


def _hf_llama():
    # no bias, untied, a different rope base, and head_dim != hidden_size / num_heads
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=1, head_dim=24,
                                   max_position_embeddings=256, rope_theta=500.0, tie_word_embeddings=False,
                                   rms_norm_eps=1e-5)
    m = transformers.LlamaForCausalLM(cfg)
    _randomize(m, 1)
    return m


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """HF-saved tiny checkpoints: {name: (folder, hf model in fp32)} for qwen/llama in fp32, bf16 and sharded form."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for fam, make in (("qwen", _hf_qwen), ("llama", _hf_llama)):
        hf = make().eval()
        hf.save_pretrained(root / f"{fam}-fp32")
        hf.save_pretrained(root / f"{fam}-sharded", max_shard_size="40KB")
        hf_bf16 = make().to(torch.bfloat16)
        hf_bf16.save_pretrained(root / f"{fam}-bf16")
        out[f"{fam}-fp32"] = root / f"{fam}-fp32"
        out[f"{fam}-sharded"] = root / f"{fam}-sharded"
        out[f"{fam}-bf16"] = root / f"{fam}-bf16"
        out[fam] = hf
    assert len(list((root / "qwen-sharded").glob("model-*.safetensors"))) > 1  # really sharded
    return out


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]  # (T, V)


def greedy_generate(model, prompts_ids, max_new_tokens):
    """Reference greedy decoding with our KV cache: left-padded batch prefill, then one token per step."""
    idx, valid = M.left_pad(prompts_ids)
    cache = model.make_cache(len(prompts_ids), idx.size(1) + max_new_tokens)
    out = []
    with torch.no_grad():
        logits = model(idx, cache=cache, valid=valid, last_only=True)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            assert torch.isfinite(logits).all()
            out.append(nxt)
            logits = model(nxt, cache=cache)
    return torch.cat(out, 1).tolist()


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
    ours = M.from_pretrained(ckpts[name])
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
    # left-padded batch through the KV cache (per-row positions from `valid`): every real position matches
    idx, valid = M.left_pad(PROMPTS)
    cache = ours.make_cache(3, T + 4)
    with torch.no_grad():
        logits = ours(idx, cache=cache, valid=valid)
    assert torch.isfinite(logits).all()  # pad queries attend to themselves only: no NaN
    for i, p in enumerate(PROMPTS):
        assert (logits[i, T - len(p):] - refs[i]).abs().max() <= 1e-4


@pytest.mark.parametrize("fam", ["qwen", "llama"])
def test_bf16_checkpoint(ckpts, fam):
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.float32)
    ours = M.from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.float32)
    ids = PROMPTS[2]
    assert (ours(torch.tensor([ids]))[0] - _hf_logits(hf, ids)).abs().max() <= 1e-4
    # bf16 weights, bf16 compute: close to HF in bf16 (not exact: op order differs), and the loss is fp32
    ours16 = M.from_pretrained(ckpts[f"{fam}-bf16"], dtype=torch.bfloat16)
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
    ours = M.from_pretrained(ckpts[f"{fam}-fp32"])
    n = 32
    cached = greedy_generate(ours, PROMPTS, n)
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


def test_cache_pads_never_nan_and_empty_row():
    torch.manual_seed(0)
    m = M.Transformer(M.ModelConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48))
    idx, valid = M.left_pad([[1, 2, 3, 4, 5], [], [9]])  # the middle row is all padding
    cache = m.make_cache(3, 10)
    with torch.no_grad():
        logits = m(idx, cache=cache, valid=valid)
        assert torch.isfinite(logits).all()
        assert cache.n_valid.tolist() == [5, 0, 1] and cache.length == 5
        # the 1-token row then decodes exactly as it would alone (positions 1, 2 after its pads)
        step = m(torch.tensor([[7], [7], [7]]), cache=cache)
        alone = m(torch.tensor([[9, 7]]))[0, -1]
        assert (step[2, 0] - alone).abs().max() <= 1e-5
        assert torch.isfinite(step).all()
        # a step with row 2 marked invalid (e.g. finished) leaves a hole that neither attention nor positions see
        m(torch.tensor([[3], [3], [50]]), cache=cache, valid=torch.tensor([[True], [True], [False]]))
        step = m(torch.tensor([[8], [8], [8]]), cache=cache)
        alone = m(torch.tensor([[9, 7, 8]]))[0, -1]
        assert cache.n_valid.tolist() == [8, 3, 3]
        assert (step[2, 0] - alone).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="KV cache full"):
            m(torch.zeros(3, 5, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="without a cache"):
            m(idx, valid=valid)


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
    m.grad_checkpointing = True
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
        assert cache.k.dtype == torch.bfloat16 and m.make_cache(2, 8, dtype=torch.float32).k.dtype == torch.float32
        idx, valid = M.left_pad([[1, 2, 3], [4]])
        assert torch.isfinite(m(idx, cache=cache, valid=valid)).all()
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
# config


def test_config_from_hf_layouts():
    base = dict(model_type="qwen2", vocab_size=10, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, hidden_size=8, intermediate_size=16, tie_word_embeddings=True)
    v4 = M.config_from_hf({**base, "rope_theta": 12345.0, "rope_scaling": None})
    v5 = M.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 12345.0}})
    assert v4 == v5 and v4.rope_theta == 12345.0 and v4.qkv_bias and v4.tie_embeddings and v4.head_dim == 4
    llama = M.config_from_hf({**base, "model_type": "llama", "attention_bias": False, "tie_word_embeddings": False})
    assert not llama.qkv_bias and not llama.tie_embeddings and llama.rope_theta == 10000.0
    for cfg in (v4, llama):
        assert M.config_from_hf(M.config_to_hf(cfg)) == cfg
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        M.config_from_hf({**base, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        M.config_from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="attention_bias"):
        M.config_from_hf({**base, "model_type": "llama", "attention_bias": True})
    with pytest.raises(ValueError, match="'hidden_size'"):
        M.config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})


# -----------------------------------------------------------------------------
# saving and loading


@pytest.mark.parametrize("fam,shard", [("qwen", False), ("llama", True)])
def test_save_pretrained_roundtrip_loads_in_transformers(ckpts, tmp_path, fam, shard):
    ours = M.from_pretrained(ckpts[f"{fam}-fp32"])
    out = tmp_path / "saved"
    M.save_pretrained(ours, out, max_shard_bytes=30_000 if shard else 2**31)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    if shard:
        assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) > 1
    keys = set()
    for f in out.glob("*.safetensors"):
        keys |= set(M.read_safetensors(f))
    assert ("lm_head.weight" in keys) == (fam == "llama")  # tied weights are written once, as HF does
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = PROMPTS[0]
    assert (_hf_logits(hf, ids) - _hf_logits(ckpts[fam], ids)).abs().max() <= 1e-4
    back = M.from_pretrained(out)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # saving again unsharded into the same folder removes the shards of the earlier layout
    M.save_pretrained(back, out)
    assert not list(out.glob("model-*")) and not (out / "model.safetensors.index.json").exists()
    assert torch.equal(M.from_pretrained(out).lm_head.weight, ours.lm_head.weight)


def test_bf16_save_roundtrip_bit_exact_and_bin_fallback(ckpts, tmp_path):
    ours = M.from_pretrained(ckpts["qwen-bf16"], dtype=torch.bfloat16)
    M.save_pretrained(ours, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = M.from_pretrained(tmp_path / "a", dtype=torch.bfloat16)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())
    # pytorch_model.bin fallback (older checkpoints)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    torch.save(M.read_safetensors(tmp_path / "a" / "model.safetensors"), tmp_path / "b" / "pytorch_model.bin")
    binm = M.from_pretrained(tmp_path / "b", dtype=torch.bfloat16)
    assert all(torch.equal(v, binm.state_dict()[k]) for k, v in ours.state_dict().items())


def _copy_ckpt(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_and_mismatched_checkpoints(ckpts, tmp_path):
    from safetensors.torch import save_file  # test-only: writes the files our reader must reject

    src = ckpts["qwen-fp32"]
    sd = M.read_safetensors(src / "model.safetensors")
    data = (src / "model.safetensors").read_bytes()

    d = _copy_ckpt(src, tmp_path / "trunc")
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt.*beyond"):
        M.from_pretrained(d)
    (d / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + data[8:100])
    with pytest.raises(ValueError, match="header length 1000000000000"):
        M.from_pretrained(d)
    (d / "model.safetensors").write_bytes(data[:8] + b"\x00not json" + data[17:])
    with pytest.raises(ValueError, match="not JSON"):
        M.from_pretrained(d)

    h = b'{"model.norm.weight":{"dtype":"F32"}}'
    (d / "model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h)
    with pytest.raises(ValueError, match="corrupt safetensors header entry for 'model.norm.weight'"):
        M.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "int")
    save_file({**{k: v.clone() for k, v in sd.items()}, "model.extra": torch.zeros(3, dtype=torch.int64)},
              d / "model.safetensors")
    with pytest.raises(ValueError, match="'model.extra' has dtype I64, not supported"):
        M.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "missing")
    save_file({k: v.clone() for k, v in sd.items() if "layers.1.mlp.up_proj" not in k}, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors \['layers.1.mlp.up_proj.weight'\]"):
        M.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "unexpected")
    save_file({**{k: v.clone() for k, v in sd.items()}, "model.bogus.weight": torch.zeros(2)}, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensors \['bogus.weight'\]"):
        M.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"layers.0.mlp.gate_proj.weight: expected \(100, 64\), found \(96, 64\)"):
        M.from_pretrained(d)

    with pytest.raises(ValueError, match="only float32, float16, bfloat16"):
        M.write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2, dtype=torch.int32)})


def test_hub_id_resolution(ckpts, tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--Qwen--Tiny-Test"
    _copy_ckpt(ckpts["qwen-fp32"], (repo / "snapshots").mkdir(parents=True) or repo / "snapshots" / "abc123")
    _copy_ckpt(ckpts["llama-fp32"], repo / "snapshots" / "old999")  # another revision: refs/main decides
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    assert M.resolve_checkpoint_dir("Qwen/Tiny-Test") == repo / "snapshots" / "abc123"
    m = M.from_pretrained("Qwen/Tiny-Test")
    assert m.config.qkv_bias and m.source_dir == str(repo / "snapshots" / "abc123")
    # HF_HUB_CACHE takes precedence over HF_HOME
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError) as e:
        M.resolve_checkpoint_dir("Qwen/Tiny-Test")
    msg = str(e.value)
    assert str(tmp_path / "elsewhere" / "models--Qwen--Tiny-Test") in msg
    assert "huggingface-cli download Qwen/Tiny-Test" in msg
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        M.from_pretrained(tmp_path / "no-such-dir")


def test_import_pulls_only_torch_numpy_stdlib():
    code = (
        "import sys, torch, numpy\n"
        "before = set(sys.modules)\n"
        "import model\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "bad = sorted(new - set(sys.stdlib_module_names) - {'model', 'torch', 'numpy'})\n"
        "bad += [m for m in ('transformers', 'safetensors', 'tokenizers') if m in sys.modules]\n"
        "print(bad)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
