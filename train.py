"""
Fine-tune a pretrained decoder (or train one from scratch) on math data, or train a verifier. Reads top to
bottom: config -> checks -> processes and numerics -> model and data -> the loop (accumulate, guard, clip,
step) -> evals and checkpoints. The pieces live in training.py, shared with rl.py and bench.py.

  python train.py                                  # embedded default: a tiny model learns arithmetic on a CPU
  python train.py configs/gsm8k_qwen05b.py         # an experiment file overrides fields of Config
  python train.py configs/gsm8k_qwen05b.py --lr=2e-5 --max_iters=200   # --key=value overrides it again
"""
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import torch

import data
from checkpoint import restore_training_state, save_tokenizer, wait_for_saves, write_text
from config import parse_config
from engine import Sampling, score_examples, verifier_metrics
from model import PRESETS, gpu_peak_flops
from training import (LateValues, RunLog, apply_update, build_model, check_common, check_model_config,
                      eval_problems, evaluate_loss, find_resume, forward_backward, generation_eval, improved,
                      last_saved, lr_at, make_optimizer, make_out_dir, out_of_time, run_main,
                      run_model_config, run_tokenizer, save_run, setup, sft_loss, teardown, verifier_loss,
                      whole_model, whole_step, wrap_model)


@dataclass
class Config:
    # the defaults are the embedded example: a ~1M-parameter model learns 2-digit arithmetic on a CPU
    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"      # "scratch", or a checkpoint: HF folder, cached hub id, best.pt, ckpt-*.pt
    model_preset: str = "scratch-22m"  # for scratch: a preset of model.PRESETS ...
    n_layer: int = 2                # ... with these overrides (0 = the preset's value)
    n_embd: int = 128
    n_head: int = 4
    tokenizer: str = "math"         # for scratch: "math" or a tokenizer folder (checkpoints bring theirs)
    resume: str = ""                # "" = fresh run, "auto" = latest ckpt in out_dir, or a ckpt-*.pt path
    # data
    datasets: str = "arith2"        # "name[:weight],...": gsm8k, math, arith[N], a .jsonl or a MATH folder
    prompt_format: str = "plain"    # "chat" (the model's chat template) or "plain"
    system_prompt: str = data.SYSTEM_PROMPT
    seq_len: int = 128              # every row has exactly this many tokens (static shapes)
    pack: bool = True               # pack several examples per row; False = one example per row, padded
    max_samples: int = 0            # cap on training examples per dataset (0 = all)
    val_size: int = 200             # problems held out of training: validation loss and the eval
    seed: int = 1337
    # optimisation
    batch_size: int = 16            # rows per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    epochs: float = 1.0             # run length in epochs, unless max_iters > 0
    max_iters: int = 3000           # optimizer steps (0 = from epochs)
    max_time: float = 0.0           # wall-clock seconds, then save and stop (0 = none; torchrun: log steps)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1       # the decay ends at lr * min_lr_ratio
    schedule: str = "cosine"        # cosine | linear | constant (each after a linear warmup)
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0          # 0 = no clipping (the norm is still computed for the guard)
    max_bad_steps: int = 5          # stop after this many non-finite steps in a row
    # numerics and processes: decided once, in training.setup()
    device: str = "auto"            # auto = cuda > mps > cpu
    dtype: str = "auto"             # auto = bf16 on GPUs that have it, else fp16 (+GradScaler); fp32 on CPU
    compile: bool = True            # torch.compile each block, flex attention for packed rows (CUDA only)
    grad_checkpointing: int = 0     # blocks recomputed in backward: 0 none, n the first n, -1 all
    activation_budget: float = 1.0  # < 1: compiled blocks keep this share of activations, recompute the rest
    fsdp: bool = False              # under torchrun: shard weights, gradients, optimizer state (FSDP2) vs DDP
    dist_timeout: float = 300.0     # under torchrun: seconds for the processes to meet, then a clear error
    # LoRA: adapters on the listed projections, the rest frozen in the compute dtype (lr ~1e-4 vs ~1e-5 full)
    lora_rank: int = 0              # 0 = full fine-tuning
    lora_alpha: float = 16.0        # the adapter's update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: str = "q,k,v,o,gate,up,down"
    # a verifier: a value head learns whether a sampled solution is correct (datasets: graded samples)
    objective: str = "sft"          # sft | verifier
    verifier_backbone: str = "frozen"  # frozen | lora (lora_rank > 0) | full: what trains besides the head
    # evaluation, logging, checkpoints
    log_interval: int = 50
    eval_interval: int = 500        # validation loss (and generation eval if eval_samples > 0)
    eval_samples: int = 100         # problems of the eval set generated and graded at each eval (0 = off)
    eval_dataset: str = ""          # "" = held-out training problems (val_size), or a file; never a test set
    eval_max_new_tokens: int = 48
    eval_batch_size: int = 64
    save_interval: int = 500
    keep_last: int = 2              # ckpt-*.pt files kept, 0 = all (best.pt is extra)
    overwrite: bool = False         # start a fresh run in an out_dir that holds one (its files are replaced)
    wandb_project: str = ""         # log to wandb when set and installed


# names users bring from nanoGPT / the HF Trainer, for the "did you mean" hint
ALIASES = {"learning_rate": "lr", "gradient_accumulation_steps": "grad_accum", "block_size": "seq_len",
           "max_seq_length": "seq_len", "num_train_epochs": "epochs", "max_steps": "max_iters",
           "output_dir": "out_dir", "per_device_train_batch_size": "batch_size",
           "warmup_steps": "warmup_iters", "max_grad_norm": "grad_clip"}

# the data order and the model are functions of these (and of the global batch, checked on its own: the same
# global batch on a different number of GPUs resumes the same run)
RESUME_KEYS = ("init_from", "model_preset", "n_layer", "n_embd", "n_head", "tokenizer", "datasets",
               "prompt_format", "system_prompt", "seq_len", "pack", "max_samples", "val_size", "seed",
               "lora_rank", "lora_alpha", "lora_targets", "objective", "verifier_backbone")


def load_config(argv):
    """Config from its defaults, the experiment files in argv, then its --key=value flags."""
    return parse_config(Config, argv, ALIASES)


def check_config(cfg):
    """Every value in range and consistent, before anything is loaded or written; SystemExit naming keys."""
    bad = []

    def need(ok, key, what):
        if not ok:
            bad.append(f"{key}={getattr(cfg, key)!r}: {what}")
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    bad += check_common(cfg)
    if cfg.init_from == "scratch":
        need(cfg.model_preset in PRESETS, "model_preset", f"must be one of {sorted(PRESETS)}")
        need(cfg.tokenizer == "math" or os.path.exists(cfg.tokenizer), "tokenizer",
             "must be 'math' or a tokenizer file or folder")
        for k in ("n_layer", "n_embd", "n_head"):
            need(getattr(cfg, k) >= 0, k, "must be >= 0 (0 = the preset's value)")
        if cfg.model_preset in PRESETS and min(cfg.n_embd, cfg.n_head) >= 0:
            # an override meets the preset's other value (0 keeps the preset's)
            C = cfg.n_embd or PRESETS[cfg.model_preset].n_embd
            H = cfg.n_head or PRESETS[cfg.model_preset].n_head
            need(C % (2 * H) == 0, "n_embd" if cfg.n_embd else "n_head",
                 f"the width n_embd={C} must be a multiple of 2 * n_head = {2 * H} (even rotary head dims)")
    mixture = data.parse_mixture(cfg.datasets) if not any(b.startswith("datasets=") for b in bad) else []
    need(cfg.seq_len >= 2, "seq_len", "must be >= 2 (a prompt token and an answer token)")
    for k in ("max_samples", "val_size", "max_iters", "warmup_iters", "keep_last", "eval_samples"):
        need(getattr(cfg, k) >= 0, k, "must be >= 0")
    for k in ("batch_size", "grad_accum", "max_bad_steps", "log_interval", "eval_interval", "save_interval",
              "eval_max_new_tokens", "eval_batch_size"):
        need(getattr(cfg, k) >= 1, k, "must be >= 1")
    need(finite(cfg.epochs) and cfg.epochs > 0, "epochs", "must be > 0 (the run's length when max_iters = 0)")
    need(cfg.objective in ("sft", "verifier"), "objective", "must be sft or verifier")
    if cfg.objective == "verifier":
        need(cfg.init_from != "scratch", "objective",
             "a verifier is a head on a pretrained model: set init_from")
        need(cfg.verifier_backbone in ("frozen", "lora", "full"), "verifier_backbone",
             "must be frozen, lora or full")
        need((cfg.verifier_backbone == "lora") == (cfg.lora_rank > 0), "verifier_backbone",
             "lora goes with lora_rank > 0, frozen and full with lora_rank = 0")
        need(cfg.eval_samples == 0, "eval_samples", "must be 0 for a verifier (it is judged by AUROC on "
             "held-out samples, not by generating)")
        need(not cfg.fsdp, "fsdp", "a verifier trains with DDP or on one GPU (not FSDP yet)")
    if cfg.lora_rank:
        need(not cfg.fsdp, "fsdp", "LoRA with FSDP is not supported yet (LoRA runs use DDP)")
    world = os.environ.get("WORLD_SIZE", "1").strip()  # checked on its own by training.torchrun_env
    need(not cfg.fsdp or (world.isdigit() and int(world) > 1), "fsdp", "shards the model across the "
         "processes of torchrun, and this is one process (WORLD_SIZE unset or 1): start it with torchrun "
         "--nproc_per_node=N, or leave fsdp off")
    if cfg.eval_dataset:
        same = lambda n: os.path.exists(n) and os.path.samefile(n, cfg.eval_dataset)  # noqa: E731
        if os.path.exists(cfg.eval_dataset) and any(same(n) for n, _ in mixture):
            bad.append(f"eval_dataset={cfg.eval_dataset!r} is also a training dataset: eval would grade the "
                       f"data the model trains on")
        elif cfg.eval_dataset in data.DATASETS or data.is_test_split(cfg.eval_dataset):
            bad.append(f"eval_dataset={cfg.eval_dataset!r}: a named dataset would be judged on its test "
                       f"split, and the eval during training picks best.pt; leave eval_dataset empty for "
                       f"problems held out from the training data (val_size), or give a file of your own")
        elif not os.path.exists(cfg.eval_dataset):
            bad.append(f"eval_dataset={cfg.eval_dataset!r}: no such file or folder")
        else:
            try:  # read now, not after the model is built
                leak = data.test_problem(data.load_dataset(cfg.eval_dataset))
                if leak:  # best.pt would be picked by test problems
                    bad.append(f"eval_dataset={cfg.eval_dataset!r}: problem {leak[0]} is one of {leak[1]}'s "
                               f"test split, and the eval that picks best.pt must grade training problems")
            except ValueError as e:
                bad.append(f"eval_dataset={cfg.eval_dataset!r}: {e}")
    elif cfg.eval_samples:
        need(cfg.val_size > 0, "val_size", "must be > 0 for eval_samples > 0 (the held-out problems it "
             "grades), or set eval_dataset to a file")
    if bad:
        raise SystemExit("config: " + "; ".join(bad))


def run_eval(cfg, env, model, fsdp, tok, val_ds, problems, step, log):
    """Validation loss on every rank (under FSDP each forward gathers from all ranks); on rank 0 a verifier's
    metrics on the held-out samples, or generation and grading of held-out problems (on the model itself, or
    under FSDP on a whole copy gathered for it). -> the metrics row, also logged."""
    verifier = cfg.objective == "verifier"
    rec = {"step": step}
    if val_ds:
        rec["val_loss"] = evaluate_loss(model, val_ds, env.ctx, env.device, cfg.batch_size,
                                        verifier_loss if verifier else sft_loss,
                                        "label_index" if verifier else "loss_index")
    if verifier and val_ds and env.master:
        scores = score_examples(model, val_ds.examples, env.ctx, cfg.batch_size)
        m = verifier_metrics(scores, [ex["label"] for ex in val_ds.examples])
        rec.update({f"verifier_{k}": v for k, v in m.items()})
    gen_model = whole_model(model, fsdp, env) if problems else None
    if gen_model is not None:
        sampling = Sampling(max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed)  # greedy
        rec.update(generation_eval(gen_model, tok, problems, sampling, cfg.prompt_format, cfg.system_prompt,
                                   cfg.eval_batch_size, env.ctx, os.path.join(cfg.out_dir, "samples.jsonl"),
                                   step, log))
    log.say(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
    log.write(rec)
    return rec


def train(cfg):
    """Runs the whole training job described by cfg; returns a summary dict. A bad setting or input is a
    SystemExit / ValueError / FileNotFoundError naming it, raised before anything is written to out_dir; a run
    that cannot continue (too many non-finite steps) raises TrainingError."""
    t_start = time.time()
    check_config(cfg)
    env = setup(cfg.device, cfg.dtype, cfg.dist_timeout)
    procs = f" x {env.world} processes ({'FSDP2' if cfg.fsdp else 'DDP'})" if env.world > 1 else ""
    env.say(f"device {env.device}{procs}, compute dtype {env.dtype}{', GradScaler' if env.scaler else ''}")
    env.say("config:", json.dumps(dataclasses.asdict(cfg), indent=1))
    rows_per_step = cfg.batch_size * cfg.grad_accum * env.world  # the global batch
    ckpt = find_resume(cfg, env, RESUME_KEYS, rows_per_step, "batch_size x grad_accum x processes",
                       f"{cfg.batch_size} x {cfg.grad_accum} x {env.world}")

    # the data (with the tokenizer alone), then the model: every check before a model is loaded
    verifier = cfg.objective == "verifier"
    tok = run_tokenizer(cfg)
    train_ds, val_ds = data.build_datasets(cfg.datasets, tok, cfg.seq_len,
                                           cfg.prompt_format, cfg.pack, cfg.seed, cfg.max_samples,
                                           cfg.val_size, cfg.system_prompt)
    st = train_ds.stats()
    env.say(f"train data: {st['examples']} examples -> {st['rows_per_epoch']} rows of {cfg.seq_len} tokens "
            f"per epoch ({st['fill']:.1%} filled); {st['truncated']} examples truncated to seq_len "
            f"({st['supervised_tokens_cut']} supervised tokens cut, {st['examples_without_answer_tokens']} "
            f"examples left with no answer token)")
    if verifier:
        check_labels(cfg, train_ds, val_ds)
    # the eval that picks best.pt grades problems held out of the training data, never a test split
    problems = None
    if cfg.eval_samples:
        pool = data.load_dataset(cfg.eval_dataset) if cfg.eval_dataset else val_ds.examples if val_ds else []
        problems = eval_problems(pool, cfg.eval_samples)
        if not problems:
            what = "eval_dataset" if cfg.eval_dataset else "held-out examples"
            raise SystemExit(f"config: eval_samples={cfg.eval_samples}, but the {what} have no gold answers "
                             f"to grade; set eval_samples=0 (validation loss only)")
    total_steps = check_steps(cfg, train_ds, rows_per_step, env.world)
    check_model(cfg, tok, problems)
    model, tok, part = build_model(cfg, env.device, env.dtype, value_head=verifier,
                                   freeze=verifier and cfg.verifier_backbone == "frozen")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    if ckpt:
        partial = len(trained) < len(list(model.parameters()))  # LoRA or a frozen verifier backbone
        bad = model.load_state_dict(ckpt["model"], strict=not partial)
        if partial and (bad.unexpected_keys or trained & set(bad.missing_keys)):
            raise SystemExit(f"{cfg.resume}: its trained parameters do not fit this model ({bad})")
    model.grad_checkpointing = cfg.grad_checkpointing
    n_train = sum(p.numel() for n, p in model.named_parameters() if n in trained)
    env.say(f"model: {model.num_params() / 1e6:.1f}M parameters ({n_train / 1e6:.2f}M trained), "
            f"{model.config}")

    # everything is checked: now the output folder is written (by rank 0)
    if env.master:
        n_tmp = make_out_dir(cfg.out_dir, replace=ckpt is None)
        if n_tmp:
            env.say(f"removed {n_tmp} temporary file(s) left in {cfg.out_dir} by an interrupted save")
        save_tokenizer(tok, os.path.join(cfg.out_dir, "tokenizer"))
        write_text(os.path.join(cfg.out_dir, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1))
    log = RunLog(cfg.out_dir, env.master, ckpt["step"] if ckpt else None, cfg.wandb_project,
                 dataclasses.asdict(cfg), plot_keys=("loss", "val_loss", "eval_accuracy", "verifier_auroc"))
    env.barrier()
    step_model, fsdp = wrap_model(model, env, cfg.fsdp, cfg.compile, cfg.activation_budget)
    opt, params = make_optimizer(model, cfg)
    step, best = restore_training_state(ckpt, model, opt, env.scaler) if ckpt else (0, None)
    saved = last_saved(ckpt, cfg.out_dir)  # then kept in memory by the loop: the same on every rank
    del ckpt
    saving = dict(model=model, opt=opt, env=env, fsdp=fsdp, part=part, config=dataclasses.asdict(cfg),
                  global_batch=rows_per_step, keep_last=cfg.keep_last)
    loss_fn, key = (verifier_loss, "label_index") if verifier else (sft_loss, "loss_index")

    # -------------------------------------------------------------------------
    # the loop. Data position = rows consumed = step * rows_per_step, so resume needs only the step.
    env.say(f"training for {total_steps} steps of {rows_per_step} rows ({cfg.batch_size} x {cfg.grad_accum} "
            f"accumulation{f' x {env.world} processes' if env.world > 1 else ''})")
    model.train()
    late = LateValues(env.device, log, cfg.max_bad_steps, env.scaler)
    t_log, tokens_since = time.time(), 0
    flops_per_token = model.flops_per_token(cfg.seq_len)
    peak_flops = gpu_peak_flops(env.device, env.dtype)  # MFU is printed only where the peak is known
    stop_reason = "max_iters" if cfg.max_iters else "epochs"
    try:
        while step < total_steps:
            if out_of_time(t_start, cfg.max_time, step, cfg.log_interval, env):
                stop_reason = "max_time"
                break
            lr = lr_at(step, cfg, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            # rank r's m-th micro-batch: rows (step * grad_accum + m) * world + r of the global order, so
            # the ranks together see each row once, and a step the rows of one process with a world-times
            # batch
            micro = [train_ds.batch(((step * cfg.grad_accum + m) * env.world + env.rank) * cfg.batch_size,
                                    cfg.batch_size) for m in range(cfg.grad_accum)]
            n_tok = train_ds.supervised_tokens(step * rows_per_step, rows_per_step, key)  # of all ranks' rows
            loss, _ = forward_backward(step_model, micro, env.ctx, env.scaler, env.device, env.world, n_tok,
                                       loss_fn)
            with whole_step():  # an update is counted with it, even when Ctrl-C comes in between
                values = apply_update(opt, params, loss, cfg.grad_clip, env.scaler)
                # steps are counted from 1 in logs and checkpoint names: ckpt-000010.pt has taken 10 steps
                step += 1
                late.push(step, values, {"lr": lr, "n_sup": n_tok,
                                         "ids": [i for b in micro for row in b["example_ids"] for i in row]})
            tokens_since += train_ds.real_tokens((step - 1) * rows_per_step, rows_per_step)  # not padding

            if step % cfg.log_interval == 0 or step == total_steps:
                late.settle()  # waits for this step: the time below covers all the work queued so far
                dt = time.time() - t_log
                tps = tokens_since / dt
                eta = (total_steps - step) * dt / max(1, min(cfg.log_interval, step))
                last = late.last
                rec = {**last, "step": step, "tok_per_s": tps, "elapsed": time.time() - t_start}
                line = (f"step {step}/{total_steps} | loss {last['loss']:.4f} | lr {last['lr']:.2e} | gnorm "
                        f"{last['grad_norm']:.2f} | {tps / 1e3:.1f}k tok/s")
                if peak_flops:
                    rec["mfu"] = flops_per_token * tps / (peak_flops * env.world)  # per GPU
                    rec["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    line += f" | mfu {rec['mfu']:.1%} | mem {rec['mem_gib']:.1f}GiB"
                log.say(line + f" | eta {int(eta // 60)}m{int(eta % 60):02d}s")
                log.write(rec)
                t_log, tokens_since = time.time(), 0
            if step % cfg.eval_interval == 0 or step == total_steps:
                late.settle()
                rec = run_eval(cfg, env, model, fsdp, tok, val_ds, problems, step, log)
                # best.pt follows answer accuracy when generation eval is on, a verifier's held-out AUROC,
                # else validation loss (rank 0 decides)
                metric = rec.get("eval_accuracy", rec.get("verifier_auroc", -rec.get("val_loss", math.nan)))
                if improved(metric, best, env):
                    best = metric if env.master else best
                    save_run(os.path.join(cfg.out_dir, "best.pt"), step=step, best=best, full=False, **saving)
                log.plot()
            if step % cfg.save_interval == 0 and step != total_steps:
                late.settle()
                save_run(os.path.join(cfg.out_dir, f"ckpt-{step:06d}.pt"), step=step, best=best, **saving)
                saved = step
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        log.say("interrupted: saving a checkpoint before exiting")
    late.settle()
    if saved != step:  # on every rank or none: save_run meets at a barrier (see last_saved)
        save_run(os.path.join(cfg.out_dir, f"ckpt-{step:06d}.pt"), step=step, best=best, **saving)
    wait_for_saves()
    summary = {"step": step, "stop_reason": stop_reason, "best": best, "time": time.time() - t_start,
               **late.last}
    log.say(f"done: {stop_reason} at step {step} after {summary['time']:.0f}s; checkpoints in {cfg.out_dir}")
    log.close()
    teardown(env)
    return summary


def check_steps(cfg, train_ds, rows_per_step, world):
    """-> the run's steps: max_iters, or as many as `epochs` of the training rows give (at least one). A step
    must not hold more rows than an epoch has: it would repeat examples, the same gradient at more cost."""
    total_steps = cfg.max_iters or train_ds.total_rows(cfg.epochs) // rows_per_step
    if total_steps <= 0:
        raise SystemExit(f"config: epochs={cfg.epochs} gives {train_ds.total_rows(cfg.epochs)} rows, less "
                         f"than one step of batch_size * grad_accum * processes = {rows_per_step} rows; "
                         f"raise epochs or set max_iters")
    epoch = train_ds.rows_per_epoch(0)
    if rows_per_step > epoch:
        raise SystemExit(f"config: batch_size={cfg.batch_size}: a step of batch_size x grad_accum x "
                         f"processes = {cfg.batch_size} x {cfg.grad_accum} x {world} rows is more than the "
                         f"{epoch} rows of an epoch of datasets={cfg.datasets!r}, so it would repeat them; "
                         f"set batch_size x grad_accum x processes <= {epoch}")
    return total_steps


def check_model(cfg, tok, problems):
    """What depends on the model's shape, from its config alone (before it loads): the blocks to recompute,
    and the eval's prompts in its context (found before training, not at the first eval after it)."""
    mc = run_model_config(cfg, tok)
    check_model_config(cfg, mc)
    longest = max((len(data.render_prompt(tok, p["prompt"], cfg.prompt_format, cfg.system_prompt))
                   for p in problems or []), default=0)
    if longest >= mc.max_seq_len:
        raise SystemExit(f"config: an eval problem's prompt has {longest} tokens, which leaves no room in "
                         f"the model's context of max_seq_len={mc.max_seq_len} tokens")


def check_labels(cfg, train_ds, val_ds):
    """A verifier learns graded samples: every example needs its 'correct' label, and both kinds must be there
    in training and in the held-out samples (else there is nothing to separate, and AUROC is undefined)."""
    for name, ds in (("training", train_ds), ("held-out", val_ds)):
        if ds is None:
            continue
        unlabelled = next((ex["id"] for ex in ds.examples if "label" not in ex), None)
        if unlabelled:
            raise ValueError(f"datasets={cfg.datasets!r}: example {unlabelled} has no 'correct' label; a "
                             f"verifier trains on graded samples (the jsonl sample.py --eval writes)")
        n_pos = sum(ex["label"] > 0.5 for ex in ds.examples)
        if n_pos in (0, len(ds.examples)):
            hint = "; or raise val_size" if name == "held-out" else ""
            raise ValueError(f"datasets={cfg.datasets!r}: all {len(ds.examples)} {name} samples are "
                             f"{'correct' if n_pos else 'incorrect'}: a verifier needs both kinds (sample "
                             f"more, at a higher temperature, or more problems{hint})")


def main(argv=None):
    run_main(load_config, train, argv)


if __name__ == "__main__":
    main()
