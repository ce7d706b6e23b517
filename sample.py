"""
Generate from a model, evaluate it on GSM8K / MATH, or export it to a Hugging Face folder.

    python sample.py --ckpt out/best.pt --prompt "What is 12 + 30?"         # streams one answer
    python sample.py --ckpt Qwen/Qwen2.5-0.5B-Instruct --prompts questions.txt --temperature 0.7 --num-samples 4
    python sample.py --ckpt out/best.pt --eval gsm8k --max-samples 200      # accuracy, format rate, tokens/s
    python sample.py --ckpt out/best.pt --export-hf out/hf                  # transformers can load out/hf

--ckpt is a training checkpoint (best.pt / ckpt-*.pt, or the folder holding them), a Hugging Face checkpoint
folder, or a hub id already in the local HF cache (never downloaded).

Evaluation protocol (PROTOCOL below; the README quotes it). One setting per dataset, so numbers are comparable:
  - prompt: data.render_prompt(problem) in chat format (the model's ChatML template) with the system prompt
    data.SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}." A nanomath
    checkpoint is prompted the way it was trained (its config's prompt_format / system_prompt), a Hugging Face
    model in chat format if its tokenizer has a chat template, else in plain format (data.PLAIN_TEMPLATE).
  - decoding: greedy, batched with a KV cache, stopping at any of the tokenizer's end tokens (for Qwen both
    <|im_end|> and <|endoftext|>), at most 512 new tokens for gsm8k and 1024 for math / math500 (and never past
    the model's max_seq_len).
  - grading: grade.grade(response, gold): the answer in <answer> tags, else the last \\boxed{} (then "####", "the answer is", last
    number), compared by mathematical equivalence. accuracy = correct / n; format rate = share of responses whose
    answer came in a recognised form (not the last-number fallback).
  - with --num-samples k > 1 (and --temperature > 0): accuracy is the mean over all k*n samples, pass@k the share
    of problems with at least one correct sample, maj@k the accuracy of the majority answer (answers grouped by
    grade.is_equiv, ties to the earliest).

The same generate() runs everything (CLI, evaluate(), train.py's periodic eval), so what train.py logs is what
this script prints.
"""
import argparse
import codecs
import json
import os
import sys
import time
import types
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import grade as G
import train
from model import atomic_write, from_pretrained, left_pad, save_pretrained
from tokenizer import load_tokenizer

PROTOCOL = {
    name: {"split": "test", "prompt_format": "chat", "system_prompt": data.SYSTEM_PROMPT, "temperature": 0.0,
           "max_new_tokens": n, "stop": "tokenizer stop ids (Qwen: <|im_end|>, <|endoftext|>)",
           "grader": "grade.grade: <answer> tags > last \\boxed{} > #### > 'answer is' > last number; equivalence by grade.is_equiv"}
    for name, n in (("gsm8k", 512), ("math", 1024), ("math500", 1024), ("arith", 48), ("arith2", 48))
}  # arith, arith2: the embedded example's generated test problems (data.make_arith), for from-scratch models

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


def decode_step(model, token, cache, valid):
    """One token per row through the KV cache: token (B, 1), valid (B, 1) -> logits (B, V). Kept tiny and
    shape-static so it can be torch.compile'd; the caller owns everything data-dependent."""
    return model(token, cache=cache, valid=valid)[:, -1]


def _cache_dtype(model, ctx):
    # under autocast the keys/values come out in the autocast dtype; storing them in it is lossless and halves
    # the cache (the model casts the buffers back to the query dtype anyway)
    if isinstance(ctx, torch.autocast) and ctx.fast_dtype is not None:
        return ctx.fast_dtype
    return next(model.parameters()).dtype


def _generate_batch(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, generator, ctx, stream,
                    index):
    """One left-padded batch. Returns (ids, entropies) per row."""
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    max_seq = model.config.max_seq_len
    # each row may grow to max_seq_len tokens on its own, so a row's output never depends on its batch mates
    budget = torch.tensor([min(max_new_tokens, max_seq - len(p)) for p in prompts], device=device)  # (B,)
    n_steps = int(budget.max())
    if n_steps <= 0:
        return [[] for _ in prompts], [[] for _ in prompts]
    idx, valid = left_pad(prompts, pad_id=0, device=device)  # (B, P)
    cache = model.make_cache(B, P + n_steps, dtype=_cache_dtype(model, ctx))
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    out = torch.zeros(B, n_steps, dtype=torch.long, device=device)  # (B, S)
    ent = torch.zeros(B, n_steps, device=device)  # (B, S)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # finished rows keep decoding, output ignored
    length = torch.zeros(B, dtype=torch.long, device=device)  # tokens kept per row (stop token excluded)
    with ctx:
        logits = model(idx, cache=cache, valid=valid, last_only=True)[:, -1]  # prefill, (B, V)
    for t in range(n_steps):
        logits = logits.float()
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
            logits = decode_step(model, nxt[:, None], cache, ~done[:, None])
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


class TextStream:
    """Prints the decoded text of a stream of token ids as it arrives. Tokens are bytes and one character may be
    split across tokens, so bytes go through an incremental UTF-8 decoder that holds back an incomplete tail."""

    def __init__(self, tok, file=None):
        self.tok, self.file = tok, file or sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, i, token_id):
        b = self.tok.token_bytes(token_id)
        if b:
            self.file.write(self.decoder.decode(b))
            self.file.flush()

    def close(self):
        self.file.write(self.decoder.decode(b"", final=True) + "\n")
        self.file.flush()

# -----------------------------------------------------------------------------
# generate and grade: the one evaluation loop (train.py calls it too)


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
def evaluate(model, tok, problems, prompt_format, system_prompt, max_new_tokens=512, batch_size=32, device=None,
             ctx=nullcontext(), seed=None, temperature=0.0, top_k=0, top_p=1.0, num_samples=1):
    """Generate for each problem ({"id", "prompt", "answer", ...}) and grade it. Returns (summary, records):
    summary {"accuracy", "format_rate", "answer_reward" (= accuracy), "format_reward" (= format_rate),
    "mean_entropy" (per generated token), "mean_length" (tokens), "tokens_per_s", "n"} plus "pass@k" and "maj@k"
    when num_samples = k > 1; records, one per generation in problem order: {"id", "prompt", "response",
    "extracted", "gold", "correct", "formatted", "n_tokens", "sample", "truncated"}. The model runs in eval mode
    under no_grad and gets its previous mode back. `device` is accepted for train.py's call; the model's own
    device is used."""
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

# -----------------------------------------------------------------------------
# loading


def is_chat_tokenizer(tok):
    """A Qwen tokenizer that ships a chat template: the model is (most likely) a chat model."""
    if tok.name != "qwen":
        return False
    if "chat_template.jinja" in tok.files:
        return True
    cfg = tok.files.get("tokenizer_config.json")
    return bool(cfg) and "chat_template" in json.loads(cfg)


def load_model(ckpt, device="cpu"):
    """-> (model, tok, info). ckpt: a training checkpoint file (or a folder holding best.pt / ckpt-*.pt), a HF
    checkpoint folder, or a cached hub id. info: {"kind", "path", "prompt_format", "system_prompt"}; the prompt
    format is the one the checkpoint was trained with, or chat/plain by the tokenizer for HF models."""
    path = ckpt
    if os.path.isdir(ckpt):  # train.py's out_dir (it also holds a config.json, but not an HF one)
        found = train.list_checkpoints(ckpt)
        best = os.path.join(ckpt, "best.pt")
        if os.path.isfile(best) or found:
            path = best if os.path.isfile(best) else found[-1]
    if os.path.isfile(path):
        state = train.load_checkpoint(path)
        model = train.model_from_checkpoint(state, device)
        cfg = state.get("config") or {}
        tok_dir = os.path.join(os.path.dirname(os.path.abspath(path)), state.get("tokenizer_dir") or "tokenizer")
        if not os.path.isdir(tok_dir):
            raise FileNotFoundError(f"{path}: its tokenizer folder {tok_dir} is missing (train.py writes it next to "
                                    f"the checkpoints; copy it along with the .pt file)")
        tok = load_tokenizer(tok_dir)
        info = {"kind": "nanomath", "path": path, "prompt_format": cfg.get("prompt_format", "plain"),
                "system_prompt": cfg.get("system_prompt", data.SYSTEM_PROMPT)}
    else:
        model = from_pretrained(ckpt, device=device)  # FileNotFoundError naming where it looked
        tok = load_tokenizer(model.source_dir)
        info = {"kind": "hf", "path": model.source_dir, "prompt_format": "chat" if is_chat_tokenizer(tok) else "plain",
                "system_prompt": data.SYSTEM_PROMPT}
    if tok.n_vocab > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.n_vocab} tokens but the model only "
                         f"{model.config.vocab_size} embedding rows")
    model.eval()
    return model, tok, info


def export_hf(model, tok, out_dir):
    """A Hugging Face checkpoint folder: config.json + safetensors (model.save_pretrained), the tokenizer files,
    and a generation_config.json naming our stop tokens if the source did not bring one."""
    save_pretrained(model, out_dir)
    tok.save(out_dir)
    gen = os.path.join(out_dir, "generation_config.json")
    if not os.path.isfile(gen):
        cfg = {"eos_token_id": sorted(tok.stop_ids), "pad_token_id": tok.pad_id, "do_sample": False}
        write_text(gen, json.dumps(cfg, indent=2) + "\n")


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_prompts(path):
    """Prompts from a file ('-' = stdin): a .jsonl (one object per line with a prompt / question / problem key)
    or plain text, one prompt per non-empty line."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with f:
        lines = f.read().splitlines()
    if not path.endswith(".jsonl"):
        return [l for l in lines if l.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        key = next((k for k in ("prompt", "question", "problem") if isinstance(row, dict) and k in row), None)
        if key is None:
            raise ValueError(f"{path}:{n}: expected an object with a 'prompt', 'question' or 'problem' key")
        out.append(row[key])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="best.pt / ckpt-*.pt / their folder, HF folder, or cached hub id")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--prompts", help="file of prompts: one per line, or .jsonl; '-' = stdin")
    ap.add_argument("--format", choices=("auto", "chat", "plain", "raw"), default="auto",
                    help="auto: as trained / chat for chat models; plain: data.PLAIN_TEMPLATE; raw: text as is")
    ap.add_argument("--system-prompt", default=None, help="default: the checkpoint's, else data.SYSTEM_PROMPT")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 256, or the protocol's with --eval")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="compute dtype (autocast): auto, float32, bfloat16, float16")
    ap.add_argument("--eval", help="gsm8k, math or math500: run the pinned protocol and grade")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-samples", type=int, default=0, help="evaluate the first N problems (0 = all)")
    ap.add_argument("--out", help="eval output jsonl (default eval-<dataset>-<split>.jsonl next to the checkpoint)")
    ap.add_argument("--export-hf", metavar="DIR", help="write a Hugging Face checkpoint folder and exit")
    args = ap.parse_args(argv)

    if args.eval is not None and args.eval not in PROTOCOL:
        ap.error(f"--eval: unknown dataset {args.eval!r}; choose from {', '.join(PROTOCOL)}")
    if args.num_samples < 1:
        ap.error("--num-samples must be >= 1")
    if args.num_samples > 1 and args.temperature <= 0:
        ap.error("--num-samples > 1 needs --temperature > 0 (greedy samples are all the same)")
    if not 0.0 < args.top_p <= 1.0 or args.top_k < 0 or args.temperature < 0:
        ap.error("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")

    device, ctx, _, dtype = train.setup_numerics(types.SimpleNamespace(device=args.device, dtype=args.dtype))
    try:
        model, tok, info = load_model(args.ckpt, device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(f"{info['kind']} checkpoint {info['path']}: {model.num_params() / 1e6:.1f}M parameters, device {device}, "
          f"compute dtype {dtype}", file=sys.stderr)

    if args.export_hf:
        export_hf(model, tok, args.export_hf)
        print(f"wrote a Hugging Face checkpoint to {args.export_hf}", file=sys.stderr)
        return

    fmt = info["prompt_format"] if args.format == "auto" else args.format
    system = info["system_prompt"] if args.system_prompt is None else args.system_prompt
    if args.eval:
        proto = PROTOCOL[args.eval]
        max_new = args.max_new_tokens or proto["max_new_tokens"]
        try:
            problems = data.load_dataset(args.eval, args.split)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}")
        if args.max_samples:
            problems = problems[:args.max_samples]
        if fmt == "raw":
            raise SystemExit("error: --eval needs a chat or plain prompt format")
        print(f"eval {args.eval}/{args.split}: {len(problems)} problems, prompt format {fmt}, system prompt "
              f"{system!r}, max_new_tokens {max_new}, temperature {args.temperature}, samples {args.num_samples}",
              file=sys.stderr)
        try:
            summary, records = evaluate(model, tok, problems, fmt, system, max_new_tokens=max_new,
                                        batch_size=args.batch_size, ctx=ctx, seed=args.seed,
                                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                        num_samples=args.num_samples)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        out = args.out or os.path.join(os.path.dirname(info["path"]) if info["kind"] == "nanomath" else ".",
                                       f"eval-{args.eval}-{args.split}.jsonl")
        write_text(out, "".join(json.dumps(r) + "\n" for r in records))
        settings = {"dataset": args.eval, "split": args.split, "ckpt": info["path"], "prompt_format": fmt,
                    "system_prompt": system, "max_new_tokens": max_new, "temperature": args.temperature,
                    "top_k": args.top_k, "top_p": args.top_p, "num_samples": args.num_samples, "seed": args.seed,
                    "dtype": dtype, "device": device}
        write_text(out.removesuffix(".jsonl") + ".summary.json",
                           json.dumps({**summary, "settings": settings}, indent=1) + "\n")
        print(sample_table(records))
        line = (f"{args.eval}/{args.split}: accuracy {summary['accuracy']:.4f} ({summary['n']} generations) | "
                f"format rate {summary['format_rate']:.4f} | mean length {summary['mean_length']:.1f} tokens | "
                f"mean entropy {summary['mean_entropy']:.3f} | {summary['tokens_per_s']:.1f} tok/s")
        k = args.num_samples
        if k > 1:
            line += f" | pass@{k} {summary[f'pass@{k}']:.4f} | maj@{k} {summary[f'maj@{k}']:.4f}"
        print(line)
        print(f"wrote {out}", file=sys.stderr)
        return summary

    texts = list(args.prompt or [])
    if args.prompts:
        texts += read_prompts(args.prompts)
    if not texts and not sys.stdin.isatty():
        texts = read_prompts("-")
    if not texts:
        ap.error("no prompts: give --prompt, --prompts FILE, stdin, --eval or --export-hf")
    if fmt == "raw":
        prompts = [tok.encode(t, allow_special=False) for t in texts]
    else:
        prompts = [data.render_prompt(tok, t, fmt, system) for t in texts]
    prompts = [p for p in prompts for _ in range(args.num_samples)]
    max_new = args.max_new_tokens or 256
    single = len(prompts) == 1
    stream = TextStream(tok) if single else None
    t0 = time.time()
    try:
        outs, _ = generate(model, prompts, max_new, args.temperature, args.top_k, args.top_p, tok.stop_ids,
                           args.seed, ctx, stream, batch_size=args.batch_size)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    dt = time.time() - t0
    if single:
        stream.close()
    else:
        for k, ids in enumerate(outs):
            head = f"=== prompt {k // args.num_samples}" + (f", sample {k % args.num_samples}" if args.num_samples > 1 else "")
            print(f"{head}: {texts[k // args.num_samples]!r}\n{tok.decode(ids)}")
    n_tok = sum(len(o) for o in outs)
    print(f"{n_tok} tokens in {dt:.2f}s ({n_tok / max(dt, 1e-9):.1f} tok/s)", file=sys.stderr)
    return outs


if __name__ == "__main__":
    main()
