"""
Benchmarks against the Hugging Face reference, measured in the same run on the same inputs.

    python bench.py gen                                   # random weights at the Qwen2.5-0.5B shape, GSM8K test prompts
    python bench.py gen --model 1.5b                      # the Qwen2.5-1.5B shape
    python bench.py gen --model /path/to/Qwen2.5-0.5B-Instruct   # a real checkpoint: answers are graded too
    python bench.py train                                 # SFT steps on GSM8K: ours vs the HF Trainer recipe, 0.5B shape
    python bench.py train --model 1.5b --hf-steps 0 --grad-checkpointing -1 --batch-size 4 --grad-accum 8

gen: our engine (engine.Engine: continuous batching, compiled decode step captured as a CUDA graph) on all --n
prompts at each slot count of --slots, then against Hugging Face `generate` (bf16 weights, SDPA attention,
left-padded static batches sorted by length, greedy) on the first --hf-n. Per slot count it prints the time to
compile and capture, generation time, new tokens/s, ms per decode step (all the work over the decode steps) and
the step's memory-bound estimate: the bytes an average step must read (the weights and the live rows' filled
cache positions) over the device copy bandwidth measured in the same run. Random weights rarely emit a stop
token, so every row then generates --max-new-tokens: the same work for both sides. Accuracy means something for a real checkpoint only.
transformers is needed only for the reference; without it the reference is skipped.

train: GSM8K SFT steps with train.py's own pieces (packed rows of --seq-len, compiled blocks with flex attention
unless --no-compile, chunked loss, fused AdamW, fp32 master weights under bf16 autocast; --working-weights:
bf16 working copies of them, as rl.py has; --cudagraphs: the blocks replayed as CUDA graphs) against the Hugging Face
Trainer recipe (fp32 weights + bf16 autocast, batches of 16 examples right-padded to their longest, SDPA, its
default AdamW), on the same examples. It prints real (non-padding) tokens/s, MFU against the datasheet peak and
against a bf16 matmul peak measured in the same run, peak memory, the time to the first step, and the ratios.
Before timing, one batch goes through the compiled (flex) and the eager (boolean-mask SDPA) path: loss and
gradient differences are printed, a check that the fast path computes the same thing.
"""
import argparse
import dataclasses
import importlib.util
import os
import platform
import sys
import tempfile
import time

import torch

import data
import grade as G
import train
import training
from checkpoint import load_model, save_pretrained, save_tokenizer
from engine import Engine, Sampling
from lora import LoRALinear
import model as M
from model import ModelConfig, Transformer, gpu_peak_flops, setup_numerics
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


def copy_bandwidth():
    """Device memory bandwidth, measured: bytes read + written per second by a 2 GiB device-to-device copy."""
    a = torch.empty(2**30, dtype=torch.int16, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        b.copy_(a)
    e1.record()
    torch.cuda.synchronize()
    return 10 * 2 * a.numel() * a.element_size() / (e0.elapsed_time(e1) / 1e3)


def bench_gen(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="nanomath-bench-") as tmp:
        _bench_gen(args, device, dtype, tmp)


def _ours(engine, tok, prompts, problems, sampling, rl=False):
    """One timed generation with a warm engine (rl: each token's entropy and log-probability too, as rl.py
    asks): -> (seconds, new tokens, decode steps, accuracy, samples, seconds of prefill). The prefills (eager,
    one per batch of admitted prompts) are timed between syncs: the rest of the time is decode steps."""
    admit, prefill_s = engine._admit, []

    def timed_admit(*a):
        sync()
        t = time.time()
        admit(*a)
        sync()
        prefill_s.append(time.time() - t)
    engine._admit = timed_admit
    sync()
    steps, t0 = engine.steps, time.time()
    samples = engine.generate(prompts, sampling, entropy=rl, logprobs=rl)
    sync()
    dt = time.time() - t0
    del engine._admit  # the method again
    acc = sum(G.grade(tok.decode(s.ids), p["answer"], truncated=not s.stopped).correct
              for s, p in zip(samples, problems)) / len(problems)
    return dt, sum(len(s.ids) for s in samples), engine.steps - steps, acc, samples, sum(prefill_s)


def kernel_time(prof):
    """-> (kernels launched, seconds of kernels) in a torch.profiler run: the kernels' own events, as the
    table's footer counts them (key_averages().total_average() adds the time of the CPU ops that launched
    them too, and read twice the real figure)."""
    ev = [e for e in prof.key_averages()
          if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
    return sum(e.count for e in ev), sum(e.self_device_time_total for e in ev) / 1e6


def profile_decode(engine, sampling, rl=False, steps=10):
    """Where a decode step's time goes: the step called directly, not replayed from its graph, so that each
    kernel shows, `steps` times under the profiler (the slots' state is whatever the last generate left:
    every row runs anyway, static shapes). Prints the top kernels, then kernels and their time per step."""
    from torch.profiler import ProfilerActivity, profile
    run = engine._step_fn(sampling, rl, rl, sync_each=True)
    run()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        sync()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=70))
    n, busy = kernel_time(prof)
    print(f"decode step at {engine.B} slots, outside its graph: {n / steps:.0f} kernels, {busy / steps * 1e3:.2f} "
          f"ms of kernels per step")
    # the same step replayed from its CUDA graph, back to back: what generate's steps cost without its host work
    replay = engine._step_fn(sampling, rl, rl, sync_each=False)
    replay()
    sync()
    t0 = time.time()
    for _ in range(50):
        replay()
    sync()
    print(f"decode step at {engine.B} slots, replayed from its graph: {(time.time() - t0) / 50 * 1e3:.2f} ms per step")


def _bench_gen(args, device, dtype, tmp):
    t0 = time.time()
    model, tok, path, label = get_model(args.model, device, dtype, tmp)
    load_s = time.time() - t0
    model.eval()
    problems = data.load_dataset(args.dataset, args.split)
    problems = problems[:args.n] if args.n else problems
    max_new = args.max_new_tokens or data.DATASETS[args.dataset].max_new_tokens
    fmt = "chat" if tok.has_chat_template else "plain"
    prompts = [data.render_prompt(tok, p["prompt"], fmt, data.SYSTEM_PROMPT) for p in problems]
    L = -(-(max(map(len, prompts)) + max_new) // 64) * 64
    cfg = model.config
    per_pos = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * dtype.itemsize  # cache bytes per slot position
    w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth() if device == "cuda" else None
    print(f"machine: {machine()}" + (f"; device copy bandwidth measured now {bw / 1e12:.2f} TB/s" if bw else ""))
    print(f"model: {label} ({model.num_params() / 1e6:.0f}M parameters, {args.dtype}), loaded in {load_s:.1f}s")
    stop = tuple(sorted(tok.stop_ids))
    sampling = Sampling(max_new, args.temperature, stop_ids=stop)
    how = f"temperature {args.temperature:g}" if args.temperature > 0 else "greedy"
    how += ", with each token's entropy and log-probability (rl.py's)" if args.logprobs else ""
    M.DECODE_WITH_TRITON = not args.flash_decode
    attn = ("masked SDPA" if device != "cuda" else "flash" if args.flash_decode or not M.triton_decode()
            else "Triton split-KV")
    print(f"data: {args.dataset}/{args.split}, {len(problems)} problems, {fmt} prompts, {how}, <= {max_new} new "
          f"tokens; cache of {L} positions per slot; compiled decode step"
          f"{' captured as a CUDA graph' if device == 'cuda' else ''}, its attention by the {attn} kernel", flush=True)
    print(f"{'slots':>6} {'compile+capture s':>17} {'gen s':>7} {'new tokens':>10} {'tokens/s':>9} {'ms/step':>8} "
          f"{'bound ms':>9} {'cache GiB':>9} {'accuracy':>9} {'prefill s':>9}")
    engines = {}
    for slots in args.slots:
        engine = engines[slots] = Engine(model, slots, L, max_new)
        t0 = time.time()
        # compile and capture
        engine.generate(prompts[:4], dataclasses.replace(sampling, max_new_tokens=8), entropy=args.logprobs,
                        logprobs=args.logprobs)
        sync()
        warm = time.time() - t0
        dt, n_tok, steps, acc, samples, pre = _ours(engine, tok, prompts, problems, sampling, args.logprobs)
        # a step reads the weights and each live row's filled cache positions (on a GPU attention reads no
        # more: model.cache_attention): sequence i reads P_i + t + 1 positions at its t-th step
        reads = sum(len(p) * len(s.ids) + len(s.ids) * (len(s.ids) + 1) // 2 for p, s in zip(prompts, samples))
        bound = (w_bytes + reads / steps * per_pos) / bw * 1e3 if bw else float("nan")
        print(f"{slots:>6} {warm:>17.1f} {dt:>7.2f} {n_tok:>10} {n_tok / dt:>9.0f} {dt / steps * 1e3:>8.2f} "
              f"{bound:>9.2f} {engine.memory()['cache'] / 2**30:>9.2f} {acc:>9.4f} {pre:>9.2f}", flush=True)
        if slots != args.slots[-1]:
            engine.free()
    if args.profile and device == "cuda":
        profile_decode(engines[args.slots[-1]], sampling, args.logprobs)
    n_hf = min(args.hf_n, len(problems)) if args.temperature == 0 and not args.logprobs else 0  # greedy vs greedy
    if not (n_hf and device == "cuda" and importlib.util.find_spec("transformers")):
        return
    slots = args.slots[-1]
    dt, n_tok, _, acc, samples, _ = _ours(engines[slots], tok, prompts[:n_hf], problems[:n_hf], sampling)
    engines[slots].free()
    outs, hf_dt = hf_generate(path, prompts[:n_hf], max_new, tok.stop_ids, tok.pad_id, args.hf_batch_size, dtype)
    torch.cuda.empty_cache()
    hf_acc = sum(G.grade(tok.decode(o), p["answer"]).correct for o, p in zip(outs, problems)) / n_hf
    same = sum(s.ids == o for s, o in zip(samples, outs))
    hf_tok = sum(map(len, outs))
    print(f"\nhead-to-head on the first {n_hf} prompts: ours ({slots} slots) {dt:.2f} s, {n_tok / dt:.0f} tokens/s, "
          f"accuracy {acc:.4f}; HF generate (batches of {args.hf_batch_size}) {hf_dt:.2f} s, {hf_tok / hf_dt:.0f} "
          f"tokens/s, accuracy {hf_acc:.4f}: {hf_dt / dt:.2f}x less time; {same}/{n_hf} responses identical")


# -----------------------------------------------------------------------------
# training


def matmul_peak():
    """bf16 TFLOP/s of a large matrix product on this GPU, measured (the ceiling MFU is honest against)."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(20):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (e0.elapsed_time(e1) / 1e3)


def ours_train(args, folder, steps):
    """Our training step, timed: -> dict of results."""
    if args.config:  # an experiment's own settings (data, rows, batch, checkpointing), on the model given here
        cfg = train.load_config([args.config])
        cfg = dataclasses.replace(cfg, init_from=folder, eval_samples=0, compile=not args.no_compile)
    else:
        cfg = train.Config(init_from=folder, datasets="gsm8k", prompt_format="chat", seq_len=args.seq_len,
                           batch_size=args.batch_size, grad_accum=args.grad_accum, lr=1e-5, weight_decay=0.0,
                           beta2=0.95, compile=not args.no_compile, grad_checkpointing=args.grad_checkpointing,
                           activation_budget=args.activation_budget, eval_samples=0)
    cuda = torch.cuda.is_available()
    device, ctx, scaler, _ = setup_numerics("cuda" if cuda else "cpu", "bfloat16")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch._inductor.config.cpp_wrapper = args.cpp_wrapper  # before the first compile
    t0 = time.time()
    model, tok, _ = training.build_model(cfg, device, "bfloat16" if cuda else "float32")
    train_ds, _ = data.build_datasets(cfg.datasets, tok, cfg.seq_len, cfg.prompt_format, cfg.pack, cfg.seed,
                                      val_size=cfg.val_size, system_prompt=cfg.system_prompt)
    model.grad_checkpointing = cfg.grad_checkpointing
    if cuda and args.working_weights:
        model.set_working_dtype(torch.bfloat16)  # as training.wrap_model(working=True) does
    opt, params = training.make_optimizer(model, cfg)
    rows_per_step = cfg.batch_size * cfg.grad_accum
    micro = lambda step: [train_ds.batch((step * cfg.grad_accum + m) * cfg.batch_size, cfg.batch_size)  # noqa: E731
                          for m in range(cfg.grad_accum)]
    step_tokens = lambda step: train_ds.real_tokens(step * rows_per_step, rows_per_step)  # noqa: E731
    check = None
    if cfg.compile and cuda:
        # the same bf16 batch through the eager path (boolean-mask SDPA) and the compiled one (flex attention).
        # LoRA dropout is off for it: eager and compiled code draw different masks, which alone made the gradients
        # of the 1.5B LoRA config differ by 10%
        b = micro(0)[:1]
        lora = [(m, m.dropout) for m in model.modules() if isinstance(m, LoRALinear)]
        for m, _ in lora:
            m.dropout = 0.0
        res = []
        for compiled in (False, True):
            model.uncompile()
            if compiled:
                model.compile_blocks(activation_budget=cfg.activation_budget)
            model.zero_grad(set_to_none=True)
            loss, _ = training.forward_backward(model, b, ctx, scaler, device)
            g = torch.cat([p.grad.float().flatten() for p in params if p.grad is not None])
            res.append((loss.item(), g))
        for m, p in lora:
            m.dropout = p
        (l0, g0), (l1, g1) = res
        check = (abs(l1 - l0) / abs(l0), ((g1 - g0).norm() / g0.norm()).item())
        del res, g, g0, g1  # two fp32 copies of every gradient: 3.7 GiB at 0.5B that the peak below must not count
        model.zero_grad(set_to_none=True)
    if args.cudagraphs and cfg.compile:
        # an experiment on the host's share of the step: each block's forward and backward replayed as CUDA
        # graphs (torch.compile's cudagraph trees); the working copies are static inputs, updated in place, not
        # copied in at each replay
        model.compiled_blocks = [torch.compile(b, dynamic=False, mode="reduce-overhead") for b in model.layers]
        for m in model.modules():
            if isinstance(getattr(m, "working", None), torch.Tensor):  # a Linear's copy (the model's is a list)
                torch._dynamo.mark_static_address(m.working)
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # the training steps' peak, not the check's eager pass
    # train.py's step: no host sync inside (the loss is read a step late), so time a window of steps, not each one
    toks = 0
    for step in range(steps):
        if step == args.warmup:
            sync()
            t_steady = time.time()
        if args.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the graphs' earlier outputs are dead
        loss, _ = training.forward_backward(model, micro(step + 1), ctx, scaler, device)
        training.apply_update(opt, params, loss, 1.0, scaler)
        if step == 0:
            sync()
            t_first = time.time() - t0  # from building the model, compilation included
        if step >= args.warmup:
            toks += step_tokens(step + 1)
    sync()
    steady = time.time() - t_steady
    res = {"name": "ours", "real_tok_s": toks / steady, "step_s": steady / (steps - args.warmup),
           "first_s": t_first, "mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
           "flops_per_token": model.flops_per_token(cfg.seq_len), "check": check, "rows": rows_per_step,
           "fill": train_ds.stats()["fill"]}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sync()
            t0 = time.time()
            for step in range(3):
                if args.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss, _ = training.forward_backward(model, micro(steps + step), ctx, scaler, device)
                training.apply_update(opt, params, loss, 1.0, scaler)
            sync()
            wall = time.time() - t0
        avg = prof.key_averages()
        print(avg.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        # where the host's time goes: when the GPU idles, the step waits for the host
        print(avg.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
        busy = kernel_time(prof)[1]
        print(f"profiled 3 steps: {wall:.3f} s wall, {busy:.3f} s of GPU kernels: the GPU idle "
              f"{max(0.0, 1 - busy / wall):.1%} of the time (the profiler slows the host, so this is an upper bound)")
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return res, train_ds, tok, cfg


def hf_train(args, folder, train_ds, tok, steps):
    """The Hugging Face Trainer recipe on the same GSM8K examples, timed per step with a callback."""
    import transformers
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    n = args.hf_batch_size * (steps + 1)
    examples = [train_ds.examples[i] for i in range(min(n, len(train_ds.examples)))]
    feats = [{"input_ids": ex["ids"][:args.seq_len],
              "labels": [t if m else -100 for t, m in zip(ex["ids"], ex["mask"])][:args.seq_len]} for ex in examples]

    toks = []  # real tokens of each batch, in the order the Trainer asks for them (one batch per step)

    def collate(batch):  # right padding to the longest in the batch, labels -100 on pads and prompts
        T = max(len(f["input_ids"]) for f in batch)
        toks.append(sum(len(f["input_ids"]) for f in batch))
        ids = torch.tensor([f["input_ids"] + [tok.pad_id] * (T - len(f["input_ids"])) for f in batch])
        labels = torch.tensor([f["labels"] + [-100] * (T - len(f["labels"])) for f in batch])
        am = torch.tensor([[1] * len(f["input_ids"]) + [0] * (T - len(f["input_ids"])) for f in batch])
        return {"input_ids": ids, "labels": labels, "attention_mask": am}

    times = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.t = time.time()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            times.append(time.time() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        targs = transformers.TrainingArguments(output_dir=tmp, per_device_train_batch_size=args.hf_batch_size,
                                               bf16=True, max_steps=steps, learning_rate=1e-5, warmup_steps=10,
                                               lr_scheduler_type="cosine", logging_steps=10**6, save_strategy="no",
                                               report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
                                               max_grad_norm=1.0, weight_decay=0.0, adam_beta2=0.95,
                                               use_cpu=not torch.cuda.is_available())
        trainer = transformers.Trainer(model=hf, args=targs, train_dataset=feats, data_collator=collate,
                                       callbacks=[Clock()])
        t_ready = time.time() - t0
        trainer.train()
    steady = sum(times[args.warmup:])
    res = {"name": "HF Trainer", "real_tok_s": sum(toks[args.warmup:len(times)]) / steady,
           "step_s": steady / (len(times) - args.warmup), "first_s": t_ready + times[0],
           "mem_gib": torch.cuda.max_memory_allocated() / 2**30, "rows": args.hf_batch_size}
    del trainer, hf
    torch.cuda.empty_cache()
    return res


def bench_train(args):
    print(f"machine: {machine()}")
    cuda = torch.cuda.is_available()
    peak_meas = matmul_peak() if cuda else None
    peak_sheet = gpu_peak_flops("cuda", "bfloat16") if cuda else None
    if peak_meas:
        print(f"bf16 matmul peak measured now: {peak_meas / 1e12:.0f} TFLOP/s; datasheet: "
              + (f"{peak_sheet / 1e12:.0f} TFLOP/s" if peak_sheet else "unknown"))
    with tempfile.TemporaryDirectory(prefix="nanomath-bench-") as tmp:
        if args.model in SHAPES:
            model, tok, folder, label = get_model(args.model, "cuda" if cuda else "cpu", torch.bfloat16, tmp)
            del model
        else:
            folder, label = args.model, args.model
        ours, train_ds, tok, cfg = ours_train(args, folder, args.steps)
        print(f"model: {label}; {cfg.datasets} train, {cfg.prompt_format} format, loss on answers; ours"
              f"{' (' + args.config + ')' if args.config else ''}: {'packed ' if cfg.pack else ''}rows of "
              f"{cfg.seq_len} ({ours['fill']:.1%} real tokens), batch {cfg.batch_size} x accumulation "
              f"{cfg.grad_accum}, compile {cfg.compile}{' (CUDA graphs)' if args.cudagraphs else ''}"
              f"{' (C++ wrapper)' if args.cpp_wrapper else ''}, "
              f"bf16 working weights {args.working_weights}, grad checkpointing {cfg.grad_checkpointing}, "
              f"activation budget {cfg.activation_budget}; "
              f"HF: batches of {args.hf_batch_size}; {args.steps} steps, the first {args.warmup} not timed")
        rows = [ours]
        if args.hf_steps and cuda and importlib.util.find_spec("transformers") is not None:
            rows.append(hf_train(args, folder, train_ds, tok, args.hf_steps))
    fpt = ours["flops_per_token"]
    if ours["check"]:
        print(f"compiled (flex) vs eager (SDPA) on one bf16 batch: loss rel diff {ours['check'][0]:.2e}, gradient "
              f"rel diff {ours['check'][1]:.2e}")
    print(f"\n{'run':<12} {'real tok/s':>11} {'step s':>8} {'MFU sheet':>10} {'MFU meas':>9} {'peak GiB':>9} "
          f"{'first step s':>13}")
    for r in rows:
        mfu = lambda peak: f"{fpt * r['real_tok_s'] / peak:.1%}" if peak else "-"  # noqa: E731
        print(f"{r['name']:<12} {r['real_tok_s']:>11.0f} {r['step_s']:>8.3f} {mfu(peak_sheet):>10} "
              f"{mfu(peak_meas):>9} {r['mem_gib']:>9.1f} {r['first_s']:>13.1f}")
    if len(rows) > 1:
        print(f"\nours / HF Trainer: {rows[0]['real_tok_s'] / rows[1]['real_tok_s']:.2f}x the real tokens/s, "
              f"{rows[0]['mem_gib'] / rows[1]['mem_gib']:.2f}x the peak memory")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gen", help="generation: our engine vs Hugging Face generate")
    g.add_argument("--model", default="0.5b", help="0.5b, 1.5b (random weights at that shape) or a checkpoint path")
    g.add_argument("--dataset", default="gsm8k", choices=sorted(data.DATASETS))
    g.add_argument("--split", default="test")
    g.add_argument("--n", type=int, default=0, help="problems for our engine (0 = all)")
    g.add_argument("--hf-n", type=int, default=256, help="problems for the head-to-head (0 = no reference run)")
    g.add_argument("--slots", type=lambda v: [int(x) for x in v.split(",")], default=[64, 256, 512],
                   help="comma-separated slot counts, each timed on all prompts (the last one also head-to-head)")
    g.add_argument("--hf-batch-size", type=int, default=128)
    g.add_argument("--max-new-tokens", type=int, default=0, help="0 = the evaluation protocol's")
    g.add_argument("--dtype", default="bfloat16")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the only setting HF is run at)")
    g.add_argument("--logprobs", action="store_true", help="each token's entropy and log-probability too, as rl.py "
                   "samples (with --temperature 1: its decode step)")
    g.add_argument("--profile", action="store_true",
                   help="then profile the last slot count's decode step outside its graph: its kernels and their time")
    g.add_argument("--flash-decode", action="store_true",
                   help="the decode step's attention by the flash kernel, not the Triton one (decode_attention.py)")
    t = sub.add_parser("train", help="training steps: ours vs the Hugging Face Trainer recipe")
    t.add_argument("--model", default="0.5b", help="0.5b, 1.5b (random weights at that shape) or a checkpoint path")
    t.add_argument("--config", help="take data, rows, batch and checkpointing from this experiment file instead")
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--grad-checkpointing", type=int, default=0)
    t.add_argument("--activation-budget", type=float, default=train.Config.activation_budget)
    t.add_argument("--no-compile", action="store_true")
    t.add_argument("--working-weights", action="store_true",
                   help="bf16 working copies of the fp32 weights (rl.py's), instead of autocast's cast at every call")
    t.add_argument("--cudagraphs", action="store_true",
                   help="compile the blocks with mode='reduce-overhead' (CUDA graphs): is the step bound by the host?")
    t.add_argument("--cpp-wrapper", action="store_true",
                   help="inductor's C++ wrapper launches the compiled blocks' kernels instead of Python: is the "
                   "step bound by kernel launches (LoRA adds ~1,500 small kernels a step)?")
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--warmup", type=int, default=5, help="steps not timed (compilation, allocator warm-up)")
    t.add_argument("--hf-steps", type=int, default=40, help="0 = no reference run")
    t.add_argument("--hf-batch-size", type=int, default=16)
    t.add_argument("--profile", action="store_true",
                   help="print the top CUDA kernels and host ops of 3 more steps and the fraction of time the GPU "
                   "idled")
    args = ap.parse_args(argv)
    if args.what == "gen":
        bench_gen(args)
    else:
        bench_train(args)


if __name__ == "__main__":
    sys.exit(main())
