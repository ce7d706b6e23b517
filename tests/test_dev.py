"""The lab notebook's Python scripts (dev/) run on the CPU, so a change to what they import cannot break them
silently: dev/parity_real.py on a tiny Qwen2 checkpoint that carries the real Qwen2.5 tokenizer."""
import os
import shutil
import subprocess
import sys

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "qwen2.5")


def tiny_qwen_with_real_tokenizer(folder):
    cfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(TOKENIZER, f), folder)


def run(*args):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_parity_script_runs_and_agrees(tmp_path):
    tiny_qwen_with_real_tokenizer(tmp_path)
    out = run("dev/parity_real.py", str(tmp_path), "--device", "cpu", "--new-tokens", "8")
    assert "chat ids equal: True" in out and "torch.float32: greedy 8 tokens: first 8 identical" in out, out


def test_engine_check_script_runs_and_agrees(tmp_path):
    tiny_qwen_with_real_tokenizer(tmp_path)
    out = run("dev/engine_check.py", "--model", str(tmp_path), "--device", "cpu", "--n", "6", "--new", "8")
    assert "graph vs eager: 6/6 identical sequences" in out and "equals a fresh engine on 12/12" in out, out
    assert "LoRA unmerged, graph vs eager: 6/6 identical" in out, out
    assert "sampled at T 1, graph vs eager: 12/12 identical sequences" in out, out


def test_attention_decode_bench_agrees_on_cpu():
    out = run("dev/attn_decode_bench.py", "--device", "cpu", "--slots", "3,5", "--max-len", "256", "--iters", "1",
              "--flex")
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] in (["sdpa"], ["flex"])]
    assert len(rows) == 4 and all(float(r[-1]) < 1e-5 for r in rows), out
