"""
The decoder: one configurable Qwen2/Llama-style transformer, its KV cache, and the numerics it runs in.

    model = Transformer(ModelConfig(...))                    # checkpoint.py loads / saves weights (HF folders, .pt)
    logits = model(idx)                                      # (B, T, vocab)
    loss = model(idx, targets)                               # fp32 scalar, -100 = ignore
    h = model.hidden(idx)                                    # (B, T, C) final normalised hidden states
    device, ctx, scaler, dtype = setup_numerics("auto", "auto")   # the one place numerics are decided

Architecture: token embedding -> N x [RMSNorm -> GQA self-attention with rotary embedding (HF "rotate-half"
layout) -> residual, RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> output head (tied to the embedding or
not). Module names inside match the HF names minus the leading "model." so checkpoints map one to one.

Numerics: RMSNorm, rotary angles and the loss are computed in fp32 whatever the weight / autocast dtype;
softmax happens inside scaled_dot_product_attention (fp32 accumulation in every backend).
Under autocast, fp32 weights that train can carry working copies in the autocast dtype
(Transformer.set_working_dtype): the Linear layers multiply by those, recast only when a weight changes.
Only torch and the standard library are imported here (tests check it); on a GPU, the decode step's attention
kernel (decode_attention.py, Triton) on first use.
"""

import functools
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch._functorch.config  # activation_memory_budget (compile_blocks)
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention
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
    # 4.2M in the blocks + 16.8M tied embedding at a 65,536-token vocab = ~21M: the embedding dominates.
    "scratch-22m": ModelConfig(vocab_size=65536, n_layer=4, n_head=4, n_kv_head=4, n_embd=256, intermediate_size=1024,
                               max_seq_len=512, rope_theta=10000.0, qkv_bias=False, tie_embeddings=True),
    # Llama-3.2-1B shapes: 0.97B in the blocks + 0.31B tied embedding at the Qwen vocab (151,936).
    "scratch-1b": ModelConfig(n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, intermediate_size=8192,
                              max_seq_len=4096, rope_theta=500000.0, qkv_bias=False, tie_embeddings=True),
    # Llama-2-7B shapes with GQA (8 kv heads): 5.7B in the blocks + 2 x 0.62B untied embedding/head = ~6.9B.
    "scratch-7b": ModelConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, intermediate_size=11008,
                              max_seq_len=4096, rope_theta=500000.0, qkv_bias=False, tie_embeddings=False),
}


# -----------------------------------------------------------------------------
# the model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 and cast back before the weight, in HF's order, so bf16 results match too
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(pos, head_dim, theta):
    """cos, sin (B, 1, T, head_dim) for positions pos (B, T). Computed from the positions on every call (not a
    cached table) so per-row positions of packed/left-padded batches cost nothing extra, and in fp32 so a bf16
    model still gets exact angles; there is no buffer for model.to(bfloat16) to round."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    freqs = pos[..., None].float() * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # HF "rotate-half" layout: first half / second half pairs
    return emb.cos()[:, None], emb.sin()[:, None]  # fp32; cast to the q/k dtype at use, as HF does


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# Kernels allowed for masked attention (packed rows, KV-cache decoding). cuDNN attention is left out on
# purpose: on an H200 with torch 2.11 it returned NaN gradients for a real Qwen2 0.5B model on a GSM8K batch
# right-padded to 320 tokens (train examples 6608-6623), where the memory-efficient and math kernels gave
# finite, equal results. That is the NaN the Hugging Face Trainer recipe hits at ~step 350. The unmasked
# causal path (flash) is unaffected.
MASKED_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


class _ToWorking(torch.autograd.Function):
    """A weight's working copy in the compute dtype, standing in for the weight itself: the forward costs
    nothing (the copy was made once, at the last optimizer step) and the gradient reaches the fp32 weight
    upcast to fp32, as through autocast's cast. So the numbers are autocast's, bit for bit."""

    @staticmethod
    def forward(ctx, weight, working):
        ctx.dtype = weight.dtype
        return working.view_as(working)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


class Linear(nn.Linear):
    """nn.Linear that, given a working copy of its fp32 weight in the autocast dtype (Transformer.
    set_working_dtype), multiplies by that copy under autocast instead of casting the weight at every call:
    autocast's cast reads 4 and writes 2 bytes per weight for each forward (a decode step or a micro-batch),
    the copy is refreshed once per weight change."""
    working = None  # (out, in) in the compute dtype, or None

    def forward(self, x):
        w = self.working
        if w is None or not torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            w = _ToWorking.apply(self.weight, w)
        return F.linear(x, w, self.bias)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.q_proj = Linear(C, config.n_head * hd, bias=config.qkv_bias)
        self.k_proj = Linear(C, config.n_kv_head * hd, bias=config.qkv_bias)
        self.v_proj = Linear(C, config.n_kv_head * hd, bias=config.qkv_bias)
        self.o_proj = Linear(config.n_head * hd, C, bias=False)

    def forward(self, x, cos, sin, mask, kv=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # no-ops: hidden() casts them once to the compute dtype
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_head // self.n_kv_head
        if kv is not None:  # through the KV cache: eager, also inside a compiled block (see cache_attention)
            y = cache_attention(q, k, v, mask, kv, rep)
        elif isinstance(mask, BlockMask):
            # packed rows (training, compiled blocks): one fused kernel that skips the blocks no document
            # reaches, reads each kv head once for its query group, and never materialises a (T, T) mask
            y = flex_attention(q, k, v, block_mask=mask, enable_gqa=rep > 1)  # (B, nh, T, hd)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)  # (B, nh, T, hd)
        else:
            # packed rows (training): SDPA's enable_gqa only works in the flash (no mask) and
            # math kernels, and math would materialise (B, nh, T, S) fp32 scores, so repeat the
            # kv heads for the memory-efficient kernel (cheaper here than folding, which would
            # repeat the (T, T) mask rep times)
            k = k.repeat_interleave(rep, dim=1)  # (B, nh, S, hd)
            v = v.repeat_interleave(rep, dim=1)  # (B, nh, S, hd)
            with sdpa_kernel(MASKED_SDPA_BACKENDS):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


DECODE_WITH_TRITON = True  # False: the flash kernel's variable-length form instead (bench.py gen --flash-decode)


@functools.cache
def triton_decode():
    """decode_attention.decode_attention, or None without Triton (torch's CUDA builds ship it; CPU and Apple
    builds do not)."""
    try:
        from decode_attention import decode_attention
    except ImportError:
        return None
    return decode_attention


@torch.compiler.disable
def cache_attention(q, k, v, mask, kv, rep):
    """Attention through the KV cache: write this call's keys/values k, v (B, nkv, T, hd) into the static
    buffers, then attend q (B, nh, T, hd) -> (B, nh, T, hd). Always eager: a compiled block (the engine's
    decode step) breaks its graph around this call. Compiled, the write into the cache (a graph input) and
    the attention kernel's layout rules made inductor copy each layer's whole key and value buffers twice a
    step (a scatter into a fresh buffer, then a copy back): 2.0 of 5.7 ms of kernels per decode step at 512
    slots on an H200. Eager, the write touches only the B*T new positions.

    kv = (k_buf, v_buf, rows, slots): buffers (B_cache, L, nkv, hd); rows (B, 1) and slots (B, T) long tensors
    (fixed shapes, no Python ints, cf. gpt-fast's input_pos). mask, built once for all layers by hidden():
      - None: a prefill, which needs only its own tokens (causal attention within them; the flash kernel);
      - (cu_q, cu_k, used): one token per row on a GPU, every cache row in order (the engine's decode step): the
        Triton kernel (decode_attention.py) writes the new key and value at used - 1 (= slots) and attends over
        each row's `used` (B,) int32 filled positions, split over programs, each kv head read once for its
        query group; without Triton, the flash kernel's variable-length form (its time follows the longest row);
      - else an additive (B, 1, rep*T, L) mask over all L slots of every row (fixed shapes; CPU, fp32)."""
    k_buf, v_buf, rows, slots = kv
    decode = triton_decode() if isinstance(mask, tuple) and DECODE_WITH_TRITON else None
    hd = q.shape[-1]  # the kernel's tiles: a power of two, 16 at least (Qwen's 64 and 128)
    if decode and hd >= 16 and hd & (hd - 1) == 0 and q.dtype == k_buf.dtype:
        y = decode(q[:, :, 0], k_buf, v_buf, mask[2], k_new=k[:, :, 0], v_new=v[:, :, 0])  # (B, nh, hd)
        return y[:, :, None]
    k_buf[rows, slots] = k.transpose(1, 2).to(k_buf.dtype)  # the indexed view is (B, T, nkv, hd)
    v_buf[rows, slots] = v.transpose(1, 2).to(v_buf.dtype)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)
    B, nh, T, _ = q.shape
    L, nkv = k_buf.shape[1], k_buf.shape[2]
    if isinstance(mask, tuple):
        cu_q, cu_k, used = mask
        y = torch.ops.aten._flash_attention_forward(
            q.reshape(B, nh, hd), k_buf.view(B * L, nkv, hd), v_buf.view(B * L, nkv, hd), cu_q, cu_k, 1, L, 0.0,
            False, False, seqused_k=used)[0]  # (B, nh, hd)
        return y.view(B, nh, 1, hd)
    # fold the `rep` query heads that share a kv head into the query axis, (B, nh, T, hd) -> (B, nkv, rep*T,
    # hd), so the masked kernel reads each cached kv head once; repeating the keys/values instead would copy
    # the whole cache rep times, every step
    q = q.reshape(B, nkv, rep * T, hd)
    with sdpa_kernel(MASKED_SDPA_BACKENDS):
        k, v = k_buf.transpose(1, 2).to(q.dtype), v_buf.transpose(1, 2).to(q.dtype)  # (B, nkv, L, hd) views
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.reshape(B, nh, T, hd)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.n_embd, bias=False)

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



def doc_block_mask(doc, block=128):
    """The flex-attention BlockMask of packed rows with document ids doc (B, T): token q attends to token k
    iff both belong to the same document and k <= q. Built once per batch from the ids, from the dense (B, T,
    T) mask reduced to blocks of block x block: a block that is all True is "full" (the kernel skips the mask
    there), one that is partly True is "partial", one all False is skipped. This is what create_block_mask
    computes, in a handful of tensor ops rather than its vmap over the mask function, which cost ~3 ms of CPU
    per step on the host (time the GPU then waited for)."""
    B, T = doc.shape
    n = -(-T // block)
    ar = torch.arange(T, device=doc.device)
    dense = (doc[:, :, None] == doc[:, None, :]) & (ar[None, :] <= ar[:, None])  # (B, T q, T k)
    dense = F.pad(dense, (0, n * block - T, 0, n * block - T)).view(B, n, block, n, block)
    full = dense.all(dim=4).all(dim=2)  # (B, nq, nk); a block cut by the end of the row is never full
    partial = dense.any(dim=4).any(dim=2) & ~full

    def blocks(m):  # (B, nq, nk) bool -> per query block: how many kv blocks, and their indices first
        order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True)
        # (B, 1, nq), (B, 1, nq, nk)
        return m.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    def same_doc_causal(b, h, q, k):
        return (doc[b, q] == doc[b, k]) & (k <= q)
    return BlockMask.from_kv_blocks(*blocks(partial), *blocks(full), BLOCK_SIZE=block, mask_mod=same_doc_causal,
                                    seq_lengths=(T, T))


class LinearTokenLoss(torch.autograd.Function):
    """A loss over the log-probabilities of targets t (N,) under logits h @ weight.T, for h (N, C) in the
    compute dtype and weight (V, C): loss = sum_n fn(logp_n), fn = -logp (cross-entropy) by default. In chunks
    of `chunk` rows, with the gradients computed in the forward pass chunk by chunk (cf. Liger-Kernel's fused
    linear cross-entropy): the (chunk, V) logits exist for one chunk at a time and are not recomputed in
    backward, and weight's gradient accumulates over the chunks in fp32. ce(logits, t, grad, coef) -> (logp, d
    loss / d logits) is Transformer._chunk_ce. Backward only scales the stored gradients.

    fn(logp, sl) -> (n,) per-token losses of the chunk's log-probs logp (n,) fp32; sl is the chunk's slice of
    the N positions, for per-token data such as advantages or old log-probs. It must be elementwise (token n's
    loss depends on logp_n alone), which is what lets each chunk's gradient be known in the forward pass: the
    policy gradient, PPO's clipped ratio and a KL penalty to a reference policy all are. Returns (loss, logp
    (N,)); logp is detached. Against checkpointed per-chunk autocast cross-entropy (H100, 4,500 rows of width
    896, vocab 151,936): 12.3 ms instead of 18.3 per forward + backward, and the weight gradient's error
    against fp32 1.2e-5 instead of 1.6e-3 (dev/README.md)."""

    @staticmethod
    def forward(ctx, h, weight, t, chunk, ce, fn, working=None):
        with torch.autocast(h.device.type, enabled=False):  # every cast below is explicit
            # (V, C): the weight's working copy in h's dtype, or one cast per call
            w = working if working is not None else weight.to(h.dtype)
            dh = torch.empty_like(h)  # (N, C)
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] \
                else None
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            logp = torch.empty(h.size(0), dtype=torch.float32, device=h.device)  # (N,)
            for i in range(0, h.size(0), chunk):
                hc, tc, sl = h[i:i + chunk], t[i:i + chunk], slice(i, i + chunk)  # (n, C), (n,)
                logits = hc @ w.T  # (n, V)
                if fn is None:  # cross-entropy: d loss / d logp = -1, the kernel's own gradient
                    lp, g = ce(logits, tc)  # g (n, V) in h's dtype
                    loss += (-lp).sum()
                else:
                    lp = ce(logits, tc, False)[0]
                    # d fn / d logp, elementwise: the chunk's gradient scale per row
                    with torch.enable_grad():
                        lp_ = lp.detach().requires_grad_()
                        lt = fn(lp_, sl)  # (n,)
                        dl, = torch.autograd.grad(lt.sum(), lp_)
                    loss += lt.detach().sum()
                    g = ce(logits, tc, True, -dl)[1]
                logp[sl] = lp
                torch.mm(g, w, out=dh[sl])
                if dw is not None and g.dtype == torch.float32:
                    dw.addmm_(g.T, hc)
                # bf16 / fp16 products summed into fp32 by the matmul itself
                elif dw is not None and h.is_cuda:
                    torch.addmm(dw, g.T, hc, out_dtype=torch.float32, out=dw)
                elif dw is not None:  # no mixed-dtype matmul on this device: in fp32
                    dw.addmm_(g.T.float(), hc.float())
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(logp)
        return loss, logp

    @staticmethod
    def backward(ctx, grad_loss, grad_logp):
        dh, dw = ctx.saved_tensors
        gh = (dh.float() * grad_loss).to(dh.dtype)
        gw = None if dw is None else (dw * grad_loss).to(ctx.weight_dtype)
        return gh, gw, None, None, None, None, None


class KVCache:
    """Static KV cache for batched incremental decoding: model.make_cache(B, max_len); engine.py drives it.

        k, v   n_layer tensors (B, max_len, n_kv_head, head_dim)   keys / values of every layer (a row's
               positions one after the other: flattened, the layout of the flash kernel's variable-length form)
        pos    (B,) long    tokens each row holds = the slot, and the position, of the row's next token

    Rows are independent: a row's tokens sit at slots 0..pos-1 with positions equal to their slots (no
    padding inside a row), so it gives the logits it would give alone whatever the other rows hold, and it
    can be restarted with a new prompt while the others keep decoding. Positions live in a tensor and every
    shape is fixed, so a one-token decode step has no Python value that changes from step to step (it can be
    captured once as a CUDA graph). Writes past max_len land in the last slot: the caller sizes the cache
    (there is no check, since a check would cost a host sync every step). Example (greedy, prompts
    right-padded to (B, P), `n` real tokens):

        cache = model.make_cache(B, max_len=P + max_new)
        logits = model(idx, cache=cache, rows=torch.arange(B), lengths=n, last=n - 1)   # prefill -> (B, V)
        for _ in range(max_new):
            nxt = logits.argmax(-1)                                   # (B,)
            logits = model(nxt[:, None], cache=cache)[:, -1]          # every row appends one token -> (B, V)
    """

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, device=None, dtype=torch.float32):
        # one tensor per layer, not views of one: written from compiled code, a view's write was functionalised
        # into a copy of the whole base (24 copies of the cache per step, 46 ms at 512 slots on an H200); the
        # write is eager now (cache_attention), and per-layer tensors keep any later compile of it safe
        shape = (batch_size, max_len, n_kv_head, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.pos = torch.zeros(batch_size, device=device, dtype=torch.long)
        self.max_len = max_len


def _retie(model, incompatible_keys):
    model.lm_head.weight = model.embed_tokens.weight


def run_block(block, x, cos, sin, mask, kv):
    """block(x, ...): the function engine.Engine compiles for decoding. The block is an argument, so the
    code compiled once serves every layer (their weights are its inputs): a 24-layer model compiles in
    seconds, where compiling the whole model's step unrolls every layer (on a 2-core CPU, 24 small layers:
    6.8 s against 49.7 s)."""
    return block(x, cos, sin, mask, kv)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one Parameter, one gradient
            # load_state_dict(assign=True) (meta-device loading) replaces both Parameters with two different
            # ones: tie them again after every load, whoever calls it
            self.register_load_state_dict_post_hook(_retie)
        # blocks recomputed in backward when training: 0 none, n the first n, -1 all
        self.grad_checkpointing = 0
        # set by compile_blocks(): torch.compile'd blocks for the training forward
        self.compiled_blocks = None
        self.value_head = None  # add_value_head(): a verifier's MLP on the final hidden states
        self.loss_chunk = 1024  # rows of the vocab projection per chunk in the loss
        self.chunk_ce = self._chunk_ce  # compile_blocks() compiles it
        self.source_dir = None  # set by checkpoint.from_pretrained: where config/tokenizer files came from
        # set_working_dtype(): the dtype of the working copies, and [layer, weight, version of the copy] for
        # each Linear layer that has one
        self.working_dtype, self.working = None, []
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

    @torch.no_grad()
    def set_working_dtype(self, dtype):
        """Give every Linear layer whose weight trains in fp32 a working copy in `dtype`, the autocast dtype
        (None: drop them): fp32 master weights (what the optimizer updates and checkpoints hold) with bf16
        working weights that the forward uses (training and the engine) with no cast per call. The copies
        follow the weights by themselves: every forward (and Engine.generate) first recasts those whose
        weight changed in place since (a load, an optimizer step), by the weights' version counters (fused
        AdamW leaves them as they were: training.apply_update bumps them). Costs the copies' memory, 2 bytes
        per weight in bf16, for as long as they are kept (compiled blocks recompute autocast's casts in the
        backward rather than keep them: 1 GiB more at the peak of a 0.5B training step)."""
        self.working, self.working_dtype = [], dtype
        for m in self.modules():
            if isinstance(m, Linear):
                w = m.weight
                keep = dtype is not None and w.requires_grad and w.dtype == torch.float32 and dtype != w.dtype
                m.working = w.detach().to(dtype) if keep else None
                if keep:
                    self.working.append([m, w, w._version])  # the layer, its weight, the copy's version

    @torch.no_grad()
    def refresh_working(self):
        """Recast the working copies whose weight changed since they were made (see set_working_dtype); a
        weight replaced by another tensor (load_state_dict(assign=True)) gets a new copy."""
        for e in self.working:
            m = e[0]
            if m.weight is not e[1]:  # replaced (load_state_dict(assign=True)): a new copy
                e[1], e[2], m.working = m.weight, m.weight._version, m.weight.detach().to(self.working_dtype)
        stale = [e for e in self.working if e[1]._version != e[2]]
        if stale:
            torch._foreach_copy_([m.working for m, _, _ in stale], [w.detach() for _, w, _ in stale])
            for e in stale:
                e[2] = e[1]._version

    def forward(self, idx, targets=None, *, pos=None, doc=None, cache=None, rows=None, lengths=None, last=None,
                reduction="mean", loss_index=None, loss_fn=None, decode_block=None):
        """idx (B, T) long token ids; pos, doc, cache, rows, lengths, decode_block as in hidden().

        loss_fn(model, x) -> loss: any objective, as a function of the final hidden states x (B, T, C);
            training.py holds them (cross-entropy, a verifier's value loss, the policy gradient). Through
            forward, so that DDP and FSDP see the call.
        targets (B, T) long with -100 = ignore: returns the fp32 cross-entropy (token_loss), reduction "mean"
            (over supervised tokens) or "sum" (0, not NaN, when nothing is supervised).
            loss_index (N,) long: the flat positions where targets != -100, if the caller has them (data.collate
            computes them on the CPU): then finding them costs no host sync.
        last (B,) long: return only the logits at position last[b] of each row, (B, V).
        Else returns logits (B, T, V) in the compute dtype.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        x = self.hidden(idx, pos=pos, doc=doc, cache=cache, rows=rows, lengths=lengths,
                        decode_block=decode_block)  # (B, T, C)
        if loss_fn is not None:
            return loss_fn(self, x)
        if targets is not None:
            loss, logp = self.token_loss(x, targets, loss_index)
            return loss / max(1, logp.numel()) if reduction == "mean" else loss
        if last is not None:
            x = x[torch.arange(x.size(0), device=x.device), last]  # (B, C)
        return self.lm_head(x)  # (B, T, V) or (B, V)

    def hidden(self, idx, *, pos=None, doc=None, cache=None, rows=None, lengths=None, decode_block=None):
        """The final normalised hidden states (B, T, C) of idx (B, T).

        pos (B, T) long: positions (default arange(T); with a cache, the slots the tokens go to).
        doc (B, T) int: document ids of a packed row: token i attends to j iff doc[i] == doc[j] and j <= i.
            Pass restarted positions in `pos` too, so each document sees the positions it would see alone.
        cache: a KVCache (see its docstring), in one of two ways:
          - prefill, with rows (B,) long: cache rows `rows` start over with these tokens, right-padded, lengths
            (B,) long real tokens each (default T). They go to slots 0..T-1, pos[rows] becomes lengths.
          - append, without rows: every cache row (B must be the cache's batch) appends the T tokens at its own
            pos and attends to all its earlier slots; pos advances by T.
        decode_block: run_block compiled (engine.Engine), which appending runs each block through.
        """
        B, T = idx.shape
        cfg = self.config
        # recast the stale working copies (a CUDA graph replays without this: Engine.generate does it first;
        # torch.compile of the whole model cannot read version counters)
        if self.working and not torch.compiler.is_compiling():
            self.refresh_working()
        mask, kv_index = None, None
        arange_T = torch.arange(T, device=idx.device)
        # the dtype q and k have in attention: the autocast dtype if on, else the weights'
        dev = idx.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.embed_tokens.weight.dtype
        if cache is not None:
            if doc is not None or pos is not None:
                raise ValueError("with a KV cache, positions come from the cache: pass neither pos nor doc")
            if rows is None:  # append: query t of row b sits at slot pos[b] + t and sees slots <= its own
                pos = cache.pos[:, None] + arange_T  # (B, T)
                if T == 1 and idx.is_cuda and dtype in (torch.bfloat16, torch.float16):
                    # the flash kernel's variable-length form (see cache_attention): row b is keys b*L ..
                    # b*L + pos[b] of the flattened cache; built once here for all layers
                    cu_q = torch.arange(B + 1, device=idx.device, dtype=torch.int32)  # (B + 1,)
                    # a finished slot keeps stepping past max_len: it never reads beyond its own row
                    used = (pos[:, 0] + 1).clamp(max=cache.max_len).to(torch.int32)  # (B,)
                    mask = (cu_q, cu_q * cache.max_len, used)
                else:
                    slots = torch.arange(cache.max_len, device=idx.device)  # (L,)
                    mask = (slots <= pos[..., None])[:, None]  # (B, 1, T, L)
                    # the layout of the folded query heads (see cache_attention), as an additive mask: built
                    # once here rather than repeated and converted from bool in every layer
                    mask = torch.zeros(mask.shape, dtype=dtype, device=idx.device).masked_fill_(~mask, float("-inf"))
                    mask = mask.repeat(1, 1, cfg.n_head // cfg.n_kv_head, 1)  # (B, 1, rep*T, L)
                kv_index = (torch.arange(B, device=idx.device)[:, None], pos.clamp(max=cache.max_len - 1))
                cache.pos += T
            else:  # prefill: plain causal attention within idx; right padding never reaches a real token
                pos = arange_T[None].expand(B, T)
                kv_index = (rows[:, None], pos)
                cache.pos[rows] = lengths if lengths is not None else T
        elif doc is not None and self.compiled_blocks is not None:
            # flex attention inside the compiled blocks (built once, for all layers)
            mask = doc_block_mask(doc)
        elif doc is not None:
            same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            mask = (same & causal)[:, None]  # (B, 1, T, T); the diagonal is always True, so no empty rows
        if pos is None:
            pos = arange_T[None].expand(B, T)
        cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
        cos, sin = cos.to(dtype), sin.to(dtype)  # once, not in every layer

        x = self.embed_tokens(idx)  # (B, T, C)
        n_ckpt = self.grad_checkpointing if self.grad_checkpointing >= 0 else cfg.n_layer
        recompute = self.training and cache is None and torch.is_grad_enabled()
        # decoding (a cache, no prefill) may go through the caller's compiled run_block: one compile, every layer
        decode = decode_block if cache is not None and rows is None else None
        for i, block in enumerate(self.layers):
            if cache is not None:
                kv = (cache.k[i], cache.v[i], *kv_index)
                x = decode(block, x, cos, sin, mask, kv) if decode is not None else block(x, cos, sin, mask, kv)
                continue
            if self.compiled_blocks is not None:
                block = self.compiled_blocks[i]
            # activation checkpointing: keep the block's input, recompute the rest
            if recompute and i < n_ckpt:
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask)
        return self.norm(x)  # (B, T, C)

    def token_loss(self, x, targets, index=None, fn=None):
        """A loss over the log-probabilities of the supervised targets: hidden states x (B, T, C), targets (B,
        T) with -100 = ignore, index (N,) their flat positions if known (else found here: a host sync).
        Returns (loss, logp): loss = sum over the N positions of fn(logp, sl) (LinearTokenLoss; default -logp,
        the summed fp32 cross-entropy, 0 and not NaN when N = 0), logp (N,) fp32 the targets'
        log-probabilities, detached. Only supervised hidden states are projected to the vocabulary,
        self.loss_chunk rows at a time, so fp32 logits for every position never exist; with gradients on, each
        chunk's are computed with its loss."""
        t = targets.reshape(-1)
        if index is None:
            index = (t != -100).nonzero().squeeze(1)  # (N,) a host sync: N varies with the batch
        h = x.reshape(-1, x.size(-1)).index_select(0, index)  # (N, C) supervised positions only
        t = t.index_select(0, index)  # (N,)
        if h.size(0) == 0:  # nothing supervised: 0 (not NaN), still in the graph
            return x.reshape(-1)[:1].float().sum() * 0.0, torch.zeros(0, device=x.device)
        # the vocab projection runs in the compute dtype (autocast's, else the weights'): the hidden
        # states and the weight are cast once here, not once per chunk (under autocast the weight's
        # cast was ~2 ms a step at 0.5B)
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        h, w, n = h.to(dt), self.lm_head.weight, self.loss_chunk
        working = self.lm_head.working  # set_working_dtype's copy in the compute dtype, if any
        working = working if working is not None and working.dtype == dt else None
        if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
            return LinearTokenLoss.apply(h, w, t, n, self.chunk_ce, fn, working)
        w = working if working is not None else w.to(dt)
        logp = [self.chunk_ce(h[i:i + n] @ w.T, t[i:i + n], False)[0] for i in range(0, h.size(0), n)]
        fn = fn or (lambda lp, sl: -lp)
        loss = sum(fn(lp, slice(i * n, i * n + lp.numel())).sum() for i, lp in enumerate(logp))
        return loss, torch.cat(logp)

    @staticmethod
    def _chunk_ce(logits, t, grad=True, coef=None):
        """fp32 log-probabilities logp (n,) of targets t (n,) under logits (n, V), and with grad the gradient
        of the cross-entropy -logp with respect to the logits, softmax - one_hot(t), in the logits' dtype,
        each row scaled by coef (n,) if given. compile_blocks() compiles it: then it is one pass over the
        logits (the fp32 upcast, log-sum-exp, gather and gradient fused)."""
        x = logits.float()  # (n, V)
        lse = torch.logsumexp(x, dim=-1)  # (n,)
        logp = x.gather(1, t[:, None]).squeeze(1) - lse
        if not grad:
            return logp, None
        g = torch.exp(x - lse[:, None])  # softmax
        g.scatter_add_(1, t[:, None], torch.full_like(lse[:, None], -1.0))
        if coef is not None:
            g = g * coef[:, None]
        return logp, g.to(logits.dtype)

    def add_value_head(self):
        """A verifier's head (cf. Cobbe et al. 2021): an MLP on the final hidden state of
        every token, predicting (as a logit) whether the solution's final answer will be
        correct. fp32, on the model's device."""
        C = self.config.n_embd
        dev = self.embed_tokens.weight.device
        self.value_head = nn.Sequential(nn.Linear(C, C, device=dev), nn.GELU(), nn.Linear(C, 1, device=dev),
                                        nn.Flatten(0))  # (..., C) -> (...)
        nn.init.zeros_(self.value_head[2].weight)  # starts at p = sigmoid(b): no opinion
        return self.value_head

    @torch.no_grad()
    def value(self, idx, last):
        """Verifier scores: sigmoid of the value head at position last[b] of each row of idx (B, T) -> (B,)."""
        x = self.hidden(idx)
        h = x[torch.arange(idx.size(0), device=idx.device), last]  # (B, C)
        return torch.sigmoid(self.value_head(h.to(self.value_head[0].weight.dtype)).float())

    def compile_blocks(self, compile=True, activation_budget=1.0):
        """torch.compile each block for the training forward (KV-cache decoding keeps the eager blocks: it has
        its own CUDA graph). One block's code compiles once and serves every layer, so the first step comes in
        seconds, not the minutes a whole-model compile takes; packed rows then run flex attention inside the
        blocks. compile=False keeps the blocks eager but still takes the flex-attention path (tests,
        debugging). activation_budget < 1: the compiled backward keeps that fraction of a block's activations
        and recomputes the rest from them, cheapest first (norms, SiLU, casts: not the matmuls). At the 0.5B
        shape 0.7 took the step's peak from 15.4 to 12.0 GiB with no consistent cost in speed (six same-run
        comparisons on H100s: -18% to +12%, median +2%); 0.5 gave 10.2 GiB but 13% slower steps. Read by the
        partitioner when a block first compiles (a process-wide setting of torch). Ignored when every block is
        checkpointed (grad_checkpointing -1, set it first): only one block's activations exist at a time, and
        the budget would make the recomputation recompute again (the 1.5B config: 1.12 s per step without it,
        1.63 s with it, on two H100s)."""
        every_block = self.grad_checkpointing < 0 or self.grad_checkpointing >= self.config.n_layer
        torch._functorch.config.activation_memory_budget = 1.0 if every_block else activation_budget
        self.compiled_blocks = [torch.compile(b, dynamic=False) if compile else b for b in self.layers]
        # the loss's per-chunk (n, V) cross-entropy and its gradient as fused kernels instead of eager's
        # upcast copy, log-sum-exp, gather and softmax over fp32 logits. Dynamic in n: a batch's last chunk is
        # shorter, and this way it costs no recompile.
        self.chunk_ce = torch.compile(self._chunk_ce, dynamic=True) if compile else self._chunk_ce

    def uncompile(self):
        """Back to the plain eager path: boolean-mask SDPA for packed rows and the eager loss."""
        self.compiled_blocks, self.chunk_ce = None, self._chunk_ce

    def make_cache(self, batch_size, max_len, device=None, dtype=None) -> KVCache:
        """A KVCache with static (batch_size, max_len) buffers; by default on the model's device, in the
        autocast dtype when called under autocast (keys/values come out in it: storing them so is lossless and
        halves the cache), else in the weights' dtype. This is the one place the cache dtype is decided."""
        p = self.embed_tokens.weight
        cfg = self.config
        device = torch.device(device or p.device)
        if dtype is None:
            autocast = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if autocast else p.dtype
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim, device=device, dtype=dtype)

    def num_params(self, non_embedding=False) -> int:
        """Parameter count, a tied matrix counted once. non_embedding=True leaves out the token embedding and
        the output head (the vocab x n_embd matrices) - the usual "model size" for scaling laws."""
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
# numerics: the one place that decides device, compute dtype and loss scaling (train.py and sample.py call it)


def setup_numerics(device="auto", dtype="auto"):
    """-> (device str, autocast context, GradScaler or None, dtype name). Raises ValueError for a
    device or dtype this machine cannot run. For training, weights and optimizer state stay fp32 (a
    bf16 weight cannot absorb a 1e-5 relative update) and matmuls run in the compute dtype under
    autocast; the scaler exists only for fp16."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    dev_type = device.split(":")[0]
    if dev_type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device must be auto, cuda, cuda:N, mps or cpu, got {device!r}")
    if dev_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use device=auto or cpu)")
    if dev_type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use device=auto or cpu)")
    if dtype == "auto":
        if dev_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype == "float16" and dev_type != "cuda":
        raise ValueError(f"dtype float16 needs CUDA (use bfloat16 or float32 on {dev_type})")
    ctx = nullcontext() if dtype == "float32" else torch.autocast(dev_type, dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler("cuda") if dtype == "float16" else None
    if dev_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, ctx, scaler, dtype


def gpu_peak_flops(device, dtype):
    """Dense bf16/fp16 tensor-core peak of the GPU (datasheet), for MFU; None if unknown or not on CUDA."""
    if not device.startswith("cuda") or dtype == "float32":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H100", 989e12), ("H200", 989e12), ("H20", 148e12), ("A100", 312e12), ("A10G", 125e12),
                      ("L40S", 362e12), ("L4", 121e12), ("4090", 165e12), ("3090", 71e12), ("V100", 125e12)):
        if key in name:
            return peak
    return None
