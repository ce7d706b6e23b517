"""
The generation engine: batched decoding with a static KV cache, and the one generate-and-grade loop that
train.py's periodic eval, sample.py and any later tool share.

    ids, ents = generate(model, prompts, max_new_tokens=256, temperature=0.7, stop_ids=tok.stop_ids, seed=0)
    summary, records = evaluate(model, tok, problems, "chat", data.SYSTEM_PROMPT, max_new_tokens=512)

Evaluation protocol (sample.py --eval; the README quotes it). One setting per dataset, so numbers are comparable:
  - prompt: data.render_prompt(problem) in chat format (the model's ChatML template) with the system prompt
    data.SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}." A nanomath
    checkpoint is prompted the way it was trained (its config's prompt_format / system_prompt), a Hugging Face
    model in chat format if its tokenizer has a chat template, else in plain format (data.PLAIN_TEMPLATE).
  - decoding: greedy, stopping at any of the tokenizer's end tokens (for Qwen both <|im_end|> and <|endoftext|>),
    at most EVAL_MAX_NEW_TOKENS[dataset] new tokens (and never past the model's max_seq_len).
  - grading: grade.grade(response, gold): the answer in <answer> tags, else the last \\boxed{} (then "####", "the
    answer is", last number), compared by mathematical equivalence. accuracy = correct / n; format rate = share of
    responses whose answer came in a recognised form (not the last-number fallback).
  - with num_samples k > 1 (and temperature > 0): accuracy is the mean over all k*n samples, pass@k the share of
    problems with at least one correct sample, maj@k the accuracy of the majority answer (answers grouped by
    grade.is_equiv, ties to the earliest).
"""
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import grade as G

# the pinned generation budget of each evaluation dataset; arith, arith2: the embedded example's generated test
# problems (data.make_arith), for from-scratch models
EVAL_MAX_NEW_TOKENS = {"gsm8k": 512, "math": 1024, "math500": 1024, "arith": 48, "arith2": 48}

# -----------------------------------------------------------------------------
# decoding


def sample_next(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None):
    """logits (B, V) fp32 -> next token ids (B,). temperature 0 = greedy. Static shapes throughout (no
    data-dependent indexing), so it can be compiled along with the decode step."""
    if temperature <= 0.0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # nucleus: drop tokens once the mass of the more likely ones already exceeds top_p (the top one always stays)
        srt, order = logits.sort(-1, descending=True)  # (B, V)
        probs = srt.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.scatter(-1, order, srt.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)  # (B, V)
    # argmax(p / E) with E ~ Exp(1) is a draw from p (the exponential race); one op, no host sync (cf. gpt-fast)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(-1)


def _generate_batch(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, generator, ctx, stream,
                    index):
    """One batch of prompts, right-padded: each cache row holds its own prompt from slot 0. Returns (ids,
    entropies) per row."""
    device = next(model.parameters()).device
    B = len(prompts)
    max_seq = model.config.max_seq_len
    # each row may grow to max_seq_len tokens on its own, so a row's output never depends on its batch mates
    budget = torch.tensor([min(max_new_tokens, max_seq - len(p)) for p in prompts], device=device)  # (B,)
    n_steps = int(budget.max())
    if n_steps <= 0:
        return [[] for _ in prompts], [[] for _ in prompts]
    P = max(len(p) for p in prompts)
    idx = torch.tensor([p + [0] * (P - len(p)) for p in prompts], device=device)  # (B, P)
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    out = torch.zeros(B, n_steps, dtype=torch.long, device=device)  # (B, S)
    ent = torch.zeros(B, n_steps, device=device)  # (B, S)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # finished rows keep decoding, output ignored
    length = torch.zeros(B, dtype=torch.long, device=device)  # tokens kept per row (stop token excluded)
    with ctx:
        cache = model.make_cache(B, P + n_steps)  # a finished row keeps appending, at most to slot P + n_steps
        logits = model(idx, cache=cache, rows=torch.arange(B, device=device), lengths=lengths, last=lengths - 1)
    for t in range(n_steps):
        logits = logits.float()  # (B, V)
        logp = F.log_softmax(logits, -1)
        # entropy of the model's own distribution (temperature 1, before top-k/p): a property of the model
        ent[:, t] = -(logp.exp() * logp).nan_to_num().sum(-1)  # nan_to_num: 0 * -inf where a logit is -inf
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        out[:, t] = nxt
        is_stop = torch.isin(nxt, stop)
        length += (~done & ~is_stop).long()
        if stream is not None:
            for i in (~done & ~is_stop).nonzero().flatten().tolist():
                stream(index[i], int(nxt[i]))
        done |= is_stop | (t + 1 >= budget)
        if t + 1 == n_steps or bool(done.all()):  # the one host sync per step
            break
        with ctx:
            logits = model(nxt[:, None], cache=cache)[:, -1]  # (B, V)
    length, out, ent = length.tolist(), out.cpu(), ent.cpu()
    return [out[i, :length[i]].tolist() for i in range(B)], [ent[i, :length[i]].tolist() for i in range(B)]


@torch.no_grad()
def generate(model, prompts_ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, stop_ids=(), seed=None,
             ctx=nullcontext(), stream=None, batch_size=0):
    """Generate for a list of prompts (lists of token ids) -> (ids, entropies): for each prompt its generated
    token ids (stop token excluded) and the entropy (nats) of the model's next-token distribution at each of them.

    Prompts are sorted by length into batches of batch_size (0 = all at once) to cut padding; results come back
    in the input order. A row stops at its first token in stop_ids, after max_new_tokens, or when it reaches the
    model's max_seq_len; the batch stops when every row has. Greedy (temperature 0) output of a prompt does not
    depend on its batch mates. seed makes sampling reproducible (a private generator; the global RNG is
    untouched). stream(i, token_id) is called for every kept token of prompt i as soon as it is chosen."""
    if not prompts_ids:
        return [], []
    max_seq = model.config.max_seq_len
    for i, p in enumerate(prompts_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(p) >= max_seq:
            raise ValueError(f"prompt {i} has {len(p)} tokens, which leaves no room in the model's context of "
                             f"max_seq_len={max_seq} tokens")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    order = sorted(range(len(prompts_ids)), key=lambda i: -len(prompts_ids[i]))  # longest first: OOM shows early
    bs = batch_size or len(order)
    ids, ents = [None] * len(order), [None] * len(order)
    batches = range(0, len(order), bs)
    # a progress bar for long evaluations (several batches), not for a single streamed prompt
    for s in tqdm(batches, desc="generate", unit="batch", leave=False, disable=len(batches) < 2 or stream is not None):
        chunk = order[s:s + bs]
        out, ent = _generate_batch(model, [prompts_ids[i] for i in chunk], max_new_tokens, temperature, top_k,
                                   top_p, stop_ids, generator, ctx, stream, chunk)
        for j, i in enumerate(chunk):
            ids[i], ents[i] = out[j], ent[j]
    return ids, ents

# -----------------------------------------------------------------------------
# generate and grade: the one evaluation loop (train.py and sample.py call it)


def _majority(recs):
    """The record whose answer most samples agree on (grouped by grade.is_equiv); ties go to the earliest."""
    groups = []  # [representative record, count]
    for r in recs:
        if r["extracted"] is None:
            continue
        for g in groups:
            if G.is_equiv(r["extracted"], g[0]["extracted"]):
                g[1] += 1
                break
        else:
            groups.append([r, 1])
    return max(groups, key=lambda g: g[1])[0] if groups else None  # max keeps the first of equal counts


@torch.no_grad()
def evaluate(model, tok, problems, prompt_format, system_prompt, max_new_tokens=512, batch_size=32,
             ctx=nullcontext(), seed=None, temperature=0.0, top_k=0, top_p=1.0, num_samples=1):
    """Generate for each problem ({"id", "prompt", "answer", ...}) and grade it. Returns (summary, records):
    summary {"accuracy", "format_rate", "answer_reward" (= accuracy), "format_reward" (= format_rate),
    "mean_entropy" (per generated token), "mean_length" (tokens), "tokens_per_s", "n"} plus "pass@k" and "maj@k"
    when num_samples = k > 1; records, one per generation in problem order: {"id", "prompt", "response",
    "extracted", "gold", "correct", "formatted", "n_tokens", "sample", "truncated"}. The model runs in eval mode
    under no_grad and gets its previous mode back."""
    was_training = model.training
    model.eval()
    try:
        prompts = []
        for p in problems:
            ids = data.render_prompt(tok, p["prompt"], prompt_format, system_prompt)
            if len(ids) >= model.config.max_seq_len:
                raise ValueError(f"problem {p['id']}: the prompt has {len(ids)} tokens, which leaves no room in the "
                                 f"model's context of max_seq_len={model.config.max_seq_len} tokens")
            prompts += [ids] * num_samples
        dev = next(model.parameters()).device
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        outs, ents = generate(model, prompts, max_new_tokens, temperature, top_k, top_p, tok.stop_ids, seed, ctx,
                              batch_size=batch_size)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
    finally:
        model.train(was_training)

    records = []
    for k, (ids, ent) in enumerate(zip(outs, ents)):
        p = problems[k // num_samples]
        response = tok.decode(ids)
        g = G.grade(response, p["answer"])
        budget = min(max_new_tokens, model.config.max_seq_len - len(prompts[k]))
        records.append({"id": p["id"], "prompt": p["prompt"], "response": response, "extracted": g.extracted,
                        "gold": p["answer"], "correct": g.correct, "formatted": g.formatted, "n_tokens": len(ids),
                        "sample": k % num_samples, "truncated": len(ids) >= budget})
    n = len(records)
    n_tok = sum(r["n_tokens"] for r in records)
    acc = sum(r["correct"] for r in records) / max(n, 1)
    fmt = sum(r["formatted"] for r in records) / max(n, 1)
    summary = {"accuracy": acc, "format_rate": fmt, "answer_reward": acc, "format_reward": fmt,
               "mean_entropy": sum(sum(e) for e in ents) / max(n_tok, 1), "mean_length": n_tok / max(n, 1),
               "tokens_per_s": n_tok / max(dt, 1e-9), "n": n}
    if num_samples > 1:
        per = [records[i:i + num_samples] for i in range(0, n, num_samples)]
        summary[f"pass@{num_samples}"] = sum(any(r["correct"] for r in rs) for rs in per) / max(len(per), 1)
        maj = [_majority(rs) for rs in per]
        summary[f"maj@{num_samples}"] = sum(bool(m and m["correct"]) for m in maj) / max(len(per), 1)
        summary["n_problems"] = len(per)
    return summary, records


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
