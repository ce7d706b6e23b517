"""
The pieces of a training loop, shared by train.py (SFT, verifiers), rl.py (GRPO) and bench.py: plain functions
and a few small objects, which a loop calls top to bottom. No Trainer class and no callbacks: the loop stays
in the entry script, where it can be read and edited.

    cfg = parse_config(Config, sys.argv[1:])     # config.py: defaults < config files < --key=value, -h
    env = setup(cfg.device, cfg.dtype)           # torchrun processes, device, autocast, GradScaler
    model, tok, part = build_model(cfg, env.device, env.dtype)   # scratch or a checkpoint, + LoRA / head
    step_model, fsdp = wrap_model(model, env, ...)   # FSDP2, compiled blocks or DDP
    opt, params = make_optimizer(model, cfg)
    loss, n = forward_backward(step_model, micro, env.ctx, env.scaler, env.device, env.world, n_tok, sft_loss)
    late.push(step, apply_update(opt, params, loss, cfg.grad_clip, env.scaler), info)  # read one step later
    save_run(path, model, opt, env, step, best, ...); log.write({...})

Objectives are loss functions loss_fn(model, x, batch) -> summed loss over the final hidden states x (B, T, C)
of a batch, computed inside the model's forward (so DDP and FSDP see the call): sft_loss, verifier_loss here,
the policy gradient in rl.py. forward_backward divides by the tokens of the whole global batch.
"""
import dataclasses
import functools
import json
import math
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.graph import increment_version
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
from checkpoint import (attach_trained_parts, atomic_write, check_output_folder, checkpoint_file,
                        has_value_head, list_checkpoints, load_for_resume, load_model, model_config_of,
                        remove_orphan_tmp, resolve_checkpoint_dir, resume_path, save_training_checkpoint,
                        tokenizer_of)
from engine import evaluate, sample_table
from lora import LORA_TARGETS
from model import PRESETS, ModelConfig, Transformer, setup_numerics
from tokenizer import load_tokenizer


class TrainingError(RuntimeError):
    """A run that cannot go on (too many non-finite steps in a row)."""

# -----------------------------------------------------------------------------
# checks every loop's config shares


def check_common(cfg):
    """The checks every training loop's config shares (output, data mixture, optimisation, numerics, LoRA):
    -> a list of "key=value: what is wrong" lines, empty when all is well. Nothing is loaded or written."""
    bad = []

    def need(ok, key, what):
        if not ok:
            bad.append(f"{key}={getattr(cfg, key)!r}: {what}")
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    need(cfg.out_dir.strip() != "", "out_dir", "must name a folder")
    why = cfg.out_dir.strip() and check_output_folder(cfg.out_dir)
    need(not why, "out_dir", why)
    run_cfg = os.path.join(cfg.out_dir, "config.json")  # a run writes its own: one that is not would be lost
    if os.path.isfile(run_cfg):
        try:
            with open(run_cfg, encoding="utf-8") as f:
                ours = "out_dir" in json.load(f)
        except (OSError, ValueError):
            ours = False
        need(ours, "out_dir", "holds a config.json that is not a training run's (a Hugging Face "
             "checkpoint?), which the run would replace: choose another out_dir")
    # what the run writes in out_dir, in the form it writes it (not found only after the model has loaded)
    for name, folder in (("config.json", False), ("metrics.jsonl", False), ("samples.jsonl", False),
                         ("best.pt", False), ("tokenizer", True)):
        p = os.path.join(cfg.out_dir, name)
        need(not os.path.exists(p) or os.path.isdir(p) == folder, "out_dir", f"holds {name} as a "
             f"{'file' if folder else 'folder'}, where the run writes a {'folder' if folder else 'file'}: "
             f"move it away or choose another out_dir")
    need(cfg.init_from.strip() != "", "init_from", "must be 'scratch' or a checkpoint")
    # a fresh run loads init_from: it must be there (a resumed one loads its ckpt-*.pt instead)
    fresh = cfg.resume == "" or (cfg.resume == "auto" and not list_checkpoints(cfg.out_dir))
    if fresh and cfg.init_from.strip() not in ("", "scratch") and not os.path.isfile(cfg.init_from):
        try:
            resolve_checkpoint_dir(cfg.init_from)
        except FileNotFoundError as e:
            bad.append(f"init_from={cfg.init_from!r}: {e}")
    need(cfg.resume in ("", "auto") or os.path.isfile(cfg.resume), "resume",
         "must be '', 'auto' or an existing ckpt-*.pt file")
    bad += check_start(cfg, fresh)
    bad += check_datasets(cfg.datasets)
    need(cfg.prompt_format in ("chat", "plain"), "prompt_format", "must be 'chat' or 'plain'")
    need(0 <= cfg.seed < 2**32, "seed", "must be in [0, 2**32): numpy takes no other")
    need(finite(cfg.max_time) and cfg.max_time >= 0, "max_time", "must be >= 0 seconds (0 = no limit)")
    need(finite(cfg.dist_timeout) and cfg.dist_timeout > 0, "dist_timeout", "must be > 0 seconds")
    need(finite(cfg.lr) and cfg.lr > 0, "lr", "must be > 0")
    need(finite(cfg.min_lr_ratio) and 0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    need(cfg.schedule in ("cosine", "linear", "constant"), "schedule", "must be cosine, linear or constant")
    need(finite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    for k in ("beta1", "beta2"):
        need(finite(getattr(cfg, k)) and 0 <= getattr(cfg, k) < 1, k, "must be in [0, 1)")
    need(finite(cfg.grad_clip) and cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
    need(cfg.grad_checkpointing >= -1, "grad_checkpointing",
         "must be -1 (all blocks), 0 (none) or a number of blocks")
    need(finite(cfg.activation_budget) and 0 < cfg.activation_budget <= 1, "activation_budget",
         "must be in (0, 1]")
    need(cfg.lora_rank >= 0, "lora_rank", "must be >= 0 (0 = full fine-tuning)")
    if cfg.lora_rank:
        need(cfg.init_from != "scratch", "lora_rank", "LoRA adapts a pretrained model: set init_from")
        need(finite(cfg.lora_alpha) and cfg.lora_alpha > 0, "lora_alpha", "must be > 0")
        need(finite(cfg.lora_dropout) and 0 <= cfg.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        targets = cfg.lora_targets.split(",")
        need(set(targets) <= set(LORA_TARGETS) and len(set(targets)) == len(targets), "lora_targets",
             f"must be a comma-separated subset of {','.join(LORA_TARGETS)}, each named once")
    return bad

def check_datasets(spec):
    """The training mixture `spec` (cfg.datasets): its weights, each dataset there and no test split, a user's
    file read whole (its first bad line, named) and none of its problems a test problem. -> error lines."""
    bad = []
    try:
        mixture = data.parse_mixture(spec)
    except ValueError as e:
        return [str(e)]
    for name, _ in mixture:
        where = f"datasets={spec!r}: '{name}'"
        if name not in data.DATASETS and not os.path.exists(name):
            known = ", ".join(list(data.DATASETS)[:5])
            bad.append(f"{where} is not a known name ({known}, arith1-9) nor a file or folder")
        elif data.is_test_split(name):
            bad.append(f"{where} is a test split: train on training data")
        elif name not in data.DATASETS:
            try:  # read now, not after the model has loaded
                leak = data.test_problem(data.load_dataset(name))
            except (ValueError, OSError) as e:
                bad.append(f"datasets: {e}")
                continue
            if leak:  # samples of test problems (sample.py --eval's default split)?
                bad.append(f"{where}: example {leak[0]} is a problem of {leak[1]}'s test split: train on "
                           f"training problems (sample.py --split train)")
    return bad


def check_start(cfg, fresh):
    """What a fresh run starts from and replaces: not a verifier (unless it trains one), and not a checkpoint
    of the run that overwrite=True replaces. -> "key=value: what is wrong" lines."""
    bad = []

    def need(ok, key, what):
        if not ok:
            bad.append(f"{key}={getattr(cfg, key)!r}: {what}")
    # a verifier (a value head on the model) is not a policy to train or sample from
    init_file = fresh and cfg.init_from.strip() not in ("", "scratch") and checkpoint_file(cfg.init_from)
    if init_file and getattr(cfg, "objective", "") != "verifier":
        try:
            head = has_value_head(init_file)
        except ValueError:  # a damaged file: the load names it later
            head = False
        need(not head, "init_from", "is a verifier checkpoint (a value head): start from the model it scores")
    # --overwrite replaces the run in out_dir (its checkpoints go): it cannot start from one of them
    same = init_file and cfg.overwrite and \
        os.path.realpath(os.path.dirname(init_file)) == os.path.realpath(cfg.out_dir)
    need(not same, "init_from",
         f"is a checkpoint of the run in out_dir={cfg.out_dir!r}, which overwrite=True replaces: copy it "
         f"elsewhere first, or choose another out_dir")
    return bad


def make_out_dir(out_dir, replace=False):
    """Make the run's folder, once every check has passed, and remove what an interrupted save left in it
    (-> how many such files). replace=True (a fresh run with overwrite): the run it replaces goes too, its
    checkpoints and best.pt, so that resume=auto can never continue the old run. One line if the system
    refuses (a full file system)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        if replace:
            best = os.path.join(out_dir, "best.pt")
            for p in list_checkpoints(out_dir) + ([best] if os.path.exists(best) else []):
                os.remove(p)
    except OSError as e:
        raise SystemExit(f"config: out_dir={out_dir!r}: cannot be made or cleared ({e.strerror})")
    return remove_orphan_tmp(out_dir)


def last_saved(ckpt, out_dir):
    """The step of the last ckpt-*.pt in out_dir when a run starts (-1 if none: a fresh run, or one
    resumed from another folder); the loop keeps it up to date in memory. Its final save asks that, not the
    file system: rank 0 writes in the background, so another rank could look before the file is renamed,
    skip or take the save alone, and wait at its barrier forever."""
    step = ckpt["step"] if ckpt else -1
    return step if ckpt and os.path.exists(os.path.join(out_dir, f"ckpt-{step:06d}.pt")) else -1


def find_resume(cfg, env, keys, global_batch, batch_name, batch_now):
    """The checkpoint a run continues (None: a fresh run), checked against cfg on `keys` and the global batch
    (checkpoint.load_for_resume). A fresh run will not replace an out_dir that holds one, unless overwrite."""
    path = resume_path(cfg.resume, cfg.out_dir)
    if cfg.resume == "auto":
        env.say(f"resume=auto: found {path}" if path else
                f"resume=auto: no ckpt-*.pt in {cfg.out_dir}/, starting a fresh run")
    if not path:
        held = list_checkpoints(cfg.out_dir) or os.path.exists(os.path.join(cfg.out_dir, "best.pt"))
        if held and not cfg.overwrite:
            raise SystemExit(f"out_dir={cfg.out_dir!r} already holds a run (ckpt-*.pt / best.pt): continue "
                             f"it with --resume=auto, replace it with --overwrite=true, or choose another "
                             f"out_dir")
        return None
    try:
        ckpt = load_for_resume(path, dataclasses.asdict(cfg), keys, global_batch, batch_name, batch_now)
    except ValueError as e:
        raise SystemExit(str(e))
    metrics = os.path.join(cfg.out_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        resumed_rows(metrics, ckpt["step"])  # kept by RunLog later: a bad row is found now, before the load
    env.say(f"resuming from {path} at step {ckpt['step']}")
    return ckpt


def run_main(load_config, train, argv):
    """An entry script's main: its config from argv, its train(); a run that cannot go on and bad input (a
    dataset, a checkpoint, a file) end in one line and a non-zero exit, Ctrl-C in 130 (after a checkpoint, in
    the loop)."""
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    try:
        summary = train(cfg)
    except TrainingError as e:
        raise SystemExit(f"training stopped: {e}")
    except (ValueError, OSError) as e:  # one line, no traceback
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:  # the loops catch their own (a checkpoint, then 130): this came outside them
        print("interrupted outside the training loop (loading, compiling, the first batch): no checkpoint "
              "written now", file=sys.stderr)
        raise SystemExit(130) from None
    if summary["stop_reason"] == "interrupted":
        raise SystemExit(130)  # Ctrl-C, after the checkpoint is saved

# -----------------------------------------------------------------------------
# processes and numerics


@dataclasses.dataclass
class Env:
    """Where a run executes: its process among `world` (torchrun; rank 0 writes and logs), and the numerics
    model.setup_numerics decided (device, autocast context, GradScaler for fp16 only, dtype name)."""
    rank: int
    world: int
    local: int
    device: str
    ctx: object
    scaler: object
    dtype: str
    started_dist: bool = False

    @property
    def master(self):
        return self.rank == 0

    def say(self, *a, **k):
        if self.master:
            print(*a, **k)

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def torchrun_env():
    """(rank, world, local) from torchrun's variables, checked: integers, consistent, and, with a rendezvous
    to make, MASTER_ADDR and MASTER_PORT set. SystemExit naming the variable otherwise."""
    vals = {}
    for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        v = os.environ.get(k, str(d))
        if not re.fullmatch(r"\d+", v.strip()):
            raise SystemExit(f"environment: {k}={v!r} must be a whole number >= 0 (torchrun sets it)")
        vals[k] = int(v)
    rank, world, local = vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"]
    if world < 1:
        raise SystemExit(f"environment: WORLD_SIZE={world} must be >= 1")
    if rank >= world:
        raise SystemExit(f"environment: RANK={rank} is not a process of WORLD_SIZE={world} (ranks are 0 to "
                         f"{world - 1})")
    lw = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if lw and not (lw.isdigit() and 1 <= int(lw) <= world):
        raise SystemExit(f"environment: LOCAL_WORLD_SIZE={lw!r} must be a whole number from 1 to "
                         f"WORLD_SIZE={world} (torchrun sets it)")
    local_world = int(lw) if lw else world
    if local >= local_world:
        raise SystemExit(f"environment: LOCAL_RANK={local} is not below LOCAL_WORLD_SIZE / WORLD_SIZE="
                         f"{local_world}")
    if world > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise SystemExit(f"environment: WORLD_SIZE={world} but {' and '.join(missing)} not set: start "
                             f"the processes with torchrun, which sets them")
        port = os.environ["MASTER_PORT"].strip()
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise SystemExit(f"environment: MASTER_PORT={port!r} must be a port number from 1 to 65535")
    return rank, world, local


def setup(device="auto", dtype="auto", dist_timeout=300.0):
    """-> Env. Under torchrun (WORLD_SIZE > 1) starts the process group: one GPU per process (LOCAL_RANK),
    nccl on CUDA, gloo on CPUs. If the processes do not all meet within dist_timeout seconds, the process says
    which variables it used and exits, rather than hanging."""
    rank, world, local = torchrun_env()
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if world > 1 and use_cuda and local >= torch.cuda.device_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise SystemExit(f"environment: LOCAL_RANK={local}, but this machine shows "
                         f"{torch.cuda.device_count()} GPU(s) (CUDA_VISIBLE_DEVICES={visible})")
    started = world > 1 and not dist.is_initialized()
    if started:
        if use_cuda:
            torch.cuda.set_device(local)
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"

        def give_up():  # runs on a timer thread: the main thread is stuck inside the rendezvous
            print(f"error: rank {rank} of WORLD_SIZE={world} did not meet the other processes at "
                  f"MASTER_ADDR:MASTER_PORT={where} within {dist_timeout:g}s (dist_timeout): are all {world} "
                  f"started, with the same MASTER_ADDR and MASTER_PORT?", file=sys.stderr, flush=True)
            os._exit(1)
        timer = threading.Timer(dist_timeout, give_up)
        timer.daemon = True
        timer.start()
        dist.init_process_group("nccl" if use_cuda else "gloo")
        dist.barrier()  # every process is there
        timer.cancel()
    try:
        device = f"cuda:{local}" if world > 1 and use_cuda else device
        device, ctx, scaler, dtype = setup_numerics(device, dtype)
    except ValueError as e:
        raise SystemExit(f"config: {e}")
    return Env(rank, world, local, device, ctx, scaler, dtype, started)


def teardown(env):
    if env.started_dist:
        dist.destroy_process_group()

# -----------------------------------------------------------------------------
# the model: built, given its trained parts, wrapped for the step


def run_tokenizer(cfg):
    """The tokenizer of the model build_model makes (cfg.tokenizer from scratch, else init_from's), loaded
    alone: the data is built and checked with it before any model is loaded."""
    return load_tokenizer(cfg.tokenizer) if cfg.init_from == "scratch" else tokenizer_of(cfg.init_from)


def run_model_config(cfg, tok):
    """The ModelConfig of the model build_model makes, without making it: from scratch the preset with its
    overrides (and tok's vocabulary), else init_from's, read without its weights. For the checks that need
    the model's shape (its context, its blocks, its memory) before any model is loaded."""
    if cfg.init_from != "scratch":
        return model_config_of(cfg.init_from)
    mc = dataclasses.asdict(PRESETS[cfg.model_preset])
    # vocab padded to a multiple of 64
    mc.update(vocab_size=-(-tok.n_vocab // 64) * 64, max_seq_len=cfg.seq_len)
    # overrides: plain multi-head attention, SwiGLU width ~8/3 C
    if cfg.n_layer or cfg.n_embd or cfg.n_head:
        mc.update({k: getattr(cfg, k) for k in ("n_layer", "n_embd", "n_head") if getattr(cfg, k)})
        width = -(-8 * mc["n_embd"] // 3 // 32) * 32
        mc.update(n_kv_head=mc["n_head"], head_dim=0, intermediate_size=width)
    return ModelConfig(**mc)


def check_model_config(cfg, mc):
    """The settings that depend on the model's shape (mc: run_model_config's), checked before it loads:
    SystemExit naming the key."""
    if cfg.grad_checkpointing > mc.n_layer:
        raise SystemExit(f"config: grad_checkpointing={cfg.grad_checkpointing}: the model has {mc.n_layer} "
                         f"block(s): recompute -1 (all), 0 (none) or at most {mc.n_layer}")


def build_model(cfg, device, dtype="float32", value_head=False, freeze=False):
    """-> (model, tok, part). The model to train: from scratch (cfg.model_preset with the n_layer / n_embd /
    n_head overrides, cfg.tokenizer) or any checkpoint load_model reads (cfg.init_from), in fp32 master
    weights; with cfg.lora_rank, adapters on the base, which is then frozen and kept in the compute dtype
    `dtype`; with value_head a verifier's head, freeze=True freezing the rest (also kept in `dtype`). part
    describes what a checkpoint of it holds: {"base": the base checkpoint's path (None from scratch), "lora":
    the adapters' spec or None, "value_head": bool}."""
    base = None
    if cfg.init_from == "scratch":
        tok = load_tokenizer(cfg.tokenizer)
        if cfg.model_preset not in PRESETS:
            raise SystemExit(f"model_preset '{cfg.model_preset}' is not one of {sorted(PRESETS)}")
        torch.manual_seed(cfg.seed)
        model = Transformer(run_model_config(cfg, tok)).to(device)
    else:
        # fp32 master weights
        model, tok, info = load_model(cfg.init_from, device=device, dtype=torch.float32)
        base = os.path.abspath(info["path"])
    if tok.n_vocab > model.config.vocab_size:
        raise SystemExit(f"tokenizer has {tok.n_vocab} tokens but the model only {model.config.vocab_size}")
    lora = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
            "targets": cfg.lora_targets} if cfg.lora_rank else None
    if lora or freeze:
        model.to(getattr(torch, dtype))  # a frozen base needs no fp32 master copy
    torch.manual_seed(cfg.seed)
    attach_trained_parts(model, lora, value_head, freeze)
    return model, tok, {"base": base, "lora": lora, "value_head": value_head}


def wrap_model(model, env, fsdp=False, compile=True, activation_budget=1.0, working=False):
    """The module the step calls, and whether it is sharded: under torchrun FSDP2 (each block, then the
    rest, sharded across the ranks; gathered in the compute dtype for each block's forward and backward,
    gradients reduced in fp32; blocks eager) or DDP (gradients as views into its all-reduce buckets: one
    copy in memory, not two); on CUDA the blocks compiled (flex attention for packed rows). `model` itself
    stays the plain module: compiled blocks, DDP and FSDP share its parameters, and its state_dict names
    are the checkpoint's.
    working (unsharded): the fp32 weights that train get working copies in the compute dtype
    (model.set_working_dtype), which the forward and the engine read instead of casting every weight at
    every call; gradients still reach the fp32 weights (accumulated in fp32 across micro-batches, reduced
    in fp32 by DDP). rl.py's engine decodes ~500 steps from the weights it trains between two updates: there
    the copies save a cast of every weight per decode step. train.py's step does without: at the 0.5B shape
    (H200, bench.py train) they cut its kernel time by 5.7% but the step, bound by the host, was no faster
    (90.5k vs 102.7k tokens/s) and the copies cost 1 GiB more at the peak (13.9 vs 12.9 GiB)."""
    sharded = fsdp and env.world > 1
    if sharded:
        mp = MixedPrecisionPolicy(param_dtype=None if env.dtype == "float32" else getattr(torch, env.dtype),
                                  reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model, True
    model.set_working_dtype(None if env.dtype == "float32" or not working else getattr(torch, env.dtype))
    if compile and env.device.startswith("cuda"):
        model.compile_blocks(activation_budget=activation_budget)
    if env.world > 1:
        cuda = env.device.startswith("cuda")
        return DDP(model, device_ids=[env.local] if cuda else None, gradient_as_bucket_view=True), False
    return model, False


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU


def model_state(model, fsdp):
    """The whole state dict; under FSDP gathered from the shards (a collective: every rank calls it)."""
    return get_model_state_dict(model, options=_FULL) if fsdp else model.state_dict()


def whole_model(model, fsdp, env):
    """The model as one module on rank 0, for generation: itself, or under FSDP a copy gathered from the
    shards (every rank calls it; others get None)."""
    if not fsdp:
        return model if env.master else None
    sd = model_state(model, fsdp)
    if not env.master:
        return None
    with torch.device("meta"):
        whole = Transformer(model.config)
    whole.load_state_dict(sd, assign=True)
    return whole.to(env.device)


def save_run(path, model, opt, env, step, best, fsdp, part, config, global_batch, keep_last=0, full=True,
             extra=None):
    """One training checkpoint of `model` (the plain module): ckpt-*.pt with the optimizer state
    (full), or best.pt with the weights only. Every rank calls it (FSDP gathers); rank 0 writes. A
    run that trains part of the model (LoRA adapters, a verifier's head on a frozen backbone)
    stores only that part and its base. The file is written in the background (see
    checkpoint.save_checkpoint): call checkpoint.wait_for_saves() before reading it or ending."""
    sd = model_state(model, fsdp)
    osd = get_optimizer_state_dict(model, opt, options=_FULL) if full else None  # keyed by parameter name
    if env.master:
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        partial = len(trained) < len(list(model.parameters()))
        save_training_checkpoint(path, {k: v for k, v in sd.items() if k in trained} if partial else sd,
                                 dataclasses.asdict(model.config), config, step=step, best=best,
                                 global_batch=global_batch, world_size=env.world,
                                 base=part["base"] if partial else None, lora=part["lora"],
                                 value_head=part["value_head"], optimizer=osd,
                                 scaler=env.scaler.state_dict() if full and env.scaler else None,
                                 keep_last=keep_last, extra=extra, background=True)
    env.barrier()

# -----------------------------------------------------------------------------
# optimizer and schedule


def make_optimizer(model, cfg):
    """AdamW with decay on matrices only (not norms, biases), fused: one kernel for all parameters, and the
    only form that can skip a non-finite step on the device (apply_update). -> (optimizer, trained params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True), params


def lr_at(step, cfg, total_steps):
    """Linear warmup to cfg.lr over warmup_iters, then cosine / linear decay to lr * min_lr_ratio, or
    constant."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_iters) / max(1, total_steps - cfg.warmup_iters))
    decay = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)

# -----------------------------------------------------------------------------
# objectives: loss functions over a batch's final hidden states x (B, T, C), summed over their tokens


def sft_loss(model, x, batch):
    """Cross-entropy of the supervised (answer) tokens, summed: the fused chunked loss (model.token_loss)."""
    return model.token_loss(x, batch["targets"], batch["loss_index"])[0]


def verifier_loss(model, x, batch):
    """A verifier's value head (cf. Cobbe et al. 2021): binary cross-entropy of its logit at
    every labelled response token against the solution's label (1 correct, 0 not), summed.
    Normalised by label_index's count."""
    h = x.reshape(-1, x.size(-1)).index_select(0, batch["label_index"])  # (M, C)
    v = model.value_head(h).float()  # (M,) logits
    return F.binary_cross_entropy_with_logits(v, batch["labels"], reduction="sum")

# -----------------------------------------------------------------------------
# one optimizer step: accumulate, then guard, clip and update, without the host waiting for the GPU


@contextmanager
def _accumulating(model):
    """Gradients stay on each rank for this micro-batch: DDP's no_sync, FSDP2's set_requires_gradient_sync."""
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def forward_backward(model, micro, ctx, scaler, device, world=1, n_tok=None, loss_fn=sft_loss):
    """Accumulate the gradients of one optimizer step over its micro-batches (dicts of CPU tensors,
    data.collate). loss_fn(model, x, batch) gives each micro-batch's summed loss; the step's loss is their sum
    divided by n_tok, the tokens of the WHOLE accumulated batch (not a mean of per-micro-batch means, which
    over-weights short answers), so N micro-batches of 1 row give exactly the gradient of one batch of N rows.
    Across `world` DDP ranks the same holds for the global batch: n_tok is then its count
    (Dataset.supervised_tokens, counted on the CPU: no collective), and DDP's mean of the ranks' gradients is
    undone by scaling by world. Default n_tok: the micro-batches' supervised targets (one process). No host
    sync: the positions were found on the CPU. Returns (loss of the global batch as a 0-dim tensor, n_tok)."""
    if n_tok is None:
        if world > 1:
            raise ValueError("with several processes, pass n_tok: the global batch's supervised tokens")
        n_tok = sum(len(b["loss_index"]) for b in micro)
    loss_acc = torch.zeros((), device=device)
    pin = str(device).startswith("cuda")
    for i, b in enumerate(micro):
        # from pinned memory the copy is queued behind the previous step's kernels; from pageable memory the
        # host would wait for them (measured: 23 ms of a 136 ms step on an H200, then the GPU idled while the
        # host built the next step's mask and launched its first kernels)
        b = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in b.items()
             if isinstance(v, torch.Tensor)}
        # DDP / FSDP reduce gradients across ranks in the last micro-batch's backward only
        with _accumulating(model) if world > 1 and i < len(micro) - 1 else nullcontext():
            with ctx:
                loss = model(b["idx"], pos=b["pos"], doc=b["doc"],
                             loss_fn=functools.partial(loss_fn, batch=b))
                loss = loss * (world / max(1, n_tok))
            (scaler.scale(loss) if scaler else loss).backward()
        loss_acc += loss.detach() / world
    if world > 1:
        dist.all_reduce(loss_acc)
    return loss_acc, n_tok


@contextmanager
def whole_step():
    """Ctrl-C inside waits for the block to end: an update and its bookkeeping (the step count, the data
    position, the metrics row) happen whole or not at all, so the checkpoint the interrupt leads to resumes
    exactly (several PPO passes make the window seconds wide). A plain block outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *a: got.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


def apply_update(opt, params, loss, grad_clip, scaler=None):
    """Clip the gradients and take the optimizer step, without waiting for the GPU. The non-finite
    guard decides on the device: fused AdamW skips the whole update (weights, moments and step
    count) where found_inf is 1, the mechanism the fp16 GradScaler uses, which decides by itself.
    The gradients are cleared. -> (2,) fp32 tensor on the device: [loss, gradient norm], for the
    host to read when it is ready."""
    if scaler:
        scaler.unscale_(opt)
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP: a sharded norm
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.found_inf = (~(torch.isfinite(loss) & torch.isfinite(gnorm))).float()
        opt.step()
    for p in params:  # the fused kernel leaves the version counters as they were: the working copies
        increment_version(p)  # (model.set_working_dtype) learn of a change from them
    opt.zero_grad(set_to_none=True)
    return torch.stack([loss.float(), gnorm.float()])


class LateValues:
    """A step's loss and gradient norm, read by the host one step late: copied into pinned memory behind
    an event, read once the next step is queued (push), or when the loop must wait anyway (settle: before
    a log line, an eval, a checkpoint). So the host never waits for the GPU inside the loop (a wait per
    step left the GPU idle while the next batch and its first kernels were prepared: 17% of the step time
    at the 0.5B shape). The guard against a non-finite step acts on the GPU (apply_update); settle
    reports it when the values arrive, and raises TrainingError after max_bad_steps in a row. `last`
    holds the latest applied step's values."""

    def __init__(self, device, log, max_bad_steps, scaler=None):
        self.cuda = str(device).startswith("cuda")
        self.host = torch.empty(2, pin_memory=self.cuda)
        self.pending = None  # (step, info, event) of the step whose values are on their way to `host`
        self.log, self.max_bad_steps, self.scaler = log, max_bad_steps, scaler
        self.bad_in_a_row = 0
        # until the first applied update
        self.last = {"loss": float("nan"), "lr": 0.0, "grad_norm": float("nan")}

    def push(self, step, values, info):
        """values: apply_update's (2,) tensor for `step`; info: what to log with them ({"lr", "ids", ...})."""
        self.settle()  # the previous step's values: ready by now, ahead of this step's work on the GPU
        self.host.copy_(values, non_blocking=self.cuda)
        event = torch.cuda.Event() if self.cuda else None
        if event is not None:
            event.record()
        self.pending = (step, info, event)

    def settle(self):
        if self.pending is None:
            return
        step, info, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        loss, gnorm = self.host.tolist()
        # (with fp16 an inf gradient is the GradScaler's business: it skips the step, lowers the scale)
        if not math.isfinite(loss) or (not math.isfinite(gnorm) and not self.scaler):
            self.bad_in_a_row += 1
            ids = info.get("ids")
            self.log.say(f"step {step}: non-finite loss {loss} / grad norm {gnorm}: update skipped "
                         f"({self.bad_in_a_row} in a row); examples in this batch: {ids}")
            self.log.write({"step": step, "event": "skipped_nonfinite", "loss": loss, "grad_norm": gnorm,
                            "example_ids": ids})
            if self.bad_in_a_row >= self.max_bad_steps:
                raise TrainingError(f"{self.bad_in_a_row} non-finite steps in a row (last at step {step}); "
                                    f"stopping without applying any of them. See metrics.jsonl for the "
                                    f"example ids; try a lower lr, dtype=float32 to rule out precision, or "
                                    f"check those examples.")
        else:
            self.bad_in_a_row = 0
            self.last = {"step": step, "loss": loss, "lr": info["lr"], "grad_norm": gnorm,
                         **{k: v for k, v in info.items() if k not in ("lr", "ids")}}


def out_of_time(t_start, max_time, step, log_interval, env):
    """max_time (seconds, 0 = none) has passed. Under torchrun the ranks' clocks differ, so they stop when any
    of them is out of time, agreeing at log steps only, where the loop waits for the GPU anyway: reading a
    collective every step would stall the queue."""
    late = bool(max_time) and time.time() - t_start > max_time
    if not max_time or env.world == 1:
        return late
    if step % log_interval:
        return False
    flag = torch.tensor([float(late)], device=env.device)
    dist.all_reduce(flag)
    return flag.item() > 0

# -----------------------------------------------------------------------------
# evaluation during training: held-out data only (never a test split)


def evaluate_loss(model, ds, ctx, device, batch_size, loss_fn=sft_loss, key="loss_index"):
    """Mean loss per token (loss_fn's, normalised by the batches' `key` positions) over every row of a
    dataset's first epoch. The last batch is padded with empty rows to batch_size, so a compiled model sees
    one shape here (no recompile for a short batch)."""
    model.eval()
    total, count = 0.0, 0
    n = ds.rows_per_epoch(0)
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="val loss", unit="batch", leave=False,
                          disable=n <= 4 * batch_size):
            b = ds.batch(start, min(batch_size, n - start), pad_to=batch_size)
            b = {k: v.to(device) for k, v in b.items() if isinstance(v, torch.Tensor)}
            with ctx:
                loss = model(b["idx"], pos=b["pos"], doc=b["doc"],
                             loss_fn=functools.partial(loss_fn, batch=b))
            total += loss.item()
            count += len(b[key])
    model.train()
    return total / max(1, count)


def eval_problems(pool, n):
    """The first n distinct problems of `pool` (examples) that have a gold answer: each problem once (a
    held-out problem can have several rows)."""
    problems = {}
    for p in pool:
        if p.get("answer") is not None:
            problems.setdefault(p["prompt"], p)
    return list(problems.values())[:n]


def generation_eval(model, tok, problems, sampling, prompt_format, system_prompt, batch_size, ctx,
                    samples_path, step, log, engine=None):
    """Generate and grade held-out problems (engine.evaluate, greedy under `sampling`; with `engine`, on the
    caller's engine): -> the eval_* fields of a metrics row. The first five generations go to samples_path,
    three to the console."""
    summary, records = evaluate(model, tok, problems, sampling, prompt_format, system_prompt,
                                batch_size=batch_size, ctx=ctx, entropy=True, engine=engine)
    with open(samples_path, "a") as f:
        for r in records[:5]:
            f.write(json.dumps({"step": step, **r}) + "\n")
    log.say(sample_table(records, n=3))
    return {f"eval_{k}": v for k, v in summary.items()}


def improved(metric, best, env):
    """Whether an eval's metric (higher is better; None or NaN: no verdict) beats the best so far. Rank 0
    decides, the others follow (only it evaluates)."""
    better = [metric is not None and not math.isnan(metric) and (best is None or metric > best)]
    if env.world > 1:
        dist.broadcast_object_list(better)
    return better[0]

# -----------------------------------------------------------------------------
# the run's record


def resumed_rows(path, step):
    """The rows of a metrics.jsonl that a run resumed at `step` keeps (those up to it); find_resume reads them
    too, so that a file that cannot be read is found before the model loads. SystemExit naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e}): fix or remove it")
    # a kill in the middle of an append leaves a last line without its newline: that row goes
    lines = text[:text.rfind("\n") + 1].splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: a row is not valid JSON ({e.msg}): fix or remove it")
        if not isinstance(r, dict):
            raise SystemExit(f"{path}:{n}: a row is not a JSON object: fix or remove it")
        if r and r.get("step", 0) <= step:
            rows.append(r)
    return rows


class RunLog:
    """What a run tells: lines on the console and one JSON row per log step, eval and event in
    out_dir/metrics.jsonl (rank 0 only), wandb when `wandb_project` is set and wandb installed, and curves.png
    of `plot_keys` when matplotlib is installed. Resuming at step s drops the rows a crashed run wrote past s,
    so every step has one row; a fresh run starts the file anew."""

    def __init__(self, out_dir, master, resume_step=None, wandb_project="", config=None, plot_keys=()):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.master, self.plot_keys, self.wandb = master, plot_keys, None
        if not master:
            return
        if os.path.exists(self.path):
            rows = [] if resume_step is None else resumed_rows(self.path, resume_step)
            atomic_write(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
        if wandb_project:
            try:
                import wandb
                self.wandb = wandb.init(project=wandb_project, config=config)
            except ImportError:
                self.say("wandb_project is set but wandb is not installed: logging to metrics.jsonl only")

    def say(self, *a):
        if self.master:
            print(*a)

    def write(self, rec):
        if not self.master:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.wandb:
            self.wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))},
                           step=rec.get("step"))

    def plot(self):
        """curves.png next to metrics.jsonl: each of plot_keys against the step (matplotlib installed)."""
        if not (self.master and self.plot_keys and os.path.exists(self.path)):
            return
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        rows = data.read_jsonl(self.path)
        keys = [k for k in self.plot_keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
        if not keys:
            return
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and "step" in r]
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
            ax.set_title(k)
            ax.set_xlabel("step")
        fig.tight_layout()
        png = os.path.join(os.path.dirname(self.path), "curves.png")
        atomic_write(png, lambda f: fig.savefig(f, format="png"))
        plt.close(fig)

    def close(self):
        self.plot()
        if self.wandb:
            self.wandb.finish()
