"""
The decoder: one configurable Qwen2/Llama-style transformer, plus reading and writing Hugging Face checkpoints
without the transformers/safetensors packages.

    model = from_pretrained(path_or_hub_id)   # a checkpoint folder, or a hub id found in the local HF cache
    logits = model(idx)                                      # (B, T, vocab)
    loss = model(idx, targets)                               # fp32 scalar, -100 = ignore
    save_pretrained(model, "out/ckpt")                       # HF layout; transformers can load it back

Architecture: token embedding -> N x [RMSNorm -> GQA self-attention with rotary embedding (HF "rotate-half"
layout) -> residual, RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> output head (tied to the embedding or not).
Module names inside match the HF names minus the leading "model." so checkpoints map one to one.

Numerics: RMSNorm, rotary angles and the loss are computed in fp32 whatever the weight / autocast dtype;
softmax happens inside scaled_dot_product_attention (fp32 accumulation in every backend).
Only torch, numpy and the standard library are imported here (tests check it).
"""

import json
import math
import mmap
import os
import pathlib
import tempfile
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    vocab_size: int = 151936
    n_layer: int = 24
    n_head: int = 14
    n_kv_head: int = 2  # grouped-query attention: each kv head serves n_head // n_kv_head query heads
    n_embd: int = 896
    intermediate_size: int = 4864  # SwiGLU hidden width
    max_seq_len: int = 32768  # informational (rope has no table); saved as max_position_embeddings
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = True  # Qwen2 has biases on q/k/v (only); Llama has none
    tie_embeddings: bool = True  # output head is the embedding matrix (the same Parameter)
    head_dim: int = 0  # 0 means n_embd // n_head (every Qwen2.5 model); Llama configs may set it explicitly

    def __post_init__(self):
        if self.head_dim == 0:
            assert self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} not divisible by n_head={self.n_head}"
            self.head_dim = self.n_embd // self.n_head
        assert self.n_head % self.n_kv_head == 0, f"n_head={self.n_head} not divisible by n_kv_head={self.n_kv_head}"
        assert self.head_dim % 2 == 0, "rotary embedding needs an even head_dim"


# From-scratch presets (no bias, like Llama). vocab_size is whatever the tokenizer says: set it with
# dataclasses.replace(PRESETS[name], vocab_size=len(tokenizer)). Parameter counts below are with that vocab.
PRESETS = {
    # 4.2M in the blocks + 16.8M tied embedding at a 65,536-token vocab = ~21M; it is the embedding that dominates.
    "scratch-22m": ModelConfig(vocab_size=65536, n_layer=4, n_head=4, n_kv_head=4, n_embd=256, intermediate_size=1024,
                               max_seq_len=512, rope_theta=10000.0, qkv_bias=False, tie_embeddings=True),
    # Llama-3.2-1B shapes: 0.97B in the blocks + 0.31B tied embedding at the Qwen vocab (151,936).
    "scratch-1b": ModelConfig(n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, intermediate_size=8192,
                              max_seq_len=4096, rope_theta=500000.0, qkv_bias=False, tie_embeddings=True),
    # Llama-2-7B shapes with GQA (8 kv heads): 5.7B in the blocks + 2 x 0.62B untied embedding/head = ~6.9B.
    "scratch-7b": ModelConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, intermediate_size=11008,
                              max_seq_len=4096, rope_theta=500000.0, qkv_bias=False, tie_embeddings=False),
}


def config_from_hf(cfg: dict) -> ModelConfig:
    """ModelConfig from a parsed HF config.json (qwen2 or llama). Understands both the transformers 4.x layout
    (top-level rope_theta, rope_scaling) and the 5.x layout (rope_parameters). Raises ValueError naming the key
    for anything this model cannot represent, rather than silently computing something else."""
    mt = cfg.get("model_type")
    if mt not in ("qwen2", "llama"):
        raise ValueError(f"config.json: model_type={mt!r} is not supported (expected 'qwen2' or 'llama')")
    for key in ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"):
        if key not in cfg:
            raise ValueError(f"config.json: missing required key {key!r}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act={cfg['hidden_act']!r} is not supported (only 'silu')")
    if cfg.get("use_sliding_window", False):
        raise ValueError("config.json: use_sliding_window=true is not supported (full attention only)")
    if cfg.get("mlp_bias", False):
        raise ValueError("config.json: mlp_bias=true is not supported")
    # rope: 5.x keeps theta and type in rope_parameters; 4.x has rope_theta at the top and rope_scaling
    rp = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = rp.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only plain rope)")
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if mt == "qwen2":
        qkv_bias = True  # Qwen2 always has q/k/v biases (and no o_proj bias), whatever attention_bias says
    else:
        # Llama's attention_bias puts a bias on o_proj too, which this model does not have
        if cfg.get("attention_bias", False):
            raise ValueError("config.json: llama with attention_bias=true (o_proj bias) is not supported")
        qkv_bias = False
    n_head = cfg["num_attention_heads"]
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads") or n_head,
        n_embd=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 32768),
        rope_theta=float(theta),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=qkv_bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # qwen2 and llama both default to False
        head_dim=cfg.get("head_dim") or 0,
    )


def config_to_hf(cfg: ModelConfig, dtype=torch.float32) -> dict:
    """HF config.json dict: Qwen2 layout when qkv_bias, else Llama layout. rope_theta is written both at the top
    (transformers 4.x) and in rope_parameters (5.x) so either version reads it."""
    dtype_name = str(dtype).removeprefix("torch.")
    d = {
        "architectures": ["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"],
        "model_type": "qwen2" if cfg.qkv_bias else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": dtype_name,  # 4.x name
        "dtype": dtype_name,  # 5.x name
    }
    if cfg.qkv_bias:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    else:
        d.update(attention_bias=False, mlp_bias=False)
    return d


# -----------------------------------------------------------------------------
# the model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 and cast back before the weight, in the same order as HF, so bf16 results match too
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(pos, head_dim, theta):
    """cos, sin (B, 1, T, head_dim) for positions pos (B, T). Computed from the positions on every call (not
    a cached table) so per-row positions of packed/left-padded batches cost nothing extra, and in fp32 so a bf16
    model still gets exact angles; there is no buffer for model.to(bfloat16) to round."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    freqs = pos[..., None].float() * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # HF "rotate-half" layout: first half / second half pairs
    return emb.cos()[:, None], emb.sin()[:, None]  # fp32; cast to the q/k dtype at use, as HF does


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# Kernels allowed for masked attention (packed rows, KV-cache decoding). cuDNN attention is left out on purpose: on an
# H200 with torch 2.11 it returned NaN gradients for a real Qwen2 0.5B model on a GSM8K batch right-padded to 320
# tokens (train examples 6608-6623), where the memory-efficient and math kernels gave finite, equal results. That is
# the NaN the Hugging Face Trainer recipe hits at ~step 350. The unmasked causal path (flash) is unaffected.
MASKED_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.q_proj = nn.Linear(C, config.n_head * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(C, config.n_kv_head * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(C, config.n_kv_head * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.n_head * hd, C, bias=False)

    def forward(self, x, cos, sin, mask, kv=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            # decoding: write this step's keys/values into the static buffers and attend over all max_len slots;
            # the mask hides slots that are pads or not yet written (fixed shapes, cf. gpt-fast)
            k_buf, v_buf, start = kv
            k_buf[:, :, start:start + T] = k
            v_buf[:, :, start:start + T] = v
            k, v = k_buf.to(q.dtype), v_buf.to(q.dtype)  # (B, nkv, L, hd)
        # mask None: plain causal; else a bool (B, 1, T, S) mask, True = may attend
        gqa = self.n_kv_head != self.n_head
        if mask is not None and gqa:
            # SDPA's enable_gqa only works in the flash (no mask) and math kernels; math would materialise
            # (B, nh, T, S) fp32 scores, so for masks repeat the kv heads and let the memory-efficient kernel run
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, S, hd)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, S, hd)
            gqa = False
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, nh, T, hd)
        else:
            with sdpa_kernel(MASKED_SDPA_BACKENDS):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, kv=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class KVCache:
    """Static KV cache for batched incremental decoding (make it with model.make_cache(B, max_len)).

    Buffers are preallocated to max_len so every decode step has the same shapes (a one-token step can be
    torch.compile'd, cf. gpt-fast):
        k, v    (n_layer, B, n_kv_head, max_len, head_dim)
        valid   (B, max_len) bool   slot holds a real token (False for pads and unwritten slots)
        n_valid (B,) long           real tokens so far per row = position of the row's next real token
        length  int                 slots written so far (the same for every row)
    A batch of prompts of different lengths is LEFT-padded (use left_pad()), so all rows end at the same slot
    and the next token of every row goes to slot `length`. Pads are masked out as keys, and each row's positions
    count only its real tokens, so the first real token of every row has position 0 and a row gives the same
    logits as it would alone. Example (greedy):

        idx, valid = left_pad(prompts, pad_id=0)               # (B, P) long, (B, P) bool
        cache = model.make_cache(idx.size(0), max_len=P + max_new)
        logits = model(idx, cache=cache, valid=valid, last_only=True)   # prefill, (B, 1, V)
        for _ in range(max_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)        # (B, 1)
            logits = model(nxt, cache=cache)                    # positions come from cache.n_valid
    Rows that are finished can keep decoding (pass valid=False for them to keep their pad-free history).
    """

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, device=None, dtype=torch.float32):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, device=device, dtype=torch.bool)
        self.n_valid = torch.zeros(batch_size, device=device, dtype=torch.long)
        self.length = 0
        self.max_len = max_len

    def reset(self):
        self.valid.zero_()
        self.n_valid.zero_()
        self.length = 0


def left_pad(prompts, pad_id=0, device=None):
    """list of token-id lists -> idx (B, P) long left-padded with pad_id, valid (B, P) bool (False on pads)."""
    P = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p):
            idx[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
            valid[i, P - len(p):] = True
    return idx.to(device), valid.to(device)


def _retie(model, incompatible_keys):
    model.lm_head.weight = model.embed_tokens.weight


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one Parameter, one gradient
            # load_state_dict(assign=True) (meta-device loading) replaces both Parameters with two different
            # ones: tie them again after every load, whoever calls it
            self.register_load_state_dict_post_hook(_retie)
        self.grad_checkpointing = False  # when True and training, each block is recomputed in backward
        self.loss_chunk = 1024  # rows of the vocab projection per chunk in the loss
        self.source_dir = None  # set by from_pretrained: where config/tokenizer files came from
        self.apply(self._init_weights)
        for block in self.layers:
            # projections that write into the residual stream get std / sqrt(2 * n_layer) so it does not grow
            # with depth (cf. GPT-2 / nanoGPT)
            for w in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight):
                nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, m):
        # from-scratch init (checkpoint loads overwrite it): N(0, 0.02), zero biases
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, *, pos=None, doc=None, cache=None, valid=None, reduction="mean",
                last_only=False):
        """idx (B, T) long token ids.

        pos (B, T) long: positions (default arange(T); with a cache, derived from cache.n_valid and `valid`).
        doc (B, T) int: document ids of a packed row: token i attends to j iff doc[i] == doc[j] and j <= i.
            Pass restarted positions in `pos` too, so each document sees the positions it would see alone.
        cache: a KVCache (see its docstring). The T tokens are written at slots [cache.length, cache.length+T)
            and attend to every earlier valid slot of their row; `valid` (B, T) bool marks real (non-pad)
            tokens of idx (default all True). Pad tokens only attend to themselves so they never produce NaN.
        targets (B, T) long with -100 = ignore: returns the fp32 cross-entropy, reduction "mean" (over
            supervised tokens) or "sum" (0, not NaN, when nothing is supervised). Only supervised hidden states
            are projected to the vocab, in chunks of self.loss_chunk rows upcast to fp32 one at a time and
            recomputed in backward, so fp32 logits for every position never exist (cf. torchtune chunked CE).
        Else returns logits (B, T, V) in the compute dtype ((B, 1, V) for the last position if last_only).
        """
        B, T = idx.shape
        cfg = self.config
        mask = None
        kv_start = None
        if valid is not None and cache is None:
            raise ValueError("valid marks pad tokens for the KV cache; without a cache, mask the loss with -100")
        if cache is not None:
            if doc is not None:
                raise ValueError("doc (packing) and cache (decoding) cannot be combined")
            L, start = cache.max_len, cache.length
            if start + T > L:
                raise ValueError(f"KV cache full: {start} slots used + {T} new > max_len {L}")
            if valid is None:
                valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
            if pos is None:
                # each row's positions count only its real tokens; pads get 0 (their output is never used)
                pos = cache.n_valid[:, None] + valid.long().cumsum(1) - 1  # (B, T)
                pos = pos.clamp(min=0)
            cache.valid[:, start:start + T] = valid
            cache.n_valid += valid.sum(1)
            cache.length = start + T
            slots = torch.arange(L, device=idx.device)  # (L,)
            q_slots = start + torch.arange(T, device=idx.device)  # (T,)
            causal = slots[None, :] <= q_slots[:, None]  # (T, L)
            mask = (cache.valid[:, None, :] & causal) | (slots[None, :] == q_slots[:, None])  # (B, T, L)
            mask = mask[:, None]  # (B, 1, T, L)
            kv_start = start
        elif doc is not None:
            same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            mask = (same & causal)[:, None]  # (B, 1, T, T); the diagonal is always True, so no empty rows
        if pos is None:
            pos = torch.arange(T, device=idx.device)[None].expand(B, T)
        cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)

        x = self.embed_tokens(idx)  # (B, T, C)
        for i, block in enumerate(self.layers):
            kv = (cache.k[i], cache.v[i], kv_start) if cache is not None else None
            if self.grad_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, kv)
        x = self.norm(x)  # (B, T, C)

        if targets is None:
            if last_only:
                x = x[:, -1:]
            return self.lm_head(x)  # (B, T, V)
        return self.chunked_loss(x, targets, reduction)

    def chunked_loss(self, x, targets, reduction="mean"):
        """fp32 cross-entropy of hidden states x (B, T, C) against targets (B, T), -100 = ignore."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        t = targets.reshape(-1)
        keep = t != -100
        h = x.reshape(-1, x.size(-1))[keep]  # (N, C) supervised positions only (a host sync; N varies)
        t = t[keep]  # (N,)
        if h.size(0) == 0:
            return x.reshape(-1)[:1].float().sum() * 0.0  # nothing supervised: 0 (not NaN), still in the graph
        loss = 0.0
        for i in range(0, h.size(0), self.loss_chunk):
            hc, tc = h[i:i + self.loss_chunk], t[i:i + self.loss_chunk]
            if torch.is_grad_enabled() and hc.requires_grad:
                # recompute the chunk's logits in backward instead of keeping its fp32 log-softmax alive
                loss = loss + checkpoint(self._chunk_ce, hc, tc, use_reentrant=False)
            else:
                loss = loss + self._chunk_ce(hc, tc)
        if reduction == "mean":
            loss = loss / h.size(0)
        return loss

    def _chunk_ce(self, h, t):
        logits = self.lm_head(h).float()  # (n, V) fp32, one chunk only
        return F.cross_entropy(logits, t, reduction="sum")

    def make_cache(self, batch_size, max_len, device=None, dtype=None) -> KVCache:
        """A KVCache with static (batch_size, max_len) buffers; by default on the model's device, in the autocast
        dtype when called under autocast, else in the weights' dtype."""
        p = self.embed_tokens.weight
        cfg = self.config
        device = torch.device(device or p.device)
        if dtype is None:
            # under autocast keys/values come out in the autocast dtype: store them in it, not in fp32
            autocast = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if autocast else p.dtype
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim, device=device, dtype=dtype)

    def num_params(self, non_embedding=False) -> int:
        """Parameter count, a tied matrix counted once. non_embedding=True leaves out the token embedding and the
        output head (the vocab x n_embd matrices) - the usual "model size" for scaling laws."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied Parameter once
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len) -> float:
        """Training FLOPs per token (forward + backward) for MFU: 6 * (matmul params) + 12 * L * H * hd * T
        attention (scores and weighted sum, the usual PaLM/nanoGPT convention, not halved for causality).
        The matmul params are all non-embedding ones plus the output head (embedding lookup is free)."""
        cfg = self.config
        n = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


# -----------------------------------------------------------------------------
# safetensors reader / writer (our own; the format is an 8-byte LE header length, a JSON header, raw bytes)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def read_safetensors(path) -> dict:
    """name -> CPU tensor, memory-mapped from the file (private copy-on-write mapping: nothing is read until
    touched, pages are shared with the OS page cache, and writing to a tensor never writes to the file)."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise ValueError(f"{path}: truncated or corrupt safetensors file ({size} bytes, no header)")
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise ValueError(f"{path}: truncated or corrupt safetensors file: header length {n} is beyond the "
                             f"file size {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header (not JSON: {e})") from None
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else b""
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + n, size - 8 - n
    out = {}
    for name, info in header.items():
        try:
            dt, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt safetensors header entry for {name!r}: {info!r}") from None
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dt}, not supported (only F32, F16, BF16)")
        dtype = _ST_DTYPES[dt]
        numel = math.prod(shape)
        if not (0 <= begin <= end <= data_size):
            raise ValueError(f"{path}: truncated or corrupt: tensor {name!r} offsets [{begin}, {end}) are beyond "
                             f"the data section ({data_size} bytes)")
        if end - begin != numel * dtype.itemsize:
            raise ValueError(f"{path}: corrupt: tensor {name!r} {dt}{shape} needs {numel * dtype.itemsize} bytes, "
                             f"offsets give {end - begin}")
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(mm, dtype=dtype, count=numel, offset=data_start + begin).view(shape)
    return out


def atomic_write(path, write_fn):
    """write_fn(file) into a temp file next to path, fsync, then rename over path: readers (and a crash) never
    see half a file, and an interrupted write leaves the previous file intact. train.py and sample.py use it too."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_safetensors(path, tensors: dict, metadata=None):
    """Write name -> tensor to path in safetensors format (atomically)."""
    header, offset = {}, 0
    for name, t in tensors.items():
        if t.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be saved (only float32, float16, bfloat16)")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad so the data section starts 8-byte aligned, as the spec recommends

    def write(f):
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for t in tensors.values():
            if t.numel():
                # raw bytes through a uint8 view: no copy beyond making it contiguous on CPU, works for bf16 too
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    atomic_write(path, write)


# -----------------------------------------------------------------------------
# checkpoints in HF layout


def _hub_cache_dirs():
    """Where the HF hub cache may be, in the order huggingface_hub itself looks."""
    if os.environ.get("HF_HUB_CACHE"):
        return [pathlib.Path(os.environ["HF_HUB_CACHE"])]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # older name
        return [pathlib.Path(os.environ["HUGGINGFACE_HUB_CACHE"])]
    if os.environ.get("HF_HOME"):
        return [pathlib.Path(os.environ["HF_HOME"]) / "hub"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [pathlib.Path(xdg) / "huggingface" / "hub"]


def resolve_checkpoint_dir(path_or_hub_id) -> pathlib.Path:
    """A checkpoint folder as given, or a hub id ("Org/Name") found in the local HF cache at
    <cache>/models--Org--Name/snapshots/<rev>/ with <rev> read from refs/main (no network, ever)."""
    p = pathlib.Path(path_or_hub_id).expanduser()
    if p.is_dir():
        return p
    name = str(path_or_hub_id)
    looked = [str(p)]
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        for cache in _hub_cache_dirs():
            repo = cache / ("models--" + name.replace("/", "--"))
            looked.append(str(repo))
            snaps = repo / "snapshots"
            if not snaps.is_dir():
                continue
            ref = repo / "refs" / "main"
            if ref.is_file():
                snap = snaps / ref.read_text().strip()
                if snap.is_dir():
                    return snap
                looked.append(str(snap) + " (named by refs/main)")
                continue
            cands = sorted((s for s in snaps.iterdir() if (s / "config.json").exists()), key=lambda s: s.stat().st_mtime)
            if cands:
                return cands[-1]  # no refs/main: the newest complete snapshot
    hint = (f"download it first, e.g. `huggingface-cli download {name}` (or `hf download {name}`), "
            f"or pass the path of a folder holding config.json and the weights") if "/" in name else \
        "pass the path of a folder holding config.json and the weights"
    raise FileNotFoundError(f"checkpoint {name!r} not found; looked in: {', '.join(looked)}. {hint}")


def _load_weight_files(d: pathlib.Path) -> dict:
    """All tensors of a checkpoint folder (HF names), memory-mapped where the format allows."""
    if (d / "model.safetensors").exists():
        return read_safetensors(d / "model.safetensors")
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", _read_bin)):
        index_path = d / index_name
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index_path}: not a valid index file ({e!r})") from None
            sd = {}
            for shard in sorted(set(weight_map.values())):
                if not (d / shard).exists():
                    raise FileNotFoundError(f"{index_path} names shard {shard!r}, which is missing from {d}")
                tensors = reader(d / shard)
                sd.update({k: v for k, v in tensors.items() if weight_map.get(k) == shard})
            missing_in_shards = sorted(set(weight_map) - set(sd))
            if missing_in_shards:
                raise ValueError(f"{index_path} lists tensors not found in their shard: {missing_in_shards[:10]}")
            return sd
    if (d / "pytorch_model.bin").exists():
        return _read_bin(d / "pytorch_model.bin")
    raise FileNotFoundError(f"{d}: no weights found (model.safetensors, model.safetensors.index.json, "
                            f"pytorch_model.bin)")


def _read_bin(path):
    # weights_only: a .bin is a pickle, never run code from it; mmap: do not copy it into RAM
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # pre-1.6 (non-zip) files cannot mmap


def from_pretrained(path_or_hub_id, device="cpu", dtype=torch.float32) -> Transformer:
    """Load an HF Qwen2/Llama checkpoint (folder or hub id in the local cache) into a Transformer with weights
    in `dtype` on `device`. The model is built on the meta device and the (memory-mapped) tensors are assigned,
    so weights are never allocated twice. model.config is the ModelConfig, model.source_dir the folder (str)."""
    d = resolve_checkpoint_dir(path_or_hub_id)
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{d}: no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        hf_cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from None
    try:
        config = config_from_hf(hf_cfg)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None

    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del expected["lm_head.weight"]  # tied checkpoints store the matrix once, as the embedding
    sd = {}
    for name, t in _load_weight_files(d).items():
        name = name.removeprefix("model.")
        if config.tie_embeddings and name == "lm_head.weight":
            continue  # some tied checkpoints carry a copy anyway; the tie wins, as in transformers
        sd[name] = t
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{d}: checkpoint does not match config.json: missing tensors {missing}, "
                         f"unexpected tensors {unexpected}")
    bad = [f"{k}: expected {tuple(expected[k])}, found {tuple(t.shape)}" for k, t in sd.items() if t.shape != expected[k]]
    if bad:
        raise ValueError(f"{d}: shape mismatch: " + "; ".join(bad))
    sd = {k: t.to(device=device, dtype=dtype) for k, t in sd.items()}  # a no-op (still mmap) when already there
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)  # the post-load hook re-ties a tied head
    model.source_dir = str(d)
    return model


# files a checkpoint folder carries besides the weights, copied along by save_pretrained if the source has them
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
               "added_tokens.json", "chat_template.jinja", "generation_config.json")


def save_pretrained(model, out_dir, max_shard_bytes=2**31) -> None:
    """Write model to out_dir in HF layout: config.json + model.safetensors, or shards model-0000i-of-0000n.safetensors
    plus model.safetensors.index.json when the weights exceed max_shard_bytes. Tied weights are written once (no
    lm_head.weight), as transformers does. Every file is written atomically; weight files of another layout left
    from an earlier save are removed afterwards. Tokenizer files from model.source_dir are copied along."""
    model = getattr(model, "module", model)  # DistributedDataParallel wrapper
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper (its state_dict keys carry a prefix)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, t in model.state_dict().items():
        if model.config.tie_embeddings and k == "lm_head.weight":
            continue
        tensors[k if k == "lm_head.weight" else "model." + k] = t
    dtype = next(iter(tensors.values())).dtype
    # shards: fill greedily in state_dict order
    shards, cur, cur_bytes = [], {}, 0
    for k, t in tensors.items():
        nb = t.numel() * t.element_size()
        if cur and cur_bytes + nb > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[k] = t
        cur_bytes += nb
    shards.append(cur)
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", tensors)
        written = {"model.safetensors"}
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {}
        for name, shard in zip(names, shards):
            write_safetensors(out / name, shard)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        # the index goes last: it is what makes the shards a checkpoint
        atomic_write(out / "model.safetensors.index.json", lambda f: f.write(json.dumps(index, indent=2).encode()))
        written = set(names) | {"model.safetensors.index.json"}
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        if stale.name not in written:
            stale.unlink()
    hf = config_to_hf(model.config, dtype)
    atomic_write(out / "config.json", lambda f: f.write((json.dumps(hf, indent=2) + "\n").encode()))
    src = getattr(model, "source_dir", None)
    if src and pathlib.Path(src).resolve() != out.resolve():
        for fn in _SIDE_FILES:
            if (pathlib.Path(src) / fn).is_file():
                atomic_write(out / fn, lambda f, fn=fn: f.write((pathlib.Path(src) / fn).read_bytes()))
