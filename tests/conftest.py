"""Shared fixtures: tiny Hugging Face checkpoints (the reference implementation, test-only) saved in several forms."""
import os

import pytest
import torch

# without a GPU, the Triton decode kernel (decode_attention.py) runs in Triton's interpreter on CPU tensors; set
# before anything imports it (triton.jit reads it when a kernel is defined)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import transformers

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


@pytest.fixture(scope="session")
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


@pytest.fixture
def one_thread():
    # tiny models: a second thread only adds OpenMP hand-offs (and stalls badly on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(vocab=128, seed=0, **kw):
    """A small random decoder with large weights: the default init gives near-uniform logits whose argmax is
    decided by float noise; larger weights make greedy decoding well defined, so "same output" tests test the
    decoding, not rounding luck."""
    from model import ModelConfig, Transformer
    cfg = dict(vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=96, max_seq_len=256,
               rope_theta=1e4, qkv_bias=True, tie_embeddings=False)
    cfg.update(kw)
    model = Transformer(ModelConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name
                    else 0.08 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def math_tok():
    from tokenizer import load_tokenizer
    return load_tokenizer("math")
