"""Our model against transformers on a real Qwen2 checkpoint folder: the chat rendering of a GSM8K prompt against
the checkpoint's own apply_chat_template, logits in fp32 and bf16, and greedy tokens (ours through the engine).

    python dev/parity_real.py $M                    # on the GPU machine, M = the converted real model
    python dev/parity_real.py FOLDER --device cpu   # anywhere (tests/test_dev.py runs it on a tiny checkpoint)
"""
import argparse
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import from_pretrained  # noqa: E402
from data import prompt_messages  # noqa: E402
from engine import Sampling, generate  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
            "many clips did Natalia sell altogether in April and May?")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    tok, htok = load_tokenizer(args.path), AutoTokenizer.from_pretrained(args.path)
    msgs = prompt_messages(QUESTION)
    ours_ids = tok.render_chat(msgs, add_generation_prompt=True)[0]
    ref_ids = htok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ref_ids = list(ref_ids["input_ids"] if hasattr(ref_ids, "keys") else ref_ids)
    print(f"chat ids equal: {ours_ids == ref_ids} ({len(ours_ids)} ids)")
    for dtype in (torch.float32, torch.bfloat16):
        t0 = time.time()
        m = from_pretrained(args.path, device=args.device, dtype=dtype)
        t1 = time.time()
        h = AutoModelForCausalLM.from_pretrained(args.path, dtype=dtype, attn_implementation="sdpa")
        h = h.to(args.device).eval()
        print(f"{dtype}: load ours {t1 - t0:.2f}s, transformers {time.time() - t1:.2f}s")
        x = torch.tensor([ours_ids], device=args.device)
        with torch.no_grad():
            a, b = m(x).float(), h(x).logits.float()
            g = h.generate(x, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None)[0, x.size(1):]
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        print(f"{dtype}: max abs logit diff {(a - b).abs().max().item():.3e}, rel {((a - b).norm() / b.norm()).item():.3e},"
              f" argmax agree {agree:.4f}")
        o = generate(m, [ours_ids], Sampling(args.new_tokens))[0].ids
        g = g.tolist()
        n = next((i for i, (p, q) in enumerate(zip(g, o)) if p != q), min(len(g), len(o)))
        print(f"{dtype}: greedy {args.new_tokens} tokens: first {n} identical (ours {len(o)}, hf {len(g)})")
        del m, h


if __name__ == "__main__":
    main()
