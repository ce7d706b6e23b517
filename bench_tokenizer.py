"""
Encode throughput of our tokenizers vs the Hugging Face fast tokenizer (`tokenizers`, Rust) on all vendored text
(GSM8K train+test, MATH train+test, MATH-500: every question/answer/problem/solution/answer string).

    python bench_tokenizer.py                # both sides on os.cpu_count() threads
    python bench_tokenizer.py --threads=1    # single-threaded comparison

HF's thread pool (rayon) is sized once per process from RAYON_NUM_THREADS, so the flag is applied before importing it.
The benchmark is the only place outside tests/ that imports `tokenizers`.
"""
import os
import platform
import sys
import time

threads = os.cpu_count() or 1
repeats = 3
for arg in sys.argv[1:]:
    key, _, val = arg.lstrip("-").partition("=")
    if key == "threads":
        threads = int(val)
    elif key == "repeats":
        repeats = int(val)
    else:
        sys.exit(f"unknown argument {arg!r} (use --threads=N --repeats=N)")
os.environ["RAYON_NUM_THREADS"] = str(threads)
os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"

import tiktoken  # noqa: E402
import tokenizers  # noqa: E402

import data  # noqa: E402
import tokenizer as T  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
texts = data.read_texts()  # every question, answer, problem and solution string of the vendored data
nbytes = sum(len(t.encode()) for t in texts)

cpu = platform.processor() or "?"
try:
    with open("/proc/cpuinfo") as f:
        cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
except (OSError, StopIteration):
    pass
print(f"machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}")
print(f"versions: tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}")
print(f"data: {len(texts):,} strings, {nbytes / 1e6:.2f} MB UTF-8")
print(f"settings: threads={threads} on both sides (ours: encode_batch(num_threads={threads}); HF: "
      f"Tokenizer.encode_batch with RAYON_NUM_THREADS={threads}), best of {repeats} runs, add_special_tokens=False")


def bench(fn):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def report(name, dt, ids):
    ntok = sum(map(len, ids))
    print(f"  {name:<28s} {dt:7.3f} s  {ntok / dt / 1e6:6.2f} M tokens/s  {nbytes / dt / 1e6:6.2f} MB/s  ({ntok:,} tokens)")
    return dt


qwen = T.load_tokenizer(os.path.join(HERE, "tests", "fixtures", "qwen2.5"))
ref = tokenizers.Tokenizer.from_file(os.path.join(HERE, "tests", "fixtures", "qwen2.5", "tokenizer.json"))
ours_dt, ours = bench(lambda: qwen.encode_batch(texts, num_threads=threads))
hf_dt, theirs = bench(lambda: [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)])
print("qwen2.5 tokenizer:")
report("nanomath (tiktoken)", ours_dt, ours)
report("HF tokenizers (fast)", hf_dt, theirs)
print(f"  ids identical: {ours == theirs};  speed ratio ours/HF: {hf_dt / ours_dt:.2f}x")

math_tok = T.load_tokenizer("math")
m_dt, m_ids = bench(lambda: math_tok.encode_batch(texts, num_threads=threads))
print("math tokenizer (4096 tokens):")
report("nanomath math (tiktoken)", m_dt, m_ids)
print(f"  bytes/token: math {nbytes / sum(map(len, m_ids)):.2f}, qwen {nbytes / sum(map(len, ours)):.2f}")
