"""
Benchmarks against the Hugging Face reference, measured in the same run on the same inputs.

    python bench.py gen                                   # random weights at the Qwen2.5-0.5B shape, GSM8K test prompts
    python bench.py gen --model 1.5b                      # the Qwen2.5-1.5B shape
    python bench.py gen --model /path/to/Qwen2.5-0.5B-Instruct   # a real checkpoint: answers are graded too

gen: our engine (engine.evaluate: continuous batching, CUDA-graph decode step) against Hugging Face `generate`
(bf16 weights, SDPA attention, left-padded static batches sorted by length, greedy), both on the first --hf-n
prompts of the dataset; then our engine alone on all --n prompts. It prints the settings, the machine, wall time,
new tokens/s, accuracy (meaningful for a real checkpoint only) and the ratio. Random weights rarely emit a stop
token, so both sides then generate --max-new-tokens for (nearly) every prompt: the same work for each.
transformers is needed only for the reference; without it the reference is skipped.
"""
import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time

import torch

import data
import grade as G
from checkpoint import load_model, save_pretrained, save_tokenizer
from engine import EVAL_MAX_NEW_TOKENS, evaluate
from model import ModelConfig, Transformer
from tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
QWEN_TOKENIZER = os.path.join(HERE, "tests", "fixtures", "qwen2.5")  # the real Qwen2.5 tokenizer files
SHAPES = {  # Qwen2.5 shapes (tied embeddings, q/k/v bias, rope 1e6)
    "0.5b": dict(n_layer=24, n_embd=896, n_head=14, n_kv_head=2, intermediate_size=4864),
    "1.5b": dict(n_layer=28, n_embd=1536, n_head=12, n_kv_head=2, intermediate_size=8960),
}


def machine():
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        dev = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    else:
        dev = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{dev}; torch {torch.__version__}, Python {platform.python_version()}"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def get_model(name, device, dtype, tmp):
    """(model, tok, folder an HF model can load, label). Random weights (our init) at a named shape, saved to tmp
    so the reference runs the very same weights; or a checkpoint path."""
    if name in SHAPES:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=151936, max_seq_len=32768, rope_theta=1e6, qkv_bias=True, tie_embeddings=True,
                          **SHAPES[name])
        with torch.device(device):
            model = Transformer(cfg).to(dtype)
        tok = load_tokenizer(QWEN_TOKENIZER)
        save_pretrained(model, tmp)
        save_tokenizer(tok, tmp)
        return model, tok, tmp, f"random weights, Qwen2.5-{name.upper()} shape"
    model, tok, info = load_model(name, device, dtype)
    return model, tok, info["path"], name


def hf_generate(path, prompts, max_new, stop_ids, pad_id, batch_size, dtype):
    """Hugging Face generate on the prompts (lists of ids) -> (list of new ids per prompt, seconds)."""
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").cuda().eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outs = [None] * len(prompts)

    def run(idx_list, n_new):
        P = max(len(prompts[i]) for i in idx_list)
        ids = torch.tensor([[pad_id] * (P - len(prompts[i])) + prompts[i] for i in idx_list], device="cuda")
        am = torch.tensor([[0] * (P - len(prompts[i])) + [1] * len(prompts[i]) for i in idx_list], device="cuda")
        with torch.no_grad():
            g = hf.generate(input_ids=ids, attention_mask=am, max_new_tokens=n_new, do_sample=False,
                            eos_token_id=sorted(stop_ids), pad_token_id=pad_id)[:, P:].tolist()
        return [row[:next((k for k, t in enumerate(row) if t in stop_ids), len(row))] for row in g]

    run(order[:4], 8)  # warm-up
    sync()
    t0 = time.time()
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        for i, o in zip(chunk, run(chunk, max_new)):
            outs[i] = o
    sync()
    return outs, time.time() - t0


def bench_gen(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="nanomath-bench-") as tmp:
        _bench_gen(args, device, dtype, tmp)


def _bench_gen(args, device, dtype, tmp):
    t0 = time.time()
    model, tok, path, label = get_model(args.model, device, dtype, tmp)
    load_s = time.time() - t0
    model.eval()
    problems = data.load_dataset(args.dataset, args.split)
    problems = problems[:args.n] if args.n else problems
    max_new = args.max_new_tokens or EVAL_MAX_NEW_TOKENS[args.dataset]
    fmt = "chat" if tok.has_chat_template else "plain"
    print(f"machine: {machine()}")
    print(f"model: {label} ({model.num_params() / 1e6:.0f}M parameters, {args.dtype}), loaded in {load_s:.1f}s")
    print(f"data: {args.dataset}/{args.split}, {len(problems)} problems, {fmt} prompts, greedy, <= {max_new} new "
          f"tokens; ours: {args.batch_size} slots; reference: batches of {args.hf_batch_size}")
    kw = dict(max_new_tokens=max_new, batch_size=args.batch_size)
    evaluate(model, tok, problems[:4], fmt, data.SYSTEM_PROMPT, max_new_tokens=8)  # warm-up (cuBLAS, kernels)
    rows = []

    def ours(probs, what):
        torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
        s, recs = evaluate(model, tok, probs, fmt, data.SYSTEM_PROMPT, **kw)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        rows.append((what, len(probs), s["generate_s"] + s["grade_s"], s["generate_s"], sum(r["n_tokens"] for r in recs),
                     s["accuracy"], mem))
        return s, recs

    n_hf = min(args.hf_n, len(problems))
    have_hf = False
    if n_hf and device == "cuda":
        have_hf = importlib.util.find_spec("transformers") is not None
        if not have_hf:
            print("transformers is not installed: no reference run")
    if have_hf:
        sub = problems[:n_hf]
        s_ours, recs = ours(sub, f"ours, first {n_hf}")
        prompts = [data.render_prompt(tok, p["prompt"], fmt, data.SYSTEM_PROMPT) for p in sub]
        outs, dt = hf_generate(path, prompts, max_new, tok.stop_ids, tok.pad_id, args.hf_batch_size, dtype)
        torch.cuda.empty_cache()
        acc = sum(G.grade(tok.decode(o), p["answer"]).correct for o, p in zip(outs, sub)) / len(sub)
        same = sum(r["response"] == tok.decode(o) for r, o in zip(recs, outs))
        rows.append((f"HF generate, first {n_hf}", n_hf, dt, dt, sum(map(len, outs)), acc, float("nan")))
    if len(problems) > n_hf or not have_hf:
        ours(problems, f"ours, all {len(problems)}")

    print(f"\n{'run':<26} {'problems':>8} {'wall s':>8} {'gen s':>8} {'new tokens':>11} {'tok/s':>9} {'accuracy':>9} "
          f"{'peak GiB':>9}")
    for what, n, wall, gen, ntok, acc, mem in rows:
        print(f"{what:<26} {n:>8} {wall:>8.2f} {gen:>8.2f} {ntok:>11} {ntok / gen:>9.0f} {acc:>9.4f} {mem:>9.1f}")
    if have_hf:
        o, h = rows[0], rows[1]
        print(f"\nratio on the same {n_hf} prompts: {h[3] / o[3]:.2f}x less generation time, "
              f"{(o[4] / o[3]) / (h[4] / h[3]):.2f}x the tokens/s of HF generate; "
              f"{same}/{n_hf} responses identical")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gen", help="generation: our engine vs Hugging Face generate")
    g.add_argument("--model", default="0.5b", help="0.5b, 1.5b (random weights at that shape) or a checkpoint path")
    g.add_argument("--dataset", default="gsm8k", choices=sorted(EVAL_MAX_NEW_TOKENS))
    g.add_argument("--split", default="test")
    g.add_argument("--n", type=int, default=0, help="problems for our engine (0 = all)")
    g.add_argument("--hf-n", type=int, default=256, help="problems for the head-to-head (0 = no reference run)")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--hf-batch-size", type=int, default=128)
    g.add_argument("--max-new-tokens", type=int, default=0, help="0 = the evaluation protocol's")
    g.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    if args.what == "gen":
        bench_gen(args)


if __name__ == "__main__":
    sys.exit(main())
