"""
The generation engine: batched decoding with a static KV cache, and the one generate-and-grade loop that
train.py's periodic eval, sample.py and any later tool share.

    samples = generate(model, prompts, Sampling(256, temperature=0.7, stop_ids=tok.stop_ids, seed=0))
    summary, records = evaluate(model, tok, problems, Sampling(512), "chat", data.SYSTEM_PROMPT)

Evaluation protocol (sample.py --eval; the README quotes it). One setting per dataset, so numbers are
comparable:
  - prompt: data.render_prompt(problem) in chat format (the model's ChatML template) with the system prompt
    data.SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}." A nanomath
    checkpoint is prompted the way it was trained (its config's prompt_format / system_prompt), a Hugging Face
    model in chat format if its tokenizer has a chat template, else in plain format (data.PLAIN_TEMPLATE).
  - decoding: greedy, stopping at any of the tokenizer's end tokens (for Qwen both <|im_end|> and
    <|endoftext|>), at most data.DATASETS[name].max_new_tokens new tokens (never past max_seq_len).
  - grading: grade.grade(response, gold): the answer in <answer> tags, else the last \\boxed{} (then "####",
    "the answer is", last number), compared by mathematical equivalence. accuracy = correct / n; format rate =
    share of responses whose answer came in a recognised form (not the last-number fallback).
  - with num_samples k > 1 (and temperature > 0): accuracy is the mean over all k*n samples, pass@k the share
    of problems with at least one correct sample, maj@k the accuracy of the majority answer (answers grouped
    by grade.is_equiv, ties to the earliest).
"""
import dataclasses
import os
import sys
import time
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import grade as G
from model import Transformer, run_block


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: one object through generate, evaluate, sample.py and the evals in training."""
    max_new_tokens: int = 256  # per sequence (and never past the model's max_seq_len)
    temperature: float = 0.0   # 0 = greedy (argmax)
    top_k: int = 0             # keep the k most likely tokens (0 = all)
    top_p: float = 1.0         # keep the smallest set of tokens with this much mass (1 = all)
    seed: int = 0              # a sequence's draws depend on (seed, its index) alone
    stop_ids: tuple = ()       # a sequence ends at the first of these (evaluate: the tokenizer's when empty)


# -----------------------------------------------------------------------------
# decoding


VOCAB_BLOCK = 128  # vocabulary entries per block of the two-level inverse CDF (sample_next)


def token_sums(logits, temperature, stats):
    """The reductions over the vocabulary that choosing the next token and its statistics need, from logits
    (B, V) in one pass (the engine's decode step compiles this into a kernel or two; eager, it is several
    passes over fp32 copies): for a draw at temperature T > 0, the row max m (B, 1) of x = logits / T in fp32
    and the sums of exp(x - m) over consecutive blocks of VOCAB_BLOCK entries (B, C = ceil(V / VOCAB_BLOCK));
    with stats, at temperature 1 (the model's own distribution), m1 (B, 1) the max, s1 (B,) the sum of
    exp(x1 - m1) and sd1 (B,) the sum of exp(x1 - m1) (x1 - m1). -> (m, blocks, m1, s1, sd1), None where
    not asked."""
    m = blocks = m1 = s1 = sd1 = None
    x1 = logits.float()  # (B, V)
    if temperature > 0:
        x = x1 if temperature == 1.0 else x1 / temperature  # x / 1 == x: skipped, bit-identical
        m = x.amax(-1, keepdim=True)
        e = torch.exp(x - m)
        if e.size(-1) % VOCAB_BLOCK:  # zeros past the vocabulary (Qwen's 151,936 fill their blocks)
            e = F.pad(e, (0, -e.size(-1) % VOCAB_BLOCK))  # (B, C * VOCAB_BLOCK)
        blocks = e.view(e.size(0), -1, VOCAB_BLOCK).sum(-1)  # (B, C)
    if stats:
        m1 = x1.amax(-1, keepdim=True)
        d = x1 - m1  # (B, V), <= 0; -inf for a masked logit
        e1 = torch.exp(d)
        s1 = e1.sum(-1)
        sd1 = (e1 * d.clamp(min=torch.finfo(torch.float32).min)).sum(-1)  # 0 * -inf would be NaN
    return m, blocks, m1, s1, sd1


def _invert(logits, temperature, u, m, blocks):
    """The token of each row where its CDF first reaches u (B,) times its total, in two levels: the block,
    by a binary search of the (B, C) blocks' running sums, then the entry, by a running sum of that block's
    VOCAB_BLOCK probabilities (exp(x - m), recomputed). Static shapes, no sync, no pass over the
    vocabulary."""
    B, V = logits.shape
    csum = blocks.cumsum(-1)  # (B, C)
    # in (0, total]: the first block that reaches it holds probability, and so does the entry found in it
    target = (u.float() * csum[:, -1]).clamp(min=torch.finfo(torch.float32).tiny)[:, None]  # (B, 1)
    c = torch.searchsorted(csum, target).clamp(max=csum.size(1) - 1)  # (B, 1)
    before = torch.where(c > 0, csum.gather(1, (c - 1).clamp(min=0)), 0.0)  # (B, 1) the blocks before it
    idx = c * VOCAB_BLOCK + torch.arange(VOCAB_BLOCK, device=logits.device)  # (B, VOCAB_BLOCK) its entries
    x = logits.gather(1, idx.clamp(max=V - 1)).float()
    x = x if temperature == 1.0 else x / temperature
    cdf = before + torch.exp(x - m).masked_fill(idx >= V, 0.0).cumsum(-1)  # (B, VOCAB_BLOCK)
    # the block's own running sum has the last word: recomputed, its total may round below the target
    j = torch.searchsorted(cdf, torch.minimum(target, cdf[:, -1:])).clamp(max=VOCAB_BLOCK - 1)  # (B, 1)
    return idx.gather(1, j)[:, 0]


def sample_next(logits, sampling, u=None, sums=None):
    """logits (B, V) -> next token ids (B,). temperature 0 = greedy (argmax). Otherwise a draw from the
    temperature / top-k / top-p distribution by inverting its CDF at u (B,) uniforms in [0, 1): static shapes,
    no host sync, so it runs inside the captured decode step. At a temperature alone, in two levels over
    blocks of the vocabulary (_invert; sums: token_sums' result if already computed); with top-k or top-p, one
    cumulative sum (and for top-p a sort) over the whole vocabulary."""
    temperature, top_k, top_p = sampling.temperature, sampling.top_k, sampling.top_p
    if temperature <= 0.0:
        return logits.argmax(-1)
    if top_k <= 0 and top_p >= 1.0:
        m, blocks = (sums or token_sums(logits, temperature, False))[:2]
        return _invert(logits, temperature, u, m, blocks)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # (B, V); x / 1 == x
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    order = None
    if top_p < 1.0:
        # nucleus: drop tokens once the mass of the more likely ones already exceeds
        # top_p (the top one always stays)
        logits, order = logits.sort(-1, descending=True)  # (B, V)
        probs = logits.softmax(-1)
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p, 0.0)
    else:
        probs = logits.softmax(-1)  # (B, V)
    cdf = probs.cumsum(-1)  # (B, V) fp32
    # the first token whose cdf reaches x, for x in (0, total]: cdf[j-1] < x <= cdf[j], so
    # token j has positive width (a zero-probability token is never picked, also at u = 0 or
    # when u * total rounds up to total)
    x = (u.float() * cdf[:, -1]).clamp(min=torch.finfo(torch.float32).tiny)  # (B,)
    j = torch.searchsorted(cdf, x[:, None])  # (B, 1)
    return (j if order is None else order.gather(-1, j))[:, 0]


class Sample(NamedTuple):
    ids: list       # generated token ids, the stop token excluded
    stopped: bool   # ended by a stop token (False: it ran out of budget, max_new_tokens or the context)
    entropy: list   # per generated token, nats of the model's next-token distribution (if asked), else None
    logprobs: list  # per generated token, its log-probability under the model's logits, and for a stopped
    #                 sequence one more, its stop token's (the policy chose to stop: RL trains on it too)
    stop_id: int    # the stop token that ended it (None: it ran out of budget)


class _Slots:
    """The decoder's state for B slots, all on the device with fixed shapes, so that one decode step touches
    only these tensors and can be captured once as a CUDA graph and replayed:
        tok (B,) the token each slot feeds next   n_out (B,) tokens kept so far   budget (B,) tokens allowed
        done (B,) finished or empty               out (B, N+1) kept tokens        u (B, N+1) uniforms per step
        ent, lp (B, N+1) entropies and log-probabilities of the kept tokens (if asked)"""

    def __init__(self, B, N, device):
        z = lambda dt: torch.zeros(B, dtype=dt, device=device)  # noqa: E731
        self.tok, self.n_out, self.budget = z(torch.long), z(torch.long), z(torch.long)
        self.done = torch.ones(B, dtype=torch.bool, device=device)
        # +1: a done row writes past its end
        self.out = torch.zeros(B, N + 1, dtype=torch.long, device=device)
        self.u = torch.zeros(B, N + 1, device=device)
        self.ent = torch.zeros(B, N + 1, device=device)
        self.lp = torch.zeros(B, N + 1, device=device)


def _sums_kind(sampling, stats):
    """token_sums' arguments after the logits: the draw's temperature when it is a temperature alone (with
    top-k or top-p, sample_next sorts and sums the whole vocabulary itself), and whether stats are asked."""
    plain = sampling.top_k <= 0 and sampling.top_p >= 1.0
    return (sampling.temperature if plain else 0.0, stats)


def _emit(st, rows, logits, stop, sampling, entropy, logprobs, sums_fn=token_sums):
    """Choose the next token of slots `rows` ((n,) long) from their logits (n, V) and record it:
    kept unless it is a stop token or the slot was already done; done once stopped or out of
    budget. The reductions over the vocabulary come from sums_fn (token_sums, compiled in the decode step).
    Static shapes, no sync."""
    n_out = st.n_out[rows]  # (n,)
    sums = sums_fn(logits, *_sums_kind(sampling, entropy or logprobs))
    m1, s1, sd1 = sums[2:]
    nxt = sample_next(logits, sampling, u=st.u[rows, n_out], sums=sums)  # (n,); u: this step's uniform
    active = ~st.done[rows]
    keep = active & ~(nxt[:, None] == stop).any(-1)
    # a stop token lands after the kept ones
    st.out[rows, n_out] = torch.where(active, nxt, st.out[rows, n_out])
    if entropy:  # nats of the model's own distribution: -sum p log p = log s1 - sum exp(d) d / s1, d = x - m1
        ent = torch.log(s1) - sd1 / s1  # (n,)
        st.ent[rows, n_out] = torch.where(keep, ent, st.ent[rows, n_out])
    # of the chosen token under the model's own distribution (temperature 1): what RL's ratio uses
    if logprobs:
        lp = logits.gather(1, nxt[:, None]).float().squeeze(1) - m1[:, 0] - torch.log(s1)  # (n,)
        st.lp[rows, n_out] = torch.where(active, lp, st.lp[rows, n_out])  # a stop token's too
    n_out = n_out + keep.long()
    st.n_out[rows] = n_out
    st.done[rows] = ~keep | (n_out >= st.budget[rows])
    st.tok[rows] = nxt


def _decode_logits(model, tok, cache, block=None):
    """One token for every slot, tok (B,), through the model and its cache -> the next logits (B, V), each
    layer through `block` (run_block compiled) if given. Finished and empty slots run too (static shapes),
    their output unused."""
    return model(tok[:, None], cache=cache, decode_block=block)[:, 0]


class Engine:
    """Generation for one model, kept between calls: B slots over a static KV cache of L positions, and N
    new tokens at most per sequence. On CUDA the one-token decode step (the model, the sampler and the
    slots' bookkeeping, static shapes, positions in tensors) is captured once as a CUDA graph per kind of
    sampling, each layer compiled into a few fused kernels (model.run_block: one compile serves every
    layer) around its attention through the cache, which stays eager (model.cache_attention: on a GPU one
    Triton kernel a layer writes the new key and value in place and attends over each row's filled
    positions alone, split over programs: decode_attention.py); the embedding, masks, final norm and head
    stay eager too, inside the graph at no launch cost. The sampler's and the statistics' passes over the
    (B, V) logits are compiled (token_sums: a row max and block sums, no scan over the vocabulary, which
    inductor failed to generate in torch 2.11); the draw itself searches C block sums, then one block
    (_invert).
    Prefills run eagerly, batched across the waiting prompts. Later calls replay the same graph: weights
    the trainer changes in place (an optimizer step, LoRA adapters) are read by the next call as they are,
    with no recapture and no copy of the model (bf16 working copies are recast first). free() gives the
    cache and the graphs' memory back; memory() reports them, so a trainer can plan around them.

        engine = Engine(model, slots=256, max_len=1024, max_new_tokens=512, ctx=autocast)
        samples = engine.generate(prompts, Sampling(512, 1.0, stop_ids=tok.stop_ids), logprobs=True)
    """

    def __init__(self, model, slots, max_len, max_new_tokens, ctx=nullcontext(), cuda_graph=None,
                 compile=None):
        self.model, self.B, self.L, self.N, self.ctx = model, slots, max_len, max_new_tokens, ctx
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        self.graph = cuda if cuda_graph is None else cuda_graph
        self.compiled = cuda if compile is None else compile
        # the decode step's blocks compiled: one compile serves every layer (model.run_block)
        self.block = torch.compile(run_block, dynamic=False) if self.compiled else None
        # the sampler's and the statistics' passes over the (B, V) logits fused into a kernel or two
        self.sums = torch.compile(token_sums, dynamic=False) if self.compiled else token_sums
        self.tried = set()  # the kinds of step (token_sums' arguments) whose compiled pieces have run once
        with ctx:
            self.cache = model.make_cache(slots, max_len)
        self.st = _Slots(slots, max_new_tokens, self.device)
        self.rows = torch.arange(slots, device=self.device)
        self.stop = torch.full((8,), -1, dtype=torch.long, device=self.device)  # -1: no token
        self.graphs = {}  # (temperature, top_k, top_p, entropy, logprobs) -> a captured step's replay
        self.steps = 0  # decode steps run so far (benchmarks divide by it)

    def memory(self):
        """Bytes this engine holds on the device: {"cache", "state", "graphs"} (the graphs' memory pools)."""
        st = sum(t.numel() * t.element_size() for t in vars(self.st).values())
        cache = sum(t.numel() * t.element_size() for t in [*self.cache.k, *self.cache.v, self.cache.pos])
        return {"cache": cache, "state": st, "graphs": getattr(self, "graph_bytes", 0)}

    def free(self):
        """Give back the cache, the slots' state and the captured graphs (generate() allocates them again)."""
        self.graphs.clear()
        self.graph_bytes = 0
        self.cache = self.st = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _ready(self):
        if self.cache is None:
            with self.ctx:
                self.cache = self.model.make_cache(self.B, self.L)
            self.st = _Slots(self.B, self.N, self.device)

    def _step_fn(self, sampling, entropy, logprobs, sync_each):
        """The decode step for this kind of sampling: captured once as a CUDA graph (replayed from then on),
        or called directly (eager, or when a stream needs each step's token)."""
        # the first call compiles; a compiler failure must not stop a run
        kind = _sums_kind(sampling, entropy or logprobs)  # as _emit calls token_sums
        if self.compiled and kind not in self.tried:
            self.tried.add(kind)
            try:  # harmless on the state: every slot is free now, and an admitted row is prefilled afresh
                with self.ctx:
                    logits = _decode_logits(self.model, self.st.tok, self.cache, self.block)
                self.sums(logits, *kind)
            except Exception as e:
                print(f"warning: compiling the decode step failed ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0][:200]}); decoding eagerly", file=sys.stderr)
                self.block, self.sums, self.compiled = None, token_sums, False

        def run():
            with self.ctx:
                logits = _decode_logits(self.model, self.st.tok, self.cache, self.block)  # (B, V)
            _emit(self.st, self.rows, logits, self.stop, sampling, entropy, logprobs, self.sums)
            # a finished or empty slot starts over at slot 0 until a prompt is admitted into it: its steps
            # then attend over one position, not its whole stale row (on a GPU attention reads only the
            # filled positions; in a batch's tail most slots wait for the longest row)
            self.cache.pos.masked_fill_(self.st.done, 0)
        if not self.graph or sync_each:
            return run
        key = (sampling.temperature, sampling.top_k, sampling.top_p, entropy, logprobs)
        if key not in self.graphs:
            self.graphs[key], used = _capture(run, self.cache, self.st)
            self.graph_bytes = getattr(self, "graph_bytes", 0) + used
        return self.graphs[key]

    @torch.no_grad()
    def generate(self, prompts, sampling, num_samples=1, stream=None, entropy=False, logprobs=False, first=0,
                 progress=True):
        """num_samples continuations of each prompt (a list of token ids) under `sampling` (a Sampling) -> a
        list of Sample, prompt-major (prompt 0's samples, then prompt 1's, ...).

        Continuous batching: when a sequence ends, the next waiting prompt is prefilled into its slot, so the
        batch never waits for its longest row. A prompt is prefilled once and its cache rows are copied to the
        slots of its samples. A sequence stops at its first token in stop_ids, after max_new_tokens, or at the
        model's max_seq_len. Every sequence's output is a function of its prompt, the seed and its index
        alone, not of its batch mates or slot: greedy decoding picks the argmax, and sampling inverts the CDF
        at uniforms drawn from numpy's generator seeded with (seed, sequence index). Finished rows are
        collected every 16 steps with a CUDA graph (the only host syncs), else after every step. stream(i,
        token_id) is called for every kept token of sequence i as soon as it is chosen (one sync per step).
        entropy=True records each token's entropy, logprobs=True its log-probability. first: the index of this
        call's first sequence in a larger batch split over calls or processes (its draws are those it has
        there). progress: a progress bar (for 64 sequences or more)."""
        model, k = self.model, num_samples
        if not prompts:
            return []
        max_seq = model.config.max_seq_len
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty")
            if len(p) >= max_seq:
                raise ValueError(f"prompt {i} has {len(p)} tokens, which leaves no room in the model's "
                                 f"context of max_seq_len={max_seq} tokens")
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        budgets = [min(sampling.max_new_tokens, max_seq - len(p), self.N) for p in prompts]
        need = max(len(p) + b for p, b in zip(prompts, budgets))
        if need > self.L or k > self.B or len(sampling.stop_ids) > len(self.stop):
            raise ValueError(f"this engine holds {self.B} slots of {self.L} positions and up to "
                             f"{len(self.stop)} stop ids; the call needs {k} slots, {need} positions, "
                             f"{len(sampling.stop_ids)} stop ids")
        model.refresh_working()  # weights changed in place since the last call: their bf16 copies follow
        self._ready()
        st, B, device = self.st, self.B, self.device
        self.stop.fill_(-1)
        self.stop[:len(sampling.stop_ids)] = torch.tensor(sorted(sampling.stop_ids), dtype=torch.long)
        sync_every = 1 if stream is not None or not self.graph else 16
        step = self._step_fn(sampling, entropy, logprobs, stream is not None)

        n_seq = len(prompts) * k
        results = [None] * n_seq
        slot_seq = [-1] * B  # the sequence each slot holds, -1 = free
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: less padding
        next_prompt = 0
        pbar = tqdm(total=n_seq, desc="generate", unit="seq", leave=False,
                    disable=not progress or n_seq < 64 or stream is not None)
        while True:
            # collect finished sequences (one host sync for the small state vectors)
            done, n_out = st.done.tolist(), st.n_out.tolist()
            finished = [b for b in range(B) if slot_seq[b] >= 0 and done[b]]
            if finished:
                idx = torch.tensor(finished, device=device)
                outs = st.out[idx].tolist()
                ents = st.ent[idx].tolist() if entropy else [None] * len(finished)
                lps = st.lp[idx].tolist() if logprobs else [None] * len(finished)
                for b, o, e, lp in zip(finished, outs, ents, lps):
                    s, n = slot_seq[b], n_out[b]
                    stopped = n < budgets[s // k]
                    results[s] = Sample(o[:n], stopped, e and e[:n], lp and lp[:n + stopped],
                                        o[n] if stopped else None)
                    slot_seq[b] = -1
                pbar.update(len(finished))
            # admit waiting prompts into free slots, several at a time (each prefill call has a fixed cost)
            free = [b for b in range(B) if slot_seq[b] < 0]
            waiting = len(prompts) - next_prompt
            if waiting and len(free) >= min(max(k, B // 8), waiting * k):
                m = min(len(free) // k, waiting)
                pids = order[next_prompt:next_prompt + m]
                self._admit(prompts, pids, k, free[:m * k], budgets, sampling, entropy, logprobs, first)
                for j, b in enumerate(free[:m * k]):
                    slot_seq[b] = pids[j // k] * k + j % k
                next_prompt += m
                if stream is not None:
                    _stream(stream, st, free[:m * k], slot_seq, [0] * B)
            if all(s < 0 for s in slot_seq):
                break
            for _ in range(sync_every):
                before = st.n_out.tolist() if stream is not None else None
                step()
                self.steps += 1
                if stream is not None:
                    _stream(stream, st, range(B), slot_seq, before)
        pbar.close()
        return results

    def _admit(self, prompts, pids, k, slots, budgets, sampling, entropy, logprobs, first):
        """Prefill prompts `pids` into the cache (one right-padded batch, into the first of each prompt's k
        slots), copy each prompt's cache rows to its other k-1 slots, and emit every new sequence's first
        token."""
        st, cache, device = self.st, self.cache, self.device
        m = len(pids)
        ps = [prompts[i] for i in pids]
        T = max(len(p) for p in ps)
        idx = torch.tensor([p + [0] * (T - len(p)) for p in ps], device=device)  # (m, T)
        lengths = torch.tensor([len(p) for p in ps], device=device)  # (m,)
        slots_t = torch.tensor(slots, device=device).view(m, k)  # (m, k)
        with self.ctx:
            # (m, V)
            logits = self.model(idx, cache=cache, rows=slots_t[:, 0], lengths=lengths, last=lengths - 1)
        if k > 1:  # the samples of a prompt share its prefill: copy the cache rows, not the computation
            src, dst = slots_t[:, :1].expand(m, k - 1).reshape(-1), slots_t[:, 1:].reshape(-1)
            for buf in (*cache.k, *cache.v):  # (B, L, nkv, hd)
                buf[dst, :T] = buf[src, :T]
            cache.pos[dst] = cache.pos[src]
            logits = logits.repeat_interleave(k, dim=0)  # (m * k, V)
        rows = slots_t.reshape(-1)
        seqs = [i * k + j for i in pids for j in range(k)]
        st.n_out[rows] = 0
        st.done[rows] = False
        st.budget[rows] = torch.tensor([budgets[s // k] for s in seqs], device=device)
        # uniforms for every step of each sequence, a function of (seed, index) alone
        if sampling.temperature > 0:
            rngs = [np.random.default_rng([sampling.seed, first + s]) for s in seqs]
            u = np.stack([g.random(st.u.size(1)) for g in rngs])
            st.u[rows] = torch.from_numpy(u).to(device=device, dtype=st.u.dtype)
        _emit(st, rows, logits, self.stop, sampling, entropy, logprobs)


def generate(model, prompts, sampling, num_samples=1, batch_size=64, ctx=nullcontext(), stream=None,
             entropy=False, logprobs=False, cuda_graph=None):
    """Engine(...).generate(...) with an engine sized for this call: min(batch_size, sequences) slots (at
    least num_samples), as many positions as the longest prompt plus its budget (rounded up to 64 when
    compiled, so that calls of similar sizes share their compiled code)."""
    if not prompts:
        return []
    max_seq = model.config.max_seq_len
    B = max(num_samples, min(batch_size, len(prompts) * num_samples))
    N = max(1, max(min(sampling.max_new_tokens, max_seq - len(p)) for p in prompts))
    L = max(len(p) + min(sampling.max_new_tokens, max_seq - len(p)) for p in prompts)
    if next(model.parameters()).device.type == "cuda":
        L = min(-(-L // 64) * 64, max(L, max_seq))
    engine = Engine(model, B, L, N, ctx, cuda_graph)
    return engine.generate(prompts, sampling, num_samples, stream, entropy, logprobs)


def engine_bytes(config, slots, max_len, dtype, sampled=False):
    """The least memory an Engine of `slots` slots of `max_len` positions holds for a model of ModelConfig
    `config`, its cache in `dtype`: keys and values of every layer, the slots' state (_Slots) and a decode
    step's fp32 logits over the vocabulary, three of them when `sampled` (eager token_sums' upcast and
    exponentials, or with top-p the probabilities and their cumulative sum: sample_next). From the config
    alone, so a slot count that cannot fit is refused before a model loads."""
    kv = 2 * config.n_layer * max_len * config.n_kv_head * config.head_dim * dtype.itemsize
    return slots * (kv + 20 * (max_len + 1) + (12 if sampled else 4) * config.vocab_size)


def device_memory(device):
    """Bytes a run can have on `device`: the GPU's free memory on CUDA, the machine's physical memory on a
    CPU; None where it is not known (MPS)."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if str(device) != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def slots_that_fit(config, max_len, dtype, device, sampled=False, weight_bytes=None, share=1.0):
    """-> (slots, free): how many Engine slots of max_len positions (engine_bytes) fit in `share` of the
    memory `device` has beside the model's weights (weight_bytes; by default the model in `dtype`), and that
    memory in bytes; (None, None) where the device's memory is not known. A lower bound of what generation
    needs: a count above it cannot be allocated."""
    total = device_memory(device)
    if total is None:
        return None, None
    if weight_bytes is None:
        with torch.device("meta"):
            weight_bytes = Transformer(config).num_params() * dtype.itemsize
    free = max(0, total - weight_bytes)
    return int(free * share) // engine_bytes(config, 1, max_len, dtype, sampled), free


def gib(n):
    """Bytes as a short human figure: '1.5 GiB', '3.2 TiB'."""
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def _stream(stream, st, rows, slot_seq, before):
    n_out, out_tok = st.n_out.tolist(), st.tok.tolist()
    for b in rows:
        if slot_seq[b] >= 0 and n_out[b] > before[b]:
            stream(slot_seq[b], out_tok[b])


def _capture(step, cache, st):
    """Record step() once as a CUDA graph and return its replay. The warm-up runs (which also compile it)
    mutate the state, so it is reset afterwards; replays then read and write the same tensors in place. ->
    (replay, the bytes the capture reserved: its private memory pool)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up: compilation, lazy initialisation and kernel selection outside the graph
            step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # as torch.cuda.graph does on entry: what it reserves after this is its pool
    before = torch.cuda.memory_reserved()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    cache.pos.zero_()
    st.done.fill_(True)
    st.n_out.zero_()
    return g.replay, torch.cuda.memory_reserved() - before  # the graph's private memory pool


# -----------------------------------------------------------------------------
# generate and grade: the one evaluation loop (train.py and sample.py call it)


def _majority(recs, weight=lambda r: 1):
    """The record whose answer most samples agree on (grouped by grade.is_equiv), each sample counting
    `weight` (1: majority vote; a verifier's score: weighted vote); ties go to the earliest."""
    groups = []  # [representative record, total weight]
    for r in recs:
        if r["extracted"] is None:
            continue
        for g in groups:
            if G.is_equiv(r["extracted"], g[0]["extracted"]):
                g[1] += weight(r)
                break
        else:
            groups.append([r, weight(r)])
    return max(groups, key=lambda g: g[1])[0] if groups else None  # max keeps the first of equal counts


@torch.no_grad()
def evaluate(model, tok, problems, sampling, prompt_format="chat", system_prompt=data.SYSTEM_PROMPT,
             num_samples=1, batch_size=64, ctx=nullcontext(), entropy=False, verifier=None, engine=None):
    """Generate for each problem ({"id", "prompt", "answer", ...}) under `sampling` (a Sampling; with no stop
    ids, the tokenizer's) and grade it. Returns (summary, records): summary {"accuracy", "format_rate",
    "answer_reward" (= accuracy), "format_reward" (= format_rate), "mean_length" (tokens), "tokens_per_s",
    "generate_s", "grade_s", "n"}, "mean_entropy" (per generated token) with entropy=True, and "pass@k" and
    "maj@k" when num_samples = k > 1; records, one per generation in problem order: {"id", "prompt",
    "response", "extracted", "gold", "correct", "formatted", "n_tokens", "sample", "truncated"} (truncated:
    ended by the token budget, not a stop token). The model runs in eval mode under no_grad and gets its
    previous mode back. verifier = (model with a value head, its tokenizer, prompt format, system prompt):
    every record gets its "score" (P(correct)), and with k > 1 samples the summary adds "verifier@k" (accuracy
    of each problem's top-scored sample) and "weighted_maj@k" (votes weighted by score). engine: an
    Engine of this model to generate with (its cache and graphs kept), else one is made for the call."""
    was_training = model.training
    model.eval()
    try:
        prompts = []
        for p in problems:
            ids = data.render_prompt(tok, p["prompt"], prompt_format, system_prompt)
            if len(ids) >= model.config.max_seq_len:
                raise ValueError(f"problem {p['id']}: the prompt has {len(ids)} tokens, which leaves no room "
                                 f"in the model's context of max_seq_len={model.config.max_seq_len} tokens")
            prompts.append(ids)
        dev = next(model.parameters()).device
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        if not sampling.stop_ids:
            sampling = dataclasses.replace(sampling, stop_ids=tuple(sorted(tok.stop_ids)))
        if engine is not None:  # the caller's engine for this model (rl.py: no second cache)
            samples = engine.generate(prompts, sampling, num_samples, entropy=entropy)
        else:
            samples = generate(model, prompts, sampling, num_samples, batch_size, ctx, entropy=entropy)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.time()
    finally:
        model.train(was_training)

    records = []
    for k, smp in enumerate(samples):
        p = problems[k // num_samples]
        response = tok.decode(smp.ids)
        g = G.grade(response, p["answer"], truncated=not smp.stopped)
        records.append({"id": p["id"], "prompt": p["prompt"], "response": response, "extracted": g.extracted,
                        "gold": p["answer"], "correct": g.correct, "formatted": g.formatted,
                        "n_tokens": len(smp.ids), "sample": k % num_samples, "truncated": not smp.stopped})
    t2 = time.time()
    n = len(records)
    n_tok = sum(r["n_tokens"] for r in records)
    acc = sum(r["correct"] for r in records) / max(n, 1)
    fmt = sum(r["formatted"] for r in records) / max(n, 1)
    summary = {"accuracy": acc, "format_rate": fmt, "answer_reward": acc, "format_reward": fmt,
               "mean_length": n_tok / max(n, 1), "tokens_per_s": n_tok / max(t1 - t0, 1e-9),
               "generate_s": t1 - t0, "grade_s": t2 - t1, "n": n}
    if entropy:
        summary["mean_entropy"] = sum(sum(smp.entropy) for smp in samples) / max(n_tok, 1)
    if num_samples > 1:
        per = [records[i:i + num_samples] for i in range(0, n, num_samples)]
        summary[f"pass@{num_samples}"] = sum(any(r["correct"] for r in rs) for rs in per) / max(len(per), 1)
        maj = [_majority(rs) for rs in per]
        summary[f"maj@{num_samples}"] = sum(bool(m and m["correct"]) for m in maj) / max(len(per), 1)
        summary["n_problems"] = len(per)
    if verifier is not None:
        vm, vtok, vfmt, vsys = verifier
        rendered = [data.render_example(vtok, r, vfmt, vsys) for r in records]
        scores = score_examples(vm, [{"ids": i, "mask": m} for i, m in rendered], ctx, batch_size)
        for r, sc in zip(records, scores):
            r["score"] = sc
        if num_samples > 1:
            per = [records[i:i + num_samples] for i in range(0, n, num_samples)]
            top = [max(rs, key=lambda r: r["score"]) for rs in per]  # max keeps the first of equal scores
            summary[f"verifier@{num_samples}"] = sum(r["correct"] for r in top) / max(len(per), 1)
            wmaj = [_majority(rs, weight=lambda r: r["score"]) for rs in per]
            wins = sum(bool(m and m["correct"]) for m in wmaj)
            summary[f"weighted_maj@{num_samples}"] = wins / max(len(per), 1)
    return summary, records


# -----------------------------------------------------------------------------
# a verifier's scores (a model with a value head, trained by train.py objective=verifier)


@torch.no_grad()
def score_examples(model, examples, ctx=nullcontext(), batch_size=64):
    """P(correct) for rendered examples ({"ids", "mask"}): the value head at each one's last response token
    (its closing end token: the whole solution has been read). Batched, right-padded, longest first."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["ids"]))
    out = [0.0] * len(examples)
    try:
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            T = max(len(examples[i]["ids"]) for i in chunk)
            idx = torch.tensor([examples[i]["ids"] + [0] * (T - len(examples[i]["ids"])) for i in chunk],
                               device=dev)
            last = torch.tensor([max(j for j, m in enumerate(examples[i]["mask"]) if m) for i in chunk],
                                device=dev)
            with ctx:
                p = model.value(idx, last).tolist()
            for i, v in zip(chunk, p):
                out[i] = v
    finally:
        model.train(was_training)
    return out


def verifier_metrics(p, y):
    """Scores p against labels y (0/1): mse, mae and r2 (as regressions of the label), AUROC (how
    well the score ranks correct above wrong; ties count half) and ece (expected calibration
    error over 10 equal-width bins)."""
    n = len(p)
    p_t, y_t = torch.tensor(p, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    mse = float(((p_t - y_t) ** 2).mean())
    var = float(y_t.var(unbiased=False))
    ranks = torch.empty(n, dtype=torch.float64)
    srt, order = p_t.sort()
    i = 0
    while i < n:  # average ranks over ties
        j = i
        while j + 1 < n and srt[j + 1] == srt[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = int(y_t.sum())
    n_neg = n - n_pos
    auroc = float((ranks[y_t == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg \
        else float("nan")
    bins = torch.clamp((p_t * 10).long(), max=9)
    ece = sum(float((bins == b).sum()) / n * abs(float(p_t[bins == b].mean() - y_t[bins == b].mean()))
              for b in range(10) if (bins == b).any())
    return {"mse": mse, "mae": float((p_t - y_t).abs().mean()), "r2": 1 - mse / var if var else float("nan"),
            "auroc": auroc, "ece": ece, "n": n}


def sample_table(records, n=5, width=60):
    """A small text table of the first n generations (the eval logs print it): id, correct/formatted, the
    extracted and gold answers, and the end of the response on one line."""
    def cut(s, w):
        s = " ".join(str(s).split())
        return s if len(s) <= w else "..." + s[-(w - 3):]
    rows = [("id", "ok", "fmt", "extracted", "gold", "response (end)")]
    rows += [(cut(r["id"], 24), "Y" if r["correct"] else "n", "Y" if r["formatted"] else "n",
              cut(r["extracted"], 16), cut(r["gold"], 16), cut(r["response"], width)) for r in records[:n]]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join(" | ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
