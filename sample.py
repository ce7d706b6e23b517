"""
Generate from a model, evaluate it on GSM8K / MATH, or export it to a Hugging Face folder.

    python sample.py --ckpt out/best.pt --prompt "What is 12 + 30?"         # streams one answer
    python sample.py --ckpt Qwen/Qwen2.5-0.5B-Instruct --prompts qs.txt --temperature 0.7 --num-samples 4
    python sample.py --ckpt out/best.pt --eval gsm8k --max-samples 200      # accuracy, format rate, tokens/s
    python sample.py --ckpt out/best.pt --export-hf out/hf                  # transformers can load out/hf

--ckpt is a training checkpoint (best.pt / ckpt-*.pt, or the folder holding them), a Hugging Face checkpoint
folder, or a hub id already in the local HF cache (never downloaded): checkpoint.load_model reads them all.
Generation and the evaluation protocol live in engine.py (train.py's periodic eval runs the same code), so
what train.py logs is what this script prints.
"""
import argparse
import codecs
import json
import os
import sys
import time

import torch

import data
from checkpoint import (check_output_folder, checkpoint_file, export_hf, has_value_head, load_model,
                        model_config_of, resolve_checkpoint_dir, write_text)
from engine import Sampling, engine_bytes, evaluate, generate, gib, sample_table, slots_that_fit
from model import setup_numerics


class TextStream:
    """Prints the decoded text of a stream of token ids as it arrives. Tokens are bytes and one
    character may be split across tokens, so bytes go through an incremental UTF-8 decoder that
    holds back an incomplete tail."""

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


PROMPT_KEYS = ("prompt", "question", "problem")


def read_prompts(path):
    """Prompts from a file ('-' = stdin): a .jsonl (one object per line with a prompt / question / problem
    key) or plain text, one prompt per non-empty line."""
    if path.endswith(".jsonl"):
        rows = data.read_jsonl(path, one_of=PROMPT_KEYS)
        return [next(row[k] for k in PROMPT_KEYS if k in row) for row in rows]
    try:
        if path == "-":
            if sys.stdin is None:
                raise ValueError("--prompts -: there is no standard input (it is closed)")
            # the bytes, decoded strictly: the text layer may replace what is not UTF-8 (surrogateescape)
            raw = getattr(sys.stdin, "buffer", None)
            text = raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
        else:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--prompts {path}: file not found") from None
    except UnicodeDecodeError as e:
        where = "standard input" if path == "-" else f"--prompts {path}"
        raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"--prompts {path}: cannot be read ({e.strerror})") from None
    return [line for line in text.splitlines() if line.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="best.pt / ckpt-*.pt / their folder, HF folder, or hub id")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--prompts", help="file of prompts: one per line, or .jsonl; '-' = stdin")
    ap.add_argument("--format", choices=("auto", "chat", "plain", "raw"), default="auto",
                    help="auto: as trained / chat for chat models; plain: data.PLAIN_TEMPLATE; raw: as is")
    ap.add_argument("--system-prompt", default=None, help="default: the checkpoint's, or data.SYSTEM_PROMPT")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 256, the protocol's in --eval")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="sequences decoded at once (KV-cache slots); 0 = 256 on CUDA, 32 elsewhere")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="weights and compute dtype: auto, float32, bfloat16, "
                    "float16")
    ap.add_argument("--entropy", action="store_true", help="also report the mean per-token entropy (costs a "
                    "softmax over the vocabulary per token)")
    ap.add_argument("--eval", help="gsm8k, math, math500 (the pinned protocol) or a .jsonl of problems with "
                    "answers: generate and grade")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-samples", type=int, default=0, help="evaluate the first N problems (0 = all)")
    ap.add_argument("--out", help="eval output jsonl (default: eval-<checkpoint>-<dataset>-<split>[-n<N>]"
                    "[-k<k>-t<T>].jsonl next to the checkpoint)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing eval output files")
    ap.add_argument("--export-hf", metavar="DIR", help="write a Hugging Face checkpoint folder and exit")
    ap.add_argument("--verifier", metavar="CKPT", help="with --eval: score every sample with this verifier "
                    "(a checkpoint of train.py objective=verifier); with --num-samples k adds verifier@k and "
                    "weighted_maj@k")
    ap.add_argument("--rft-out", metavar="FILE", help="with --eval: also write the correct, finished, "
                    "distinct samples as a jsonl train.py trains on (rejection-sampling fine-tuning)")
    ap.add_argument("--rft-max-per-problem", type=int, default=0, help="distinct solutions kept per problem "
                    "(0 = all)")
    ap.add_argument("--rft-with", metavar="FILE", action="append", default=[], help="with --rft-out: graded "
                    "samples of an earlier round (its --out file, same --eval problems); their solutions "
                    "come first and the new round adds only distinct ones (expert iteration; repeatable)")
    # one line, exit 1
    ap.error = lambda msg: sys.exit(f"sample.py: {msg} (python sample.py -h lists the options)")
    args = ap.parse_args(argv)
    check_options(args, ap)
    try:
        return _main(args, ap)
    except (ValueError, OSError) as e:  # bad input (checkpoint, prompts, device): one line, no traceback
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:  # outputs are written all or none, at the end
        print("interrupted: no output written", file=sys.stderr)
        raise SystemExit(130) from None


def check_options(args, ap):
    """The options on their own and together, before anything is read: ap.error (one line, exit 1) if not."""
    paths = (("--ckpt", args.ckpt), ("--prompts", args.prompts), ("--eval", args.eval), ("--out", args.out),
             ("--export-hf", args.export_hf), ("--verifier", args.verifier), ("--rft-out", args.rft_out),
             *(("--rft-with", f) for f in args.rft_with))
    empty = next((flag for flag, v in paths if v is not None and not v.strip()), None)
    if empty:  # an empty value would read as the option left out
        ap.error(f"{empty}: an empty path; name a file or folder")
    named = data.DATASETS.get(args.eval)
    if args.eval is not None and not named and not os.path.isfile(args.eval):
        ap.error(f"--eval: unknown dataset {args.eval!r}; choose from {', '.join(data.DATASETS)} or give a "
                 f".jsonl file of problems with answers")
    if args.eval is not None and not named and args.split != "test":
        ap.error(f"--split {args.split!r}: --eval {args.eval} is a file, which has no splits")
    if named and args.split not in named.splits:
        splits = named.splits
        has = f"only a {splits[0]} split" if len(splits) == 1 else f"the splits {', '.join(splits)}"
        ap.error(f"--split {args.split!r}: {args.eval} has {has}")
    if args.num_samples < 1:
        ap.error("--num-samples must be >= 1")
    if args.num_samples > 1 and args.temperature <= 0:
        ap.error("--num-samples > 1 needs --temperature > 0 (greedy samples are all the same)")
    if not 0.0 < args.top_p <= 1.0 or args.top_k < 0 or not 0 <= args.temperature < float("inf"):
        ap.error("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        ap.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if (args.verifier or args.rft_out) and not args.eval:
        ap.error("--verifier and --rft-out go with --eval (they need graded samples)")
    if args.rft_with and not args.rft_out:
        ap.error("--rft-with goes with --rft-out (it merges earlier rounds into that file)")
    if args.rft_max_per_problem and not args.rft_out:
        ap.error("--rft-max-per-problem goes with --rft-out (it bounds the solutions that file keeps)")
    if args.eval and args.format == "raw":
        ap.error("--eval needs a chat or plain prompt format")
    if args.system_prompt is not None and args.format in ("plain", "raw"):
        ap.error(f"--system-prompt goes with the chat format: --format {args.format} has no system prompt")
    if args.batch_size < 0 or args.max_samples < 0 or args.rft_max_per_problem < 0:
        ap.error("--batch-size, --max-samples and --rft-max-per-problem must be >= 0 (0 = the default / all)")
    if not 0 <= args.seed < 2**63:
        ap.error(f"--seed must be an integer from 0 to 2**63 - 1, got {args.seed}")
    others = [f for f, v in (("--prompt", args.prompt), ("--prompts", args.prompts), ("--eval", args.eval))
              if v]
    if args.export_hf and others:
        ap.error(f"--export-hf writes a checkpoint and exits: it does not go with {others[0]}")
    if args.eval and (args.prompt or args.prompts):
        ap.error("--eval grades its dataset's problems: it does not go with --prompt / --prompts")


def _graded_samples(path):
    """The records of an earlier `--eval --out` file, checked: what rft_rows reads of each."""
    rows = data.read_jsonl(path, required=("id", "prompt", "response"), lines=True)
    for n, r in rows:
        bad = next((k for k in ("correct", "formatted", "truncated") if not isinstance(r.get(k), bool)), None)
        if bad:
            raise ValueError(f"{path}:{n}: '{bad}' must be true or false (expected the --out file of "
                             f"sample.py --eval), got {r.get(bad)!r}")
        r.setdefault("gold", None)
    return [r for _, r in rows]


def _eval_out_path(args, ckpt_file, ckpt_dir, part):
    """Where --eval writes: --out, or a name that says what was evaluated (part: the first --max-samples
    problems, not all), next to one of our checkpoints (else in the current folder)."""
    if args.out:
        return args.out
    stem = os.path.splitext(os.path.basename((ckpt_file or ckpt_dir).rstrip("/")))[0]
    what = f"{args.eval}-{args.split}" if args.eval in data.DATASETS else \
        os.path.splitext(os.path.basename(args.eval))[0]
    name = f"eval-{stem}-{what}"
    name += f"-n{args.max_samples}" if part else ""
    name += f"-k{args.num_samples}-t{args.temperature:g}" if args.temperature > 0 else ""
    return os.path.join(os.path.dirname(ckpt_file) if ckpt_file else ".", name + ".jsonl")


def _eval_inputs(args, ap, plan, ckpt_file, ckpt_dir):
    """--eval's part of the validation pass: its problems (the first --max-samples), earlier rounds'
    samples (--rft-with) into plan; -> its outputs {"out", "summary", "rft"}, none there unless
    --overwrite."""
    problems = data.load_dataset(args.eval, args.split)  # a file is used as it is (no split)
    if args.eval not in data.DATASETS and any(p["answer"] is None for p in problems):
        ap.error(f"--eval {args.eval}: every problem needs an answer to grade against")
    if args.max_samples > len(problems):
        split = f" in its {args.split} split" if args.eval in data.DATASETS else ""
        print(f"note: --max-samples {args.max_samples}: {args.eval} has {len(problems)} problems{split}: "
              f"evaluating all of them", file=sys.stderr)
    plan["problems"] = problems[:args.max_samples] if args.max_samples else problems
    # rejection sampling writes training data: of test problems, the next run would train on the test set
    leak = data.test_problem(plan["problems"]) if args.rft_out else None
    if leak:
        split = f" --split {args.split}" if args.eval in data.DATASETS else ""
        ap.error(f"--rft-out: problem {leak[0]} of --eval {args.eval}{split} is one of {leak[1]}'s test "
                 f"problems, and --rft-out makes training data of it: rejection-sample training problems"
                 f"{' (--split train)' if split else ''}")
    ids = {p["id"] for p in problems}
    for f in args.rft_with:  # an earlier round of the same problems, or the union would mix two tasks
        rows = _graded_samples(f)
        stray = next((r["id"] for r in rows if r["id"] not in ids), None)
        if not rows:
            ap.error(f"--rft-with {f}: holds no samples")
        if stray is not None:
            ap.error(f"--rft-with {f}: a sample of problem {stray!r}, which --eval {args.eval} does not "
                     f"have (expected an --out file of the same problems)")
        plan["earlier"] += rows
    # all of them is the whole eval, named so (not by the request, "-n<max-samples>")
    out = _eval_out_path(args, ckpt_file, ckpt_dir, len(plan["problems"]) < len(problems))
    outs = {"out": out, "summary": out.removesuffix(".jsonl") + ".summary.json", "rft": args.rft_out}
    existing = [p for p in outs.values() if p and os.path.exists(p)]
    if existing and not args.overwrite:
        ap.error(f"{existing[0]} exists: pass --overwrite to replace it, or --out for another name")
    return outs


def _checked_inputs(args, ap, device, dtype):
    """The validation pass: everything this run reads and writes, checked before a model is loaded, so a
    mistake costs seconds, not an hour of sampling. The checkpoints exist; the problems load and have answers;
    earlier rounds' samples parse; every output's folder exists or can be made, and no output exists unless
    --overwrite; the model's context and the device's memory hold what is asked. Output folders are made here.
    -> what the run needs: problems, earlier, outputs, texts, slots."""
    ckpt_file = checkpoint_file(args.ckpt)
    ckpt_dir = None if ckpt_file else str(resolve_checkpoint_dir(args.ckpt))  # names where it looked
    plan = {"problems": None, "earlier": [], "outputs": {}, "texts": None, "slots": None}
    if args.verifier:  # a checkpoint of train.py objective=verifier (a value head), read without its weights
        vfile = checkpoint_file(args.verifier)
        if not vfile:
            resolve_checkpoint_dir(args.verifier)
        if not (vfile and has_value_head(vfile)):
            ap.error(f"--verifier {args.verifier}: not a verifier checkpoint (no value head; train one with "
                     f"train.py objective=verifier)")
    if args.export_hf:
        outs = {"export": args.export_hf}
        if os.path.isdir(args.export_hf) and os.listdir(args.export_hf) and not args.overwrite:
            ap.error(f"--export-hf {args.export_hf}: the folder is not empty: --overwrite writes in it")
    elif args.eval:
        outs = _eval_inputs(args, ap, plan, ckpt_file, ckpt_dir)
    else:
        texts = list(args.prompt or [])
        if args.prompts:
            texts += read_prompts(args.prompts)
        if any(t == "" for t in texts) and args.format == "raw":
            ap.error("--prompt: an empty prompt gives the model nothing to continue in raw format")
        if not texts and sys.stdin is not None and not sys.stdin.isatty():
            texts = read_prompts("-")
        if not texts:
            ap.error("no prompts: give --prompt, --prompts FILE (not empty), text on stdin, --eval or "
                     "--export-hf")
        plan["texts"], outs = texts, {}
    outs = {k: p for k, p in outs.items() if p}
    files = [os.path.abspath(p) for k, p in outs.items() if k != "export"]
    if len(set(files)) < len(files):
        ap.error(f"--out and --rft-out (and the summary next to --out) must be different files: {files}")
    inputs = [p for p in [ckpt_file, args.eval, args.verifier and checkpoint_file(args.verifier),
                          args.prompts, *args.rft_with] if p and os.path.isfile(p)]
    clash = next((p for p in files if os.path.exists(p) and any(os.path.samefile(p, q) for q in inputs)),
                 None)
    if clash:
        ap.error(f"{clash} is an input of this run: an output may not replace it")
    if args.export_hf and os.path.isdir(args.export_hf) and checkpoint_file(args.export_hf):
        ap.error(f"--export-hf {args.export_hf}: the folder holds a training run (best.pt / ckpt-*.pt): "
                 f"export into a folder of its own")
    folder_named = next((p for k, p in outs.items()
                         if k != "export" and (os.path.isdir(p) or p.endswith("/"))), None)
    if folder_named:
        ap.error(f"{folder_named} is a folder: name a file")
    folders = [p if k == "export" else os.path.dirname(p) or "." for k, p in outs.items()]
    for path, folder in zip(outs.values(), folders):
        why = check_output_folder(folder)
        if why:
            ap.error(f"{path}: {folder} {why}")
    plan["slots"] = None if args.export_hf else _checked_slots(args, ap, plan, device, dtype)
    for path, folder in zip(outs.values(), folders):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:  # what access() could not foresee (/proc, a full or read-only file system)
            ap.error(f"{path}: its folder {folder} cannot be made ({e.strerror})")
    plan["outputs"] = outs
    return plan


def _max_new(args):
    """The new tokens per sequence: --max-new-tokens, else the protocol's for a named --eval (512 for a file),
    else 256."""
    named = data.DATASETS.get(args.eval)
    if args.max_new_tokens:
        return args.max_new_tokens
    return (named.max_new_tokens if named else 512) if args.eval else 256


def _checked_slots(args, ap, plan, device, dtype):
    """The model's context and the device's memory against what the run asks, from the checkpoint's config
    alone (before its weights load): -> the KV-cache slots to decode with. --max-new-tokens must leave room
    for a prompt; the slots' cache must fit beside the weights, else the flag that set them is named (the
    default slot count is lowered instead, with a note)."""
    mc = model_config_of(args.ckpt)
    max_new = _max_new(args)
    if max_new >= mc.max_seq_len:
        if args.max_new_tokens:
            ap.error(f"--max-new-tokens {max_new}: the model's context holds max_seq_len={mc.max_seq_len} "
                     f"tokens, the prompt included: at most {mc.max_seq_len - 1} new tokens fit")
        print(f"note: the default of {max_new} new tokens is capped by the model's context of max_seq_len="
              f"{mc.max_seq_len} tokens, the prompt included", file=sys.stderr)
    k, n = args.num_samples, len(plan["problems"] or plan["texts"])
    asked = args.batch_size or (256 if device.startswith("cuda") else 32)
    slots = max(k, min(asked, n * k))  # engine.generate's: every sample of a prompt decodes at once
    L = min(mc.max_seq_len, max_new + 1)  # at least: a one-token prompt and its new tokens
    cache_dtype, sampled = getattr(torch, dtype), args.temperature > 0
    fit, free = slots_that_fit(mc, L, cache_dtype, device, sampled)
    if fit is None or slots <= fit:
        return asked
    if k > fit or args.batch_size:
        flag, value = ("--num-samples", k) if k > fit else ("--batch-size", asked)
        need = engine_bytes(mc, slots, L, cache_dtype, sampled)
        ap.error(f"{flag} {value}: {slots} KV-cache slots of {L} positions need {gib(need)}, more than the "
                 f"{gib(free)} of memory this {device} has beside the model's weights; lower {flag} (or "
                 f"--max-new-tokens)")
    # the default, not the user's: as many slots as fit in half that memory (prefills need some too)
    fewer = max(k, slots_that_fit(mc, L, cache_dtype, device, sampled, share=0.5)[0])
    print(f"note: {slots} KV-cache slots (the default --batch-size) do not fit in the {gib(free)} of memory "
          f"this {device} has beside the model's weights: decoding {fewer} at once", file=sys.stderr)
    return fewer


def _note_capped(args, lengths, max_seq_len):
    """One line when --max-new-tokens, as the user set it, does not fit after some prompts (of these token
    lengths) in the model's context: those generations stop at the context's end."""
    cut = sum(n + args.max_new_tokens > max_seq_len for n in lengths) if args.max_new_tokens else 0
    if cut:
        print(f"note: --max-new-tokens {args.max_new_tokens} does not fit after {cut} of the {len(lengths)} "
              f"prompts in the model's context of max_seq_len={max_seq_len} tokens: those stop at its end",
              file=sys.stderr)


def _write_all(files):
    """Write (path, text) pairs, all or none: if one fails, the ones this call wrote are removed, so a re-run
    is not refused for an output of a run that did not finish."""
    done = []
    try:
        for path, text in files:
            write_text(path, text)
            done.append(path)
    except BaseException:
        for path in done:
            os.remove(path)
        raise


def _main(args, ap):
    device, _, _, dtype = setup_numerics(args.device, args.dtype)
    plan = _checked_inputs(args, ap, device, dtype)
    batch_size = plan["slots"]
    # inference runs with the weights in the compute dtype (no autocast casts every step); an export keeps the
    # checkpoint's own dtype
    model, tok, info = load_model(args.ckpt, device, dtype=None if args.export_hf else getattr(torch, dtype))
    model.eval()
    print(f"{info['kind']} checkpoint {info['path']}: {model.num_params() / 1e6:.1f}M parameters, device "
          f"{device}, compute dtype {dtype}", file=sys.stderr)
    if args.export_hf:
        export_hf(model, tok, args.export_hf)
        print(f"wrote a Hugging Face checkpoint to {args.export_hf}", file=sys.stderr)
        return
    fmt = info["prompt_format"] if args.format == "auto" else args.format
    system = info["system_prompt"] if args.system_prompt is None else args.system_prompt
    if args.system_prompt is not None and fmt != "chat":
        print(f"note: --system-prompt is not used: this checkpoint's prompt format is {fmt}", file=sys.stderr)
    if args.eval:
        return _eval(args, ap, plan, model, tok, info, fmt, system, device, dtype, batch_size)

    texts = plan["texts"]
    if fmt == "raw":
        prompts = [tok.encode(t, allow_special=False) for t in texts]
    else:
        prompts = [data.render_prompt(tok, t, fmt, system) for t in texts]
    max_new = _max_new(args)
    _note_capped(args, [len(p) for p in prompts], model.config.max_seq_len)
    single = len(prompts) * args.num_samples == 1
    stream = TextStream(tok) if single else None
    t0 = time.time()
    stop_ids = tuple(sorted(tok.stop_ids))
    sampling = Sampling(max_new, args.temperature, args.top_k, args.top_p, args.seed, stop_ids)
    samples = generate(model, prompts, sampling, args.num_samples, batch_size, stream=stream)
    dt = time.time() - t0
    outs = [smp.ids for smp in samples]
    if single:
        stream.close()
    else:
        k = args.num_samples
        for i, ids in enumerate(outs):
            head = f"=== prompt {i // k}" + (f", sample {i % k}" if k > 1 else "")
            print(f"{head}: {texts[i // k]!r}\n{tok.decode(ids)}")
    n_tok = sum(len(o) for o in outs)
    print(f"{n_tok} tokens in {dt:.2f}s ({n_tok / max(dt, 1e-9):.1f} tok/s)", file=sys.stderr)
    return outs


def _eval(args, ap, plan, model, tok, info, fmt, system, device, dtype, batch_size):
    """--eval: generate for every problem, grade, write the records (and RFT rows) and a summary."""
    named = data.DATASETS.get(args.eval)
    max_new = _max_new(args)
    problems, earlier, outs = plan["problems"], plan["earlier"], plan["outputs"]
    verifier = None
    if args.verifier:
        vm, vtok, vinfo = load_model(args.verifier, device, getattr(torch, dtype))
        if vm.value_head is None:
            ap.error(f"--verifier {args.verifier}: this checkpoint has no value head (train one with "
                     f"train.py objective=verifier)")
        verifier = (vm.eval(), vtok, vinfo["prompt_format"], vinfo["system_prompt"])
    label = f"{args.eval}/{args.split}" if named else args.eval
    print(f"eval {label}: {len(problems)} problems, prompt format {fmt}, system prompt {system!r}, "
          f"max_new_tokens {max_new}, temperature {args.temperature}, samples {args.num_samples}",
          file=sys.stderr)
    _note_capped(args, [len(data.render_prompt(tok, p["prompt"], fmt, system)) for p in problems]
                 if args.max_new_tokens else [], model.config.max_seq_len)
    sampling = Sampling(max_new, args.temperature, args.top_k, args.top_p, args.seed)
    summary, records = evaluate(model, tok, problems, sampling, fmt, system, args.num_samples, batch_size,
                                entropy=args.entropy, verifier=verifier)
    settings = {"dataset": args.eval, "split": args.split, "ckpt": info["path"], "prompt_format": fmt,
                "system_prompt": system, "max_new_tokens": max_new, "temperature": args.temperature,
                "top_k": args.top_k, "top_p": args.top_p, "num_samples": args.num_samples, "seed": args.seed,
                "dtype": dtype, "device": device, "verifier": args.verifier}
    files = [(outs["out"], "".join(json.dumps(r) + "\n" for r in records))]
    if args.rft_out:
        rows = data.rft_rows(earlier + records, args.rft_max_per_problem)
        files.append((outs["rft"], "".join(json.dumps(r) + "\n" for r in rows)))
    files.append((outs["summary"], json.dumps({**summary, "settings": settings}, indent=1) + "\n"))
    _write_all(files)
    if args.rft_out:
        print(f"rejection sampling: {sum(r['correct'] for r in earlier + records)} correct samples"
              f"{f' (with {len(earlier)} of earlier rounds)' if earlier else ''} -> {len(rows)} distinct "
              f"solutions of {len({r['id'] for r in rows})} problems in {args.rft_out}", file=sys.stderr)
    print(sample_table(records))
    line = (f"{label}: accuracy {summary['accuracy']:.4f} ({summary['n']} generations) | "
            f"format rate {summary['format_rate']:.4f} | mean length {summary['mean_length']:.1f} tokens | "
            f"{summary['tokens_per_s']:.1f} tok/s | generate {summary['generate_s']:.1f}s, grade "
            f"{summary['grade_s']:.1f}s")
    if args.entropy:
        line += f" | mean entropy {summary['mean_entropy']:.3f}"
    k = args.num_samples
    if k > 1:
        line += f" | pass@{k} {summary[f'pass@{k}']:.4f} | maj@{k} {summary[f'maj@{k}']:.4f}"
    if verifier is not None and k > 1:
        line += (f" | verifier@{k} {summary[f'verifier@{k}']:.4f} | weighted maj@{k} "
                 f"{summary[f'weighted_maj@{k}']:.4f}")
    print(line)
    print(f"wrote {outs['out']}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
