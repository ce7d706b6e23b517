"""
Online RL with verifiable rewards on math problems: GRPO in one process, sampling with our own engine
from the very model it trains (no copy of the weights), rewarded by grade.py. The pieces are
training.py's, as in train.py.

  python rl.py configs/gsm8k_qwen05b_grpo.py
  python rl.py configs/gsm8k_qwen05b_grpo.py --group_size=16 --kl_coef=0.01 --lora_rank=16 --lr=1e-5

Each step (cf. DeepSeekMath's GRPO, with the corrections of Dr. GRPO):
  1. P problems x G samples from the engine at `temperature`, with the current weights (under torchrun each
     process samples its share of the P problems);
  2. reward 1 when grade.grade finds the answer right, else 0; a response cut off at max_new_tokens earns 0;
  3. advantage of a sample = its reward - its group's mean (divided by the group's std only with
     std_normalize: off by default, as Dr. GRPO argues); a group whose rewards are all equal carries no
     signal: it is counted, left out of the update, and with refill > 0 replaced by other problems;
  4. loss = -sum over every response token (the stop token included) of min(r A, clip(r, 1 - clip_eps,
     1 + clip_eps) A), divided by the batch's response tokens (one normaliser for the batch, not one per
     sequence: no length bias); r = pi / pi_sampler per token is 1 on the first pass, and ppo_epochs > 1 makes
     more passes over the same samples; kl_coef adds the k3 estimate of KL(pi || pi_start) per token, where
     pi_start is the base with LoRA adapters off (no copy), or with full fine-tuning a frozen copy.
best.pt follows greedy accuracy on val_size held-out *training* problems; test splits are for sample.py.
"""
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import data
import grade as G
from checkpoint import model_config_of, restore_training_state, save_tokenizer, wait_for_saves, write_text
from config import parse_config
from engine import Engine, Sampling, engine_bytes, gib, slots_that_fit
from lora import set_lora_enabled
from model import Transformer
from training import (LateValues, RunLog, apply_update, build_model, check_common, check_model_config,
                      find_resume, forward_backward, generation_eval, improved, last_saved, lr_at,
                      make_optimizer, make_out_dir, out_of_time, run_main, run_tokenizer, save_run, setup,
                      teardown, whole_step, wrap_model)


@dataclass
class Config:
    # I/O
    out_dir: str = "out/grpo"
    init_from: str = "Qwen/Qwen2.5-0.5B-Instruct"  # any checkpoint: HF folder, hub id, best.pt, ckpt-*.pt
    resume: str = ""                # "" = fresh run, "auto" = latest ckpt in out_dir, or a ckpt-*.pt path
    overwrite: bool = False         # start a fresh run in an out_dir that holds one (its files are replaced)
    # problems: any dataset with answers (gsm8k, math, a .jsonl of problems); val_size of them held out
    datasets: str = "gsm8k"
    prompt_format: str = "chat"     # "chat" (the model's chat template) or "plain"
    system_prompt: str = data.SYSTEM_PROMPT
    max_samples: int = 0            # cap on training problems per dataset (0 = all)
    val_size: int = 200             # training problems held out: the greedy eval that picks best.pt
    seed: int = 1337
    # rollouts
    prompts_per_step: int = 32      # P: problems per step (all processes together)
    group_size: int = 8             # G: samples per problem
    max_new_tokens: int = 512
    temperature: float = 1.0        # 1 = the policy itself, which the loss's ratio is taken against
    top_p: float = 1.0
    refill: int = 0                 # rounds of other problems sampled in place of all-equal groups
    slots: int = 256                # the engine's KV-cache slots (sequences decoded at once)
    # objective
    std_normalize: bool = False     # divide advantages by the group's std (GRPO) or not (Dr. GRPO)
    ppo_epochs: int = 1             # optimisation passes over each batch (> 1: PPO's clipped ratio matters)
    clip_eps: float = 0.2
    kl_coef: float = 0.0            # KL penalty to the starting policy (0 = none, and no reference pass)
    # optimisation: the samples are packed into rows of seq_len tokens, batch_size rows per micro-batch
    seq_len: int = 2048
    batch_size: int = 8
    max_iters: int = 200            # RL steps
    max_time: float = 0.0           # wall-clock seconds, then save and stop (0 = none)
    lr: float = 1e-6
    min_lr_ratio: float = 1.0
    schedule: str = "constant"      # cosine | linear | constant (each after a linear warmup)
    warmup_iters: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    max_bad_steps: int = 5          # stop after this many non-finite updates in a row
    # numerics and processes
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = True            # compiled blocks for the update and a compiled decode step (CUDA only)
    grad_checkpointing: int = 0
    activation_budget: float = 1.0
    dist_timeout: float = 300.0
    # LoRA
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "q,k,v,o,gate,up,down"
    # evaluation, logging, checkpoints
    log_interval: int = 1
    eval_interval: int = 20         # greedy accuracy on eval_samples held-out problems
    eval_samples: int = 200
    eval_max_new_tokens: int = 512
    save_interval: int = 20
    keep_last: int = 2
    wandb_project: str = ""


# the problems' order, the samples' draws and the model are functions of these (P and G each, not only P x G)
RESUME_KEYS = ("init_from", "datasets", "prompt_format", "system_prompt", "max_samples", "val_size", "seed",
               "lora_rank", "lora_alpha", "lora_targets", "prompts_per_step", "group_size")


def load_config(argv):
    return parse_config(Config, argv, script="rl.py")


def check_config(cfg):
    """Every value in range and consistent, before anything is loaded or written; SystemExit naming keys."""
    bad = check_common(cfg)

    def need(ok, key, what):
        if not ok:
            bad.append(f"{key}={getattr(cfg, key)!r}: {what}")
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    need(cfg.init_from != "scratch", "init_from", "RL starts from a trained model: name a checkpoint")
    ok = not any(b.startswith("datasets=") for b in bad)
    weights = [w for _, w in data.parse_mixture(cfg.datasets)] if ok else []
    need(all(w == 1 for w in weights), "datasets", "rl.py samples the problems of its datasets uniformly: "
         "weights are not used here (leave them out)")
    need(cfg.group_size >= 2, "group_size", "must be >= 2: advantages compare the samples of a problem")
    world = int(os.environ.get("WORLD_SIZE", "1")) if os.environ.get("WORLD_SIZE", "1").isdigit() else 1
    need(cfg.prompts_per_step >= 1 and cfg.prompts_per_step % world == 0, "prompts_per_step",
         f"must be >= 1 and a multiple of the {world} processes")
    need(cfg.refill == 0 or world == 1, "refill", "works in one process only (the ranks would disagree)")
    for k in ("max_new_tokens", "slots", "ppo_epochs", "seq_len", "batch_size", "max_iters", "log_interval",
              "eval_interval", "save_interval", "eval_max_new_tokens"):
        need(getattr(cfg, k) >= 1, k, "must be >= 1")
    for k in ("max_samples", "val_size", "refill", "warmup_iters", "keep_last", "eval_samples"):
        need(getattr(cfg, k) >= 0, k, "must be >= 0")
    need(cfg.slots >= cfg.group_size, "slots", f"must hold a group: >= group_size={cfg.group_size}")
    most = max(1, cfg.prompts_per_step // world) * cfg.group_size  # a process's samples: its rows at most
    factors_ok = cfg.group_size >= 2 and cfg.prompts_per_step >= world and cfg.prompts_per_step % world == 0
    need(cfg.batch_size <= most or not factors_ok, "batch_size", f"a step packs at most prompts_per_step / "
         f"processes x group_size = {most} samples, so at most {most} rows: more would be padding; set "
         f"batch_size <= {most}")
    need(finite(cfg.temperature) and cfg.temperature > 0, "temperature", "must be > 0 (samples must differ)")
    need(finite(cfg.top_p) and 0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    need(finite(cfg.clip_eps) and 0 < cfg.clip_eps < 1, "clip_eps", "must be in (0, 1)")
    need(finite(cfg.kl_coef) and cfg.kl_coef >= 0, "kl_coef", "must be >= 0")
    need(cfg.eval_samples <= cfg.val_size, "eval_samples",
         f"must be <= val_size={cfg.val_size} (the held-out problems it grades)")
    if bad:
        raise SystemExit("config: " + "; ".join(bad))

# -----------------------------------------------------------------------------
# rollouts: sample, grade, compare within the group


def problem_at(problems, q, seed):
    """The q-th problem of the run: epochs of the training problems, each in its own fixed-seed order."""
    n = len(problems)
    return problems[int(np.random.default_rng([seed, q // n]).permutation(n)[q % n])]


def advantages(rewards, group_size, std_normalize=False):
    """Per sample: its reward minus its group's mean (divided by the group's std when std_normalize; a group
    of equal rewards gets 0 either way). rewards: flat, group by group."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    a = r - r.mean(1, keepdims=True)
    if std_normalize:
        a = a / np.maximum(r.std(1, keepdims=True), 1e-6)
    return a.reshape(-1)


def rollouts(engine, tok, cfg, problems, position, step, env):
    """This step's samples, graded. The step's P problems start at `position` in the run's order; this process
    samples its share (with each sample's draws those of its place in the whole batch), and with cfg.refill
    replaces its all-equal groups by the next problems, up to refill rounds. -> (list of groups, problems
    consumed by all processes). A group: {"problem", "prompt" (ids), "samples", "rewards", "truncated"}."""
    share = cfg.prompts_per_step // env.world
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, 0, cfg.top_p, seed=cfg.seed * 100003 + step,
                        stop_ids=tuple(sorted(tok.stop_ids)))
    groups, todo, first, used = [], share, env.rank * share, cfg.prompts_per_step
    q = position + env.rank * share
    for round in range(cfg.refill + 1):
        probs = [problem_at(problems, q + i, cfg.seed) for i in range(todo)]
        prompts = [data.render_prompt(tok, p["prompt"], cfg.prompt_format, cfg.system_prompt) for p in probs]
        samples = engine.generate(prompts, sampling, cfg.group_size, logprobs=True,
                                  first=first * cfg.group_size, progress=False)
        for i, (p, ids) in enumerate(zip(probs, prompts)):
            smp = samples[i * cfg.group_size:(i + 1) * cfg.group_size]
            graded = [G.grade(tok.decode(s.ids), p["answer"], truncated=not s.stopped) for s in smp]
            groups.append({"problem": p, "prompt": ids, "samples": smp,
                           "rewards": [float(g.correct) for g in graded],
                           "truncated": [not s.stopped for s in smp]})
        todo = sum(len(set(g["rewards"])) == 1 for g in groups[-todo:])  # flat groups: sample others instead
        if not todo or round == cfg.refill:
            break
        q, first = position + used, used
        used += todo
    return groups, used


def pack(groups, cfg):
    """The groups with signal as training examples (prompt + response + stop token, loss on the
    response), their advantages and sampler log-probs per response token, packed into rows of
    seq_len tokens -> (examples, rows)."""
    examples = []
    for g in groups:
        adv = advantages(g["rewards"], cfg.group_size, cfg.std_normalize)
        if not np.any(adv):
            continue  # all equal: no signal
        for s, a in zip(g["samples"], adv):
            resp = s.ids + ([s.stop_id] if s.stopped else [])  # the policy's choice to stop is trained too
            examples.append({"ids": g["prompt"] + resp, "mask": [0] * len(g["prompt"]) + [1] * len(resp),
                             "adv": float(a), "old_logp": s.logprobs})
    rows = data.pack_rows([len(e["ids"]) for e in examples], range(len(examples)), cfg.seq_len)
    return examples, rows

# -----------------------------------------------------------------------------
# the update


def pg_loss(model, x, batch, clip_eps, kl_coef, stats):
    """The policy-gradient loss over a micro-batch's response tokens, summed (forward_backward divides by the
    batch's response tokens): per token -min(r A, clip(r) A) + kl_coef k3, r = exp(logp - old_logp). It is
    elementwise in logp, so the fused loss computes each chunk's gradient as it goes (model.token_loss).
    stats: device tensors the call adds to (clipped tokens, k3 sum): no host sync."""
    adv, old, ref = batch["adv"], batch["old_logp"], batch.get("ref_logp")

    def per_token(lp, sl):  # lp (n,) log-probs of this chunk's targets
        ratio = torch.exp(lp - old[sl])
        loss = -torch.minimum(ratio * adv[sl], ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv[sl])
        with torch.no_grad():
            stats["clipped"] += ((ratio - 1).abs() > clip_eps).sum()
        if kl_coef:
            d = ref[sl] - lp
            k3 = torch.exp(d) - d - 1  # >= 0, unbiased for KL(pi || ref) at tokens drawn from pi (Schulman)
            stats["kl"] += k3.detach().sum()
            loss = loss + kl_coef * k3
        return loss
    return model.token_loss(x, batch["targets"], batch["loss_index"], per_token)[0]


@torch.no_grad()
def reference_logprobs(model, ref_model, micro, env):
    """Each micro-batch's log-probs of its response tokens under the starting policy, added as "ref_logp": the
    base with LoRA adapters off, or a frozen copy of the starting model."""
    m = ref_model if ref_model is not None else model
    if ref_model is None:
        set_lora_enabled(model, False)
    try:
        for b in micro:
            d = {k: b[k].to(env.device) for k in ("idx", "pos", "doc", "targets", "loss_index")}
            with env.ctx:
                x = m.hidden(d["idx"], pos=d["pos"], doc=d["doc"])
                b["ref_logp"] = m.token_loss(x, d["targets"], d["loss_index"])[1].cpu()
    finally:
        set_lora_enabled(model, True)


def micro_batches(examples, rows, cfg, env, tok):
    """The packed rows as micro-batches of batch_size rows. Under torchrun every process runs the same number
    of them (DDP's backward is a collective): the short ones get empty rows."""
    n = -(-len(rows) // cfg.batch_size)
    if env.world > 1:
        t = torch.tensor([n], device=env.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        n = int(t.item())
    rows = rows + [[]] * (n * cfg.batch_size - len(rows))
    return [data.collate(rows[i:i + cfg.batch_size], examples, cfg.seq_len, tok.pad_id, ("adv", "old_logp"))
            for i in range(0, len(rows), cfg.batch_size)]


def global_sum(x, env):
    """A number summed over the processes (the batch's response tokens: the loss's one normaliser)."""
    if env.world == 1:
        return x
    t = torch.tensor([float(x)], device=env.device)
    dist.all_reduce(t)
    return t.item()

# -----------------------------------------------------------------------------
# the run


def first_batch(engine, tok, cfg, problems, position, env):
    """The first step's rollouts, sampled before the run writes anything and checked (first_batch_checks):
    -> (groups, problems used, seconds). Ctrl-C here ends the run with nothing to save."""
    t0 = time.time()
    engine.model.eval()
    try:
        groups, used = rollouts(engine, tok, cfg, problems, position, 0, env)
    except KeyboardInterrupt:
        env.say("interrupted before the first update: nothing was learnt or written")
        raise SystemExit(130) from None
    first_batch_checks(groups, cfg, env)
    return groups, used, time.time() - t0


def first_batch_checks(groups, cfg, env):
    """Before the first update: a reward that is the same for every sample (of every process)
    leaves nothing to learn: stop and say why; a max_new_tokens that cuts most samples off earns
    them all 0: warn with the rate."""
    rewards = [r for g in groups for r in g["rewards"]]
    n_cut = sum(t for g in groups for t in g["truncated"])
    t = torch.tensor([len(rewards), n_cut, -min(rewards), max(rewards)], dtype=torch.float64,
                     device=env.device)
    if env.world > 1:
        dist.all_reduce(t[:2])
        dist.all_reduce(t[2:], op=dist.ReduceOp.MAX)
    n, n_cut, lo, hi = t[0].item(), t[1].item(), -t[2].item(), t[3].item()
    if n_cut / n > 0.5:
        env.say(f"warning: {n_cut / n:.0%} of the first batch's samples reached max_new_tokens="
                f"{cfg.max_new_tokens} and earn 0: raise max_new_tokens")
    if lo == hi:
        raise SystemExit(f"nothing to learn: all {n:.0f} samples of the first batch earned {lo:g} "
                         f"({n_cut / n:.0%} cut off at max_new_tokens={cfg.max_new_tokens}); try easier "
                         f"problems, a larger group_size or max_new_tokens, or another starting model")


def check_model(cfg, env, longest):
    """What depends on the model's shape, from init_from's config alone (before any model loads): its context
    holds the longest prompt (`longest` tokens) and the new tokens, grad_checkpointing its blocks, and the
    device's memory the engine's cache of `slots` beside the weights, gradients and optimizer state. -> the
    positions of the engine's slots."""
    mc = model_config_of(cfg.init_from)
    check_model_config(cfg, mc)
    for key in ("max_new_tokens", "eval_max_new_tokens") if cfg.eval_samples else ("max_new_tokens",):
        if longest + getattr(cfg, key) > mc.max_seq_len:
            raise SystemExit(f"config: the model's context of max_seq_len={mc.max_seq_len} tokens cannot "
                             f"hold the longest prompt of {cfg.datasets!r} ({longest} tokens) and {key}="
                             f"{getattr(cfg, key)}")
    new = max(cfg.max_new_tokens, cfg.eval_max_new_tokens if cfg.eval_samples else 0)
    L = -(-(longest + new + 1) // 64) * 64
    dtype = getattr(torch, env.dtype)
    with torch.device("meta"):
        n = Transformer(mc).num_params()
    # fp32 weights, gradients and AdamW's two moments; with LoRA the frozen base in the compute dtype
    fit, free = slots_that_fit(mc, L, dtype, env.device, True, n * (dtype.itemsize if cfg.lora_rank else 16))
    if fit is not None and cfg.slots > fit:
        raise SystemExit(f"config: slots={cfg.slots}: {cfg.slots} KV-cache slots of {L} positions need "
                         f"{gib(engine_bytes(mc, cfg.slots, L, dtype, True))}, more than the {gib(free)} of "
                         f"memory this {env.device} has beside the model's weights, gradients and optimizer "
                         f"state; lower slots (or max_new_tokens)")
    return L


def longest_prompt(cfg, tok, problems):
    """The tokens of the longest rendered prompt; SystemExit if seq_len cannot hold it and max_new_tokens."""
    longest = max(len(data.render_prompt(tok, p["prompt"], cfg.prompt_format, cfg.system_prompt))
                  for p in problems)
    if longest + cfg.max_new_tokens + 1 > cfg.seq_len:
        raise SystemExit(f"config: seq_len={cfg.seq_len} cannot hold the longest prompt ({longest} tokens) "
                         f"and max_new_tokens={cfg.max_new_tokens}: raise seq_len to "
                         f"{longest + cfg.max_new_tokens + 1}")
    return longest


def train(cfg):
    """Runs the RL job described by cfg; returns a summary dict. Bad settings and inputs stop it before any
    sampling, with one line naming them."""
    t_start = time.time()
    check_config(cfg)
    env = setup(cfg.device, cfg.dtype, cfg.dist_timeout)
    env.say(f"device {env.device}{f' x {env.world} processes' if env.world > 1 else ''}, compute dtype "
            f"{env.dtype}")
    env.say("config:", json.dumps(dataclasses.asdict(cfg), indent=1))
    ckpt = find_resume(cfg, env, RESUME_KEYS, cfg.prompts_per_step * cfg.group_size,
                       "prompts_per_step x group_size", f"{cfg.prompts_per_step} x {cfg.group_size}")
    if ckpt and "data_position" not in ckpt:
        raise SystemExit(f"resume={cfg.resume!r}: not an rl.py checkpoint (train.py's? it has no data "
                         f"position): start rl.py from it with init_from instead")
    # the problems and their prompts' lengths (with the tokenizer alone), then the model
    problems, held = data.split_problems(cfg.datasets, cfg.seed, cfg.val_size, cfg.max_samples)
    longest = longest_prompt(cfg, run_tokenizer(cfg), problems + held)
    L = check_model(cfg, env, longest)  # the model's context, blocks and memory, before it loads
    model, tok, part = build_model(cfg, env.device, env.dtype)
    if ckpt:
        model.load_state_dict(ckpt["model"], strict=not cfg.lora_rank)
    model.grad_checkpointing = cfg.grad_checkpointing
    env.say(f"model: {model.num_params() / 1e6:.1f}M parameters; {len(problems)} problems to sample, "
            f"{len(held)} held out (the eval grades {cfg.eval_samples}); the longest prompt {longest} tokens")
    ref_model = None
    # full fine-tuning: a frozen copy of the start, in the compute dtype
    if cfg.kl_coef and not cfg.lora_rank:
        with torch.device("meta"):
            ref_model = Transformer(model.config)
        ref_model.load_state_dict({k: v.to(getattr(torch, env.dtype)) for k, v in model.state_dict().items()},
                                  assign=True)
        ref_model.requires_grad_(False).eval()
    # bf16 working copies of the fp32 weights: the engine decodes from them, no cast per decode step
    step_model, _ = wrap_model(model, env, False, cfg.compile, cfg.activation_budget, working=True)
    opt, params = make_optimizer(model, cfg)
    step, best = restore_training_state(ckpt, model, opt, env.scaler) if ckpt else (0, None)
    saved = last_saved(ckpt, cfg.out_dir)  # then kept in memory by the loop: the same on every rank
    position = ckpt["data_position"] if ckpt else 0
    engine = Engine(model, cfg.slots, L, max(cfg.max_new_tokens, cfg.eval_max_new_tokens), env.ctx,
                    compile=cfg.compile and env.device.startswith("cuda"))
    # the first batch is sampled and checked before anything is written: a run it stops (every sample earns
    # the same) leaves out_dir as it was, the run overwrite=True would have replaced included
    first = first_batch(engine, tok, cfg, problems, position, env) if step == 0 else None

    # everything is checked: now the output folder is written (by rank 0)
    if env.master:
        make_out_dir(cfg.out_dir, replace=ckpt is None)
        save_tokenizer(tok, os.path.join(cfg.out_dir, "tokenizer"))
        write_text(os.path.join(cfg.out_dir, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1))
    log = RunLog(cfg.out_dir, env.master, ckpt["step"] if ckpt else None, cfg.wandb_project,
                 dataclasses.asdict(cfg),
                 plot_keys=("reward", "eval_accuracy", "response_length", "entropy", "kl"))
    env.barrier()
    del ckpt
    saving = dict(model=model, opt=opt, env=env, fsdp=False, part=part, config=dataclasses.asdict(cfg),
                  global_batch=cfg.prompts_per_step * cfg.group_size, keep_last=cfg.keep_last)
    late = LateValues(env.device, log, cfg.max_bad_steps, env.scaler)
    eval_set = held[:cfg.eval_samples]
    # greedy accuracy on the held-out problems, on the run's engine: held_out_eval(step) -> the eval_* fields
    held_out_eval = functools.partial(
        generation_eval, model, tok, eval_set, Sampling(cfg.eval_max_new_tokens, seed=cfg.seed),
        cfg.prompt_format, cfg.system_prompt, cfg.slots, env.ctx, os.path.join(cfg.out_dir, "samples.jsonl"),
        log=log, engine=engine)

    # -------------------------------------------------------------------------
    # the loop: sample, grade, compare, update; every step on the current weights
    env.say(f"RL for {cfg.max_iters} steps of {cfg.prompts_per_step} problems x {cfg.group_size} samples")
    if step == 0 and env.master and eval_set:  # where the policy starts: step 0 of the curves (not a best.pt)
        rec = held_out_eval(step=0)
        log.say(f"step 0 | eval_accuracy {rec['eval_accuracy']:.4g} (the starting model)")
        log.write({"step": 0, **rec})
    stop_reason, cuda = "max_iters", env.device.startswith("cuda")
    try:
        while step < cfg.max_iters:
            if out_of_time(t_start, cfg.max_time, step, 1, env):
                stop_reason = "max_time"
                break
            t0 = time.time()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            if first:  # sampled before the loop: its time counts in its step
                (groups, used, dt), first = first, None
                t0 -= dt
            else:
                model.eval()
                groups, used = rollouts(engine, tok, cfg, problems, position, step, env)
            model.train()
            with whole_step():  # the update and its bookkeeping whole: Ctrl-C waits for the step's end
                t1 = time.time()
                examples, rows = pack(groups, cfg)
                micro = micro_batches(examples, rows, cfg, env, tok)
                n_tok = global_sum(sum(sum(e["mask"]) for e in examples), env)
                if cfg.kl_coef:
                    reference_logprobs(model, ref_model, micro, env)
                lr = lr_at(step, cfg, cfg.max_iters)
                for g in opt.param_groups:
                    g["lr"] = lr
                tracked = ("clipped", "kl") if cfg.kl_coef else ("clipped",)
                stats = {k: torch.zeros((), device=env.device) for k in tracked}
                loss_fn = functools.partial(pg_loss, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef, stats=stats)
                for epoch in range(cfg.ppo_epochs if n_tok else 0):  # every group flat: nothing to update
                    if epoch == cfg.ppo_epochs - 1:
                        for v in stats.values():
                            v.zero_()
                    loss, _ = forward_backward(step_model, micro, env.ctx, env.scaler, env.device, env.world,
                                               n_tok, loss_fn)
                    values = apply_update(opt, params, loss, cfg.grad_clip, env.scaler)
                    late.push(step + 1, values, {"lr": lr})
                    late.settle()
                t2 = time.time()
                step += 1
                position += used
                rec = {"step": step, **step_record(groups, examples, stats, n_tok, late.last, env),
                       "sample_s": t1 - t0, "train_s": t2 - t1}
                rec.update(sampled_tok_s=rec["sampled_tokens"] / max(t1 - t0, 1e-9),
                           trained_tok_s=rec["trained_tokens"] / max(t2 - t1, 1e-9))
                if cuda:
                    rec["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    rec["engine_gib"] = sum(engine.memory().values()) / 2**30
                if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                    if env.master and eval_set:
                        rec.update(held_out_eval(step=step))
                    if improved(rec.get("eval_accuracy"), best, env):
                        best = rec["eval_accuracy"] if env.master else best
                        save_run(os.path.join(cfg.out_dir, "best.pt"), step=step, best=best, full=False,
                                 **saving)
                if step % cfg.save_interval == 0 and step != cfg.max_iters:
                    save_run(os.path.join(cfg.out_dir, f"ckpt-{step:06d}.pt"), step=step, best=best,
                             extra={"data_position": position}, **saving)
                    saved = step
                rec["other_s"] = time.time() - t0 - rec["sample_s"] - rec["train_s"]
                if step % cfg.log_interval == 0 or "eval_accuracy" in rec:
                    log.say(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rec.items()))
                    log.write(rec)
                    log.plot()
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        log.say("interrupted: saving a checkpoint before exiting")
    if saved != step:  # on every rank or none: save_run meets at a barrier (see last_saved)
        save_run(os.path.join(cfg.out_dir, f"ckpt-{step:06d}.pt"), step=step, best=best,
                 extra={"data_position": position}, **saving)
    wait_for_saves()
    summary = {"step": step, "stop_reason": stop_reason, "best": best, "time": time.time() - t_start}
    log.say(f"done: {stop_reason} at step {step} after {summary['time']:.0f}s; checkpoints in {cfg.out_dir}")
    log.close()
    teardown(env)
    return summary


def step_record(groups, examples, stats, n_tok, last, env):
    """One step's numbers (this process's samples; under torchrun rank 0's): rewards, flat groups, lengths,
    truncation, the policy's entropy (-mean log-prob of its own samples at temperature 1: an unbiased
    estimate), KL to the start (with kl_coef) and clipped share (of the last pass), the update's loss and
    gradient norm."""
    rewards = [r for g in groups for r in g["rewards"]]
    lengths = [len(s.ids) for g in groups for s in g["samples"]]
    logps = [lp for g in groups for s in g["samples"] for lp in s.logprobs]
    flat = [set(g["rewards"]) for g in groups]
    rec = {"reward": float(np.mean(rewards)), "all_correct": sum(f == {1.0} for f in flat) / len(flat),
           "all_wrong": sum(f == {0.0} for f in flat) / len(flat), "groups": len(groups),
           "response_length": float(np.mean(lengths)), "max_length": max(lengths),
           "truncated": float(np.mean([t for g in groups for t in g["truncated"]])),
           "entropy": -float(np.mean(logps)), "trained_tokens": int(n_tok),
           "sampled_tokens": int(sum(lengths) * env.world),
           # a step with nothing to train (every group flat) made no update: no loss, not the last step's
           "loss": last.get("loss") if n_tok else None, "grad_norm": last.get("grad_norm") if n_tok else None}
    if n_tok:
        rec["clip_frac"] = stats["clipped"].item() * env.world / n_tok
        if "kl" in stats:
            rec["kl"] = stats["kl"].item() * env.world / n_tok
    return rec


def main(argv=None):
    run_main(load_config, train, argv)


if __name__ == "__main__":
    main()
