"""
Fine-tune a pretrained decoder (or train one from scratch) on math data. Reads top to bottom:
config -> numerics -> model and tokenizer -> data -> the loop (accumulate, guard, clip, step) -> eval and checkpoints.

  python train.py                                  # embedded default: a tiny model learns arithmetic on a CPU in minutes
  python train.py configs/gsm8k_qwen05b.py         # an experiment file overrides fields of Config
  python train.py configs/gsm8k_qwen05b.py --lr=2e-5 --max_iters=200   # --key=value overrides it again
"""
import dataclasses
import difflib
import inspect
import json
import math
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
from checkpoint import (list_checkpoints, load_checkpoint, load_model, remove_orphan_tmp, rng_state, save_checkpoint,
                        save_tokenizer, set_rng_state, write_text)
from engine import evaluate, sample_table, score_examples, verifier_metrics
from model import LORA_TARGETS, PRESETS, ModelConfig, Transformer, apply_lora, gpu_peak_flops, setup_numerics
from tokenizer import load_tokenizer


@dataclass
class Config:
    # the defaults are the embedded example: a ~1M-parameter model learns 2-digit addition/subtraction on a CPU
    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"           # "scratch", or any checkpoint: HF folder, cached hub id, best.pt, ckpt-*.pt
    model_preset: str = "scratch-22m"    # for scratch: a preset of model.PRESETS ...
    n_layer: int = 2                     # ... with these overrides (0 = the preset's value)
    n_embd: int = 128
    n_head: int = 4
    tokenizer: str = "math"              # for scratch: "math" or a tokenizer folder; pretrained models bring theirs
    resume: str = ""                     # "" = fresh run, "auto" = latest ckpt in out_dir, or a path to a ckpt-*.pt
    # data
    datasets: str = "arith2"             # "name[:weight],...": gsm8k, math, arith[N], or a .jsonl / MATH folder path
    prompt_format: str = "plain"         # "chat" (the model's chat template) or "plain"
    system_prompt: str = data.SYSTEM_PROMPT
    seq_len: int = 128                   # every row has exactly this many tokens (static shapes)
    pack: bool = True                    # pack several examples per row; False = one example per row, padded
    max_samples: int = 0                 # cap on training examples per dataset (0 = all)
    val_size: int = 200                  # problems held out of training: validation loss and the eval
    seed: int = 1337
    # optimisation
    batch_size: int = 16                 # rows per micro-batch
    grad_accum: int = 1                  # micro-batches per optimizer step
    epochs: float = 1.0                  # run length in epochs, unless max_iters > 0
    max_iters: int = 3000                # optimizer steps (0 = from epochs)
    max_time: float = 0.0                # wall-clock seconds, then save and stop (0 = none; torchrun: at log steps)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1            # the decay ends at lr * min_lr_ratio
    schedule: str = "cosine"             # cosine | linear | constant (each after a linear warmup)
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0               # 0 = no clipping (the norm is still computed for the guard)
    max_bad_steps: int = 5               # stop after this many non-finite steps in a row
    # numerics: decided once, in setup_numerics()
    device: str = "auto"                 # auto = cuda > mps > cpu
    dtype: str = "auto"                  # auto = bf16 on GPUs that have it, else fp16 (+GradScaler); fp32 on mps/cpu
    compile: bool = True                 # torch.compile each block, flex attention for packed rows (CUDA only)
    grad_checkpointing: int = 0          # blocks whose activations are recomputed in backward: 0 none, n first n, -1 all
    activation_budget: float = 1.0       # < 1: compiled blocks keep this fraction of their activations, recompute
                                         # cheap ops (model.compile_blocks); configs/gsm8k_qwen05b.py uses 0.7
    # LoRA: adapters on the listed projections, the rest frozen in the compute dtype (lr ~1e-4 vs ~1e-5 full)
    lora_rank: int = 0                   # 0 = full fine-tuning
    lora_alpha: float = 16.0             # the adapter's update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: str = "q,k,v,o,gate,up,down"
    fsdp: bool = False                   # under torchrun: shard weights, gradients, optimizer state (FSDP2) vs DDP
    # a verifier: a value head on the decoder learns whether a sampled solution is correct (datasets: graded samples)
    objective: str = "sft"               # sft | verifier
    verifier_backbone: str = "frozen"    # frozen | lora (lora_rank > 0) | full: what trains besides the head
    # evaluation, logging, checkpoints
    log_interval: int = 50
    eval_interval: int = 500             # validation loss (and generation eval if eval_samples > 0)
    eval_samples: int = 100              # problems of the eval set to generate and grade at each eval (0 = off)
    eval_dataset: str = ""               # "" = held-out training problems (val_size), or a file; never a test split
    eval_max_new_tokens: int = 48
    eval_batch_size: int = 64
    save_interval: int = 500
    keep_last: int = 2                   # ckpt-*.pt files kept, 0 = all (best.pt is extra)
    overwrite: bool = False              # start a fresh run in an out_dir that holds one (its files are replaced)
    wandb_project: str = ""              # log to wandb when set and installed


# names users bring from nanoGPT / the HF Trainer, for the "did you mean" hint
ALIASES = {"learning_rate": "lr", "gradient_accumulation_steps": "grad_accum", "block_size": "seq_len",
           "max_seq_length": "seq_len", "num_train_epochs": "epochs", "max_steps": "max_iters", "output_dir": "out_dir",
           "per_device_train_batch_size": "batch_size", "warmup_steps": "warmup_iters", "max_grad_norm": "grad_clip"}


def config_help():
    """Every field with its default and its comment, read from the Config source above (train.py -h)."""
    lines = ["usage: python train.py [config.py ...] [--key=value ...]   (flags apply after the config files)", ""]
    for line in inspect.getsource(Config).splitlines()[2:]:
        m = re.match(r"\s+(\w+): \w+ = .*?(?:\s+#\s*(.*))?$", line)
        if m:
            lines.append(f"  --{m.group(1)}={getattr(Config, m.group(1))!r}".ljust(44) + (m.group(2) or ""))
        elif line.strip().startswith("#"):
            lines.append(line.strip())
    return "\n".join(lines)


def load_config(argv):
    """Config from defaults, then the experiment files given (their top-level names), then --key=value flags, in
    that order wherever the flags stand on the command line. Unknown keys are errors naming the closest valid
    key; values are checked against the default's type (check_config then checks their ranges)."""
    cfg = Config()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if "-h" in argv or "--help" in argv:
        print(config_help())
        raise SystemExit(0)

    def set_key(key, value, where, from_cli=False):
        if key not in fields:
            close = [ALIASES[key]] if key in ALIASES else difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            raise SystemExit(f"{where}: unknown config key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
        default = getattr(Config, key)
        if from_cli and not isinstance(default, str):
            try:
                value = {"true": True, "false": False}[value.lower()] if isinstance(default, bool) else type(default)(value)
            except (KeyError, ValueError):
                raise SystemExit(f"{where}: {key}={value!r} is not a valid {type(default).__name__}") from None
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise SystemExit(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
        setattr(cfg, key, value)

    for arg in [a for a in argv if not a.startswith("-")]:  # config files first ...
        ns = {"__file__": os.path.abspath(arg)}  # so a config can build on another (configs/*_lora.py)
        try:
            with open(arg, encoding="utf-8") as f:
                src = f.read()
            exec(compile(src, arg, "exec"), ns)
        except (FileNotFoundError, IsADirectoryError):
            raise SystemExit(f"config file not found: {arg}") from None
        except UnicodeDecodeError as e:
            raise SystemExit(f"{arg}: not UTF-8 text (byte {e.start})") from None
        except SyntaxError as e:
            raise SystemExit(f"{arg}:{e.lineno}: {e.msg}") from None
        except Exception as e:  # the user's file raised: say where, without our traceback
            line = next((fr.lineno for fr in reversed(traceback.extract_tb(e.__traceback__)) if fr.filename == arg), "?")
            raise SystemExit(f"{arg}:{line}: {type(e).__name__}: {e}") from None
        for key, value in ns.items():
            if not key.startswith("_") and not callable(value) and not hasattr(value, "__file__"):
                set_key(key, value, arg)
    for arg in [a for a in argv if a.startswith("-")]:  # ... then the flags, whatever their position
        key, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or not eq or not key:
            raise SystemExit(f"command line: '{arg}' must be --key=value (python train.py -h lists the keys)")
        set_key(key, value, "command line", from_cli=True)
    return cfg


def check_config(cfg):
    """Every value in range and consistent, before anything is loaded or written; SystemExit naming the keys."""
    bad = []

    def need(ok, key, what):
        if not ok:
            bad.append(f"{key}={getattr(cfg, key)!r}: {what}")
    num = (int, float)
    finite = lambda v: isinstance(v, num) and math.isfinite(v)  # noqa: E731
    need(cfg.out_dir.strip() != "", "out_dir", "must name a folder")
    need(cfg.init_from.strip() != "", "init_from", "must be 'scratch' or a checkpoint")
    if cfg.init_from == "scratch":
        need(cfg.model_preset in PRESETS, "model_preset", f"must be one of {sorted(PRESETS)}")
        for k in ("n_layer", "n_embd", "n_head"):
            need(getattr(cfg, k) >= 0, k, "must be >= 0 (0 = the preset's value)")
        if cfg.n_embd > 0 and cfg.n_head > 0:
            need(cfg.n_embd % (2 * cfg.n_head) == 0, "n_embd", f"must be a multiple of 2 * n_head = {2 * cfg.n_head}")
    need(cfg.resume in ("", "auto") or os.path.isfile(cfg.resume), "resume",
         "must be '', 'auto' or an existing ckpt-*.pt file")
    try:
        mixture = data.parse_mixture(cfg.datasets)
        need(sum(w for _, w in mixture) > 0, "datasets", "needs a dataset with a weight > 0")
    except ValueError as e:
        bad.append(str(e))
        mixture = []
    need(cfg.prompt_format in ("chat", "plain"), "prompt_format", "must be 'chat' or 'plain'")
    need(cfg.seq_len >= 2, "seq_len", "must be >= 2 (a prompt token and an answer token)")
    for k in ("max_samples", "val_size", "max_iters", "warmup_iters", "keep_last", "eval_samples"):
        need(getattr(cfg, k) >= 0, k, "must be >= 0")
    for k in ("batch_size", "grad_accum", "max_bad_steps", "log_interval", "eval_interval", "save_interval",
              "eval_max_new_tokens", "eval_batch_size"):
        need(getattr(cfg, k) >= 1, k, "must be >= 1")
    need(cfg.max_iters > 0 or (finite(cfg.epochs) and cfg.epochs > 0), "epochs", "must be > 0 when max_iters = 0")
    need(finite(cfg.max_time) and cfg.max_time >= 0, "max_time", "must be >= 0 seconds (0 = no limit)")
    need(finite(cfg.lr) and cfg.lr > 0, "lr", "must be > 0")
    need(finite(cfg.min_lr_ratio) and 0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    need(cfg.schedule in ("cosine", "linear", "constant"), "schedule", "must be cosine, linear or constant")
    need(finite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    for k in ("beta1", "beta2"):
        need(finite(getattr(cfg, k)) and 0 <= getattr(cfg, k) < 1, k, "must be in [0, 1)")
    need(finite(cfg.grad_clip) and cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
    need(cfg.grad_checkpointing >= -1, "grad_checkpointing", "must be -1 (all blocks), 0 (none) or a number of blocks")
    need(finite(cfg.activation_budget) and 0 < cfg.activation_budget <= 1, "activation_budget", "must be in (0, 1]")
    need(cfg.lora_rank >= 0, "lora_rank", "must be >= 0 (0 = full fine-tuning)")
    need(cfg.objective in ("sft", "verifier"), "objective", "must be sft or verifier")
    if cfg.objective == "verifier":
        need(cfg.init_from != "scratch", "objective", "a verifier is a head on a pretrained model: set init_from")
        need(cfg.verifier_backbone in ("frozen", "lora", "full"), "verifier_backbone", "must be frozen, lora or full")
        need((cfg.verifier_backbone == "lora") == (cfg.lora_rank > 0), "verifier_backbone",
             "lora goes with lora_rank > 0, frozen and full with lora_rank = 0")
        need(cfg.eval_samples == 0, "eval_samples", "must be 0 for a verifier (it is judged by AUROC on held-out "
             "samples, not by generating)")
        need(not cfg.fsdp, "fsdp", "a verifier trains with DDP or on one GPU (not FSDP yet)")
    if cfg.lora_rank:
        need(cfg.init_from != "scratch", "lora_rank", "LoRA adapts a pretrained model: set init_from")
        need(finite(cfg.lora_alpha) and cfg.lora_alpha > 0, "lora_alpha", "must be > 0")
        need(finite(cfg.lora_dropout) and 0 <= cfg.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        targets = cfg.lora_targets.split(",")
        need(targets and set(targets) <= set(LORA_TARGETS), "lora_targets",
             f"must be a comma-separated subset of {','.join(LORA_TARGETS)}")
        need(not cfg.fsdp, "fsdp", "LoRA with FSDP is not supported yet (LoRA runs use DDP)")
    if cfg.eval_dataset:
        if os.path.exists(cfg.eval_dataset) and any(os.path.exists(n) and os.path.samefile(n, cfg.eval_dataset)
                                                    for n, _ in mixture):
            bad.append(f"eval_dataset={cfg.eval_dataset!r} is also a training dataset: eval would grade the data "
                       f"the model trains on")
        elif cfg.eval_dataset in ("gsm8k", "math", "math500") or re.fullmatch(r"arith\d?", cfg.eval_dataset):
            bad.append(f"eval_dataset={cfg.eval_dataset!r}: a named dataset would be judged on its test split, and "
                       f"the eval during training picks best.pt; leave eval_dataset empty for problems held out from "
                       f"the training data (val_size), or give a file of your own")
        elif not os.path.exists(cfg.eval_dataset):
            bad.append(f"eval_dataset={cfg.eval_dataset!r}: no such file or folder")
    elif cfg.eval_samples:
        need(cfg.val_size > 0, "val_size", "must be > 0 for eval_samples > 0 (the held-out problems it grades), "
             "or set eval_dataset to a file")
    if bad:
        raise SystemExit("config: " + "; ".join(bad))


# -----------------------------------------------------------------------------

def lr_at(step, cfg, total_steps):
    """Linear warmup to cfg.lr over warmup_iters, then cosine / linear decay to lr*min_lr_ratio, or constant."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_iters) / max(1, total_steps - cfg.warmup_iters))
    decay = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)

# -----------------------------------------------------------------------------

# the data order and the model are functions of these (and of the global batch, checked on its own: the same
# global batch on a different number of GPUs resumes the same run)
RESUME_KEYS = ("init_from", "model_preset", "n_layer", "n_embd", "n_head", "tokenizer", "datasets", "prompt_format",
               "system_prompt", "seq_len", "pack", "max_samples", "val_size", "seed", "lora_rank", "lora_alpha",
               "lora_targets", "objective", "verifier_backbone")


class TrainingError(RuntimeError):
    pass


def build_model(cfg, device, dtype="float32"):
    """-> (model, tok, base): the model to train (from scratch, or any checkpoint; with lora_rank, adapters on the
    frozen base, kept in the compute dtype `dtype`), its tokenizer, and the base checkpoint's path (for LoRA
    checkpoints, which hold the adapters only)."""
    base = None
    if cfg.init_from == "scratch":
        tok = load_tokenizer(cfg.tokenizer)
        if cfg.model_preset not in PRESETS:
            raise SystemExit(f"model_preset '{cfg.model_preset}' is not one of {sorted(PRESETS)}")
        mc = dataclasses.asdict(PRESETS[cfg.model_preset])
        mc.update(vocab_size=-(-tok.n_vocab // 64) * 64, max_seq_len=cfg.seq_len)  # vocab padded to a multiple of 64
        if cfg.n_layer or cfg.n_embd or cfg.n_head:  # overrides: plain multi-head attention, SwiGLU width ~8/3 C
            mc.update({k: getattr(cfg, k) for k in ("n_layer", "n_embd", "n_head") if getattr(cfg, k)})
            mc.update(n_kv_head=mc["n_head"], head_dim=0, intermediate_size=-(-8 * mc["n_embd"] // 3 // 32) * 32)
        mc = ModelConfig(**mc)
        torch.manual_seed(cfg.seed)
        model = Transformer(mc).to(device)
    else:
        model, tok, info = load_model(cfg.init_from, device=device, dtype=torch.float32)  # fp32 master weights
        base = os.path.abspath(info["path"])
    if tok.n_vocab > model.config.vocab_size:
        raise SystemExit(f"tokenizer has {tok.n_vocab} tokens but the model only {model.config.vocab_size}")
    frozen = cfg.objective == "verifier" and cfg.verifier_backbone == "frozen"
    if cfg.lora_rank or frozen:
        model.to(getattr(torch, dtype))  # the frozen base needs no fp32 master copy
    torch.manual_seed(cfg.seed)
    if cfg.lora_rank:
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets.split(","))
    if frozen:
        model.requires_grad_(False)
    if cfg.objective == "verifier":
        model.add_value_head()
    return model, tok, base


def make_optimizer(model, cfg):
    """AdamW with decay on matrices only (not norms, biases), fused: one kernel for all parameters, and the only
    form that can skip a non-finite step on the device (apply_update). -> (optimizer, trained params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True), params


def evaluate_loss(model, ds, ctx, device, batch_size):
    """Mean cross-entropy per supervised token over every row of a dataset's first epoch. The last batch is padded
    with empty rows to batch_size, so a compiled model sees one shape here (no recompile for a short batch)."""
    model.eval()
    total, count = 0.0, 0
    n = ds.rows_per_epoch(0)
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="val loss", unit="batch", leave=False, disable=n <= 4 * batch_size):
            b = ds.batch(start, min(batch_size, n - start), pad_to=batch_size)
            with ctx:
                loss = model(b["idx"].to(device), b["targets"].to(device), pos=b["pos"].to(device),
                             value_targets=b["value_targets"].to(device) if "value_targets" in b else None,
                             doc=b["doc"].to(device), reduction="sum", loss_index=b["loss_index"].to(device))
            total += loss.item()
            count += len(b["loss_index"])
    model.train()
    return total / max(1, count)


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


def forward_backward(model, micro, ctx, scaler, device, world=1, n_sup=None):
    """Accumulate the gradients of one optimizer step over its micro-batches. The loss is the sum over answer
    tokens divided by the answer tokens of the WHOLE accumulated batch (not a mean of per-micro-batch means, which
    over-weights short answers), so N micro-batches of 1 row give exactly the gradient of one batch of N rows.
    Across `world` DDP ranks the same holds for the global batch: n_sup is then the answer-token count of the
    global batch (Dataset.supervised_tokens, counted on the CPU: no collective), and DDP's mean of the ranks'
    gradients is undone by scaling by world. There is no host sync: the answer positions were found on the CPU
    when the batch was built.
    Returns (loss of the global batch as a 0-dim tensor, number of supervised tokens in it)."""
    if n_sup is None:
        if world > 1:
            raise ValueError("with several processes, pass n_sup: the global batch's supervised tokens")
        n_sup = sum(len(b["loss_index"]) for b in micro)
    loss_acc = torch.zeros((), device=device)
    pin = str(device).startswith("cuda")
    for i, b in enumerate(micro):
        # from pinned memory the copy is queued behind the previous step's kernels; from pageable memory the host
        # would wait for them (measured: 23 ms of a 136 ms step on an H200, then the GPU idled while the host
        # built the next step's mask and launched its first kernels)
        to = lambda k: (b[k].pin_memory() if pin else b[k]).to(device, non_blocking=True)  # noqa: E731
        # DDP / FSDP reduce gradients across ranks in the last micro-batch's backward only
        with _accumulating(model) if world > 1 and i < len(micro) - 1 else nullcontext():
            with ctx:
                loss = model(to("idx"), to("targets"), pos=to("pos"), doc=to("doc"), reduction="sum",
                             loss_index=to("loss_index"),
                             value_targets=to("value_targets") if "value_targets" in b else None) * (world / max(1, n_sup))
            (scaler.scale(loss) if scaler else loss).backward()
        loss_acc += loss.detach() / world
    if world > 1:
        dist.all_reduce(loss_acc)
    return loss_acc, n_sup


def apply_update(opt, params, loss, grad_clip, scaler=None):
    """Clip the gradients and take the optimizer step, without waiting for the GPU. The non-finite guard decides on
    the device: fused AdamW skips the whole update (weights, moments and step count) where found_inf is 1, the
    mechanism the fp16 GradScaler uses, which decides by itself. The gradients are cleared.
    -> (2,) fp32 tensor on the device: [loss, gradient norm], for the host to read when it is ready."""
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
    opt.zero_grad(set_to_none=True)
    return torch.stack([loss.float(), gnorm.float()])


def train(cfg):
    """Runs the whole training job described by cfg; returns a summary dict. A bad setting or input is a
    SystemExit / ValueError / FileNotFoundError naming it, raised before anything is written to out_dir; a run
    that cannot continue (too many non-finite steps) raises TrainingError."""
    t_start = time.time()
    check_config(cfg)
    # several processes under torchrun (DDP or FSDP2): one GPU (or CPU process, gloo) each; rank 0 writes and logs
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    started_dist = world > 1 and not dist.is_initialized()
    if started_dist:
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    barrier = dist.barrier if world > 1 else (lambda: None)
    try:
        device, ctx, scaler, dtype = setup_numerics(f"cuda:{local}" if world > 1 and use_cuda else cfg.device,
                                                    cfg.dtype)
    except ValueError as e:
        raise SystemExit(f"config: {e}")
    say(f"device {device}{f' x {world} processes (' + ('FSDP2' if cfg.fsdp else 'DDP') + ')' if world > 1 else ''}, "
        f"compute dtype {dtype}"
        f"{', GradScaler' if scaler else ''}")
    say("config:", json.dumps(dataclasses.asdict(cfg), indent=1))

    # resume: the data order and the model are functions of these fields, so they must match the checkpoint's
    # (run length, intervals, eval settings and the output folder may change)
    ckpt = None
    if cfg.resume:
        path = cfg.resume
        if path == "auto":
            found = list_checkpoints(cfg.out_dir)
            path = found[-1] if found else ""
            say(f"resume=auto: {'found ' + path if path else f'no ckpt-*.pt in {cfg.out_dir}/, starting a fresh run'}")
        if path:
            ckpt = load_checkpoint(path)
            if "optimizer" not in ckpt:
                raise SystemExit(f"{path} holds weights only (best.pt); resume from a ckpt-*.pt file")
            diff = [f"{k}: checkpoint {ckpt['config'].get(k)!r}, now {getattr(cfg, k)!r}" for k in RESUME_KEYS
                    if ckpt["config"].get(k) != getattr(cfg, k)]
            was = ckpt["config"]["batch_size"] * ckpt["config"]["grad_accum"] * ckpt.get("world_size", 1)
            if was != cfg.batch_size * cfg.grad_accum * world:
                diff.append(f"global batch (batch_size x grad_accum x processes): checkpoint {was} rows, now "
                            f"{cfg.batch_size} x {cfg.grad_accum} x {world}")
            if diff:
                raise SystemExit(f"cannot resume from {path}: these settings differ from the run that wrote it, and "
                                 f"the data order or the model depends on them: " + "; ".join(diff))
            say(f"resuming from {path} at step {ckpt['step']}")
    if ckpt is None and not cfg.overwrite and (list_checkpoints(cfg.out_dir) or
                                               os.path.exists(os.path.join(cfg.out_dir, "best.pt"))):
        raise SystemExit(f"out_dir={cfg.out_dir!r} already holds a run (ckpt-*.pt / best.pt): continue it with "
                         f"--resume=auto, replace it with --overwrite=true, or choose another out_dir")

    model, tok, base = build_model(cfg, device, dtype)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    partial = len(trained) < len(list(model.parameters()))  # LoRA or a frozen verifier backbone
    if ckpt:
        bad = model.load_state_dict(ckpt["model"], strict=not partial)
        if partial and (bad.unexpected_keys or trained & set(bad.missing_keys)):
            raise SystemExit(f"{cfg.resume}: its trained parameters do not fit this model ({bad})")
    model.grad_checkpointing = cfg.grad_checkpointing
    n_train = sum(p.numel() for n, p in model.named_parameters() if n in trained)
    say(f"model: {model.num_params() / 1e6:.1f}M parameters ({n_train / 1e6:.2f}M trained), {model.config}")

    train_ds, val_ds = data.build_datasets(cfg.datasets, tok, cfg.seq_len, cfg.prompt_format, cfg.pack, cfg.seed,
                                           cfg.max_samples, cfg.val_size, cfg.system_prompt,
                                           value=cfg.objective == "verifier")
    st = train_ds.stats()
    say(f"train data: {st['examples']} examples -> {st['rows_per_epoch']} rows of {cfg.seq_len} tokens per epoch "
        f"({st['fill']:.1%} filled); {st['truncated']} examples truncated to seq_len "
        f"({st['supervised_tokens_cut']} supervised tokens cut, {st['examples_without_answer_tokens']} examples "
        f"left with no answer token)")
    rows_per_step = cfg.batch_size * cfg.grad_accum * world  # the global batch
    total_steps = cfg.max_iters or train_ds.total_rows(cfg.epochs) // rows_per_step
    if total_steps <= 0:
        raise SystemExit(f"config: epochs={cfg.epochs} gives {train_ds.total_rows(cfg.epochs)} rows, less than one "
                         f"step of batch_size * grad_accum * processes = {rows_per_step} rows; raise epochs or set "
                         f"max_iters")
    # the eval during training grades problems held out of the training data (never a test split): best.pt is
    # chosen by it
    eval_problems = None
    if cfg.eval_samples:
        pool = data.load_dataset(cfg.eval_dataset) if cfg.eval_dataset else (val_ds.examples if val_ds else [])
        problems = {}  # each problem once (a held-out problem can have several rows)
        for p in pool:
            if p.get("answer") is not None:
                problems.setdefault(p["prompt"], p)
        eval_problems = list(problems.values())[:cfg.eval_samples]
        if not eval_problems:
            raise SystemExit(f"config: eval_samples={cfg.eval_samples}, but the "
                             f"{'eval_dataset' if cfg.eval_dataset else 'held-out examples'} have no gold answers to "
                             f"grade; set eval_samples=0 (validation loss only)")

    # everything is checked: now the output folder is written (by rank 0)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        n_tmp = remove_orphan_tmp(cfg.out_dir)
        if n_tmp:
            say(f"removed {n_tmp} temporary file(s) left in {cfg.out_dir} by an interrupted save")
        save_tokenizer(tok, os.path.join(cfg.out_dir, "tokenizer"))
        write_text(os.path.join(cfg.out_dir, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1))
        if os.path.exists(metrics_path):
            # one row per step: a resumed run logs the steps after its checkpoint again, so the rows a crashed run
            # wrote past it go; a fresh run (overwrite) starts the file anew
            rows = [r for r in data.read_jsonl(metrics_path) if ckpt and r.get("step", 0) <= ckpt["step"]]
            write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    barrier()

    raw_model = model  # one module: compiled blocks, DDP and FSDP share its parameters; plain checkpoint names
    fsdp = cfg.fsdp and world > 1
    if fsdp:
        # FSDP2: each block, then the rest, sharded across the ranks; gathered in the compute dtype for each
        # block's forward and backward, gradients reduced in fp32. The blocks stay eager (not compiled).
        mp = MixedPrecisionPolicy(param_dtype=None if dtype == "float32" else getattr(torch, dtype),
                                  reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    elif cfg.compile and device.startswith("cuda"):
        model.compile_blocks(activation_budget=cfg.activation_budget)
    opt, params = make_optimizer(model, cfg)
    full_sd = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU

    step, best = 0, None
    if ckpt:
        if ckpt.get("optimizer_format") == "fqn":  # keyed by parameter name: loads under any sharding
            set_optimizer_state_dict(raw_model, opt, ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(ckpt["optimizer"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, best = ckpt["step"], ckpt.get("best")
        set_rng_state(ckpt["rng"])
        del ckpt
    if world > 1 and not fsdp:
        # gradients as views into DDP's all-reduce buckets: one copy of them in memory, not two
        model = DDP(model, device_ids=[local] if use_cuda else None, gradient_as_bucket_view=True)

    def model_state():
        # the full state dict: under FSDP gathered from the shards (a collective: every rank calls this)
        return get_model_state_dict(raw_model, options=full_sd) if fsdp else raw_model.state_dict()

    def checkpoint(name, full=True):
        # every rank calls it (FSDP gathers); rank 0 writes. A run that trains part of the model (LoRA adapters,
        # a verifier's head) stores only that part (small) and the base it belongs to. The optimizer state is keyed
        # by parameter name, so any sharding can resume it.
        sd = model_state()
        osd = get_optimizer_state_dict(raw_model, opt, options=full_sd) if full else None
        if master:
            state = {"model": {k: v for k, v in sd.items() if k in trained} if partial else sd,
                     "model_config": dataclasses.asdict(raw_model.config), "config": dataclasses.asdict(cfg),
                     "step": step, "best": best, "tokenizer_dir": "tokenizer", "world_size": world,
                     "value_head": raw_model.value_head is not None}
            if partial:
                state["base"] = base
            if cfg.lora_rank:
                state["lora"] = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                                 "targets": cfg.lora_targets}
            if full:
                state.update(optimizer=osd, optimizer_format="fqn", scaler=scaler.state_dict() if scaler else None,
                             rng=rng_state())
            save_checkpoint(state, os.path.join(cfg.out_dir, name))
            if name.startswith("ckpt-") and cfg.keep_last > 0:  # keep_last = 0 keeps them all
                for old in list_checkpoints(cfg.out_dir)[:-cfg.keep_last]:
                    os.remove(old)
        barrier()

    def log(rec):
        if not master:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if wandb_run:
            wandb_run.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=rec.get("step"))

    wandb_run = None
    if cfg.wandb_project and master:
        try:
            import wandb
            wandb_run = wandb.init(project=cfg.wandb_project, config=dataclasses.asdict(cfg))
        except ImportError:
            say("wandb_project is set but wandb is not installed: logging to metrics.jsonl only")

    def run_eval():
        # every rank computes the validation loss (under FSDP each forward gathers from all ranks); rank 0 alone
        # generates and grades: on the model itself, or under FSDP on a whole copy gathered for it
        nonlocal best
        rec = {"step": step}
        if val_ds:
            rec["val_loss"] = evaluate_loss(raw_model, val_ds, ctx, device, cfg.batch_size)
        if cfg.objective == "verifier" and val_ds and master:
            scores = score_examples(raw_model, val_ds.examples, ctx, cfg.batch_size)
            m = verifier_metrics(scores, [ex["label"] for ex in val_ds.examples])
            rec.update({f"verifier_{k}": v for k, v in m.items()})
        gen_model = raw_model
        if eval_problems and fsdp:
            sd = model_state()
            if master:
                with torch.device("meta"):
                    gen_model = Transformer(raw_model.config)
                gen_model.load_state_dict(sd, assign=True)
                gen_model.to(device)
        if eval_problems and master:
            summary, records = evaluate(gen_model, tok, eval_problems, cfg.prompt_format, cfg.system_prompt,
                                        max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                                        ctx=ctx, seed=cfg.seed, entropy=True)
            rec.update({f"eval_{k}": v for k, v in summary.items()})
            with open(os.path.join(cfg.out_dir, "samples.jsonl"), "a") as f:
                for r in records[:5]:
                    f.write(json.dumps({"step": step, **r}) + "\n")
            say(sample_table(records, n=3))
        say(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
        log(rec)
        # best.pt follows answer accuracy when generation eval is on, a verifier's held-out AUROC, else validation
        # loss (rank 0 decides)
        metric = rec.get("eval_accuracy", rec.get("verifier_auroc", -rec["val_loss"] if "val_loss" in rec else None))
        metric = None if metric is not None and math.isnan(metric) else metric
        improved = [metric is not None and (best is None or metric > best)]
        if world > 1:
            dist.broadcast_object_list(improved)
        if improved[0]:
            best = metric if master else best
            checkpoint("best.pt", full=False)
        return rec

    # -------------------------------------------------------------------------
    # the loop. Data position = rows consumed = step * rows_per_step, so resume needs only the step.
    say(f"training for {total_steps} steps of {rows_per_step} rows ({cfg.batch_size} x {cfg.grad_accum} accumulation"
        f"{f' x {world} processes' if world > 1 else ''})")
    model.train()
    bad_in_a_row, t_log, tokens_since = 0, time.time(), 0
    last = {"loss": float("nan"), "lr": 0.0, "grad_norm": float("nan")}  # until the first applied update
    flops_per_token = raw_model.flops_per_token(cfg.seq_len)
    peak_flops = gpu_peak_flops(device, dtype)  # MFU is printed only where the peak is known
    stop_reason = "max_iters" if cfg.max_iters else "epochs"
    # A step's loss and gradient norm reach the host a step late: copied into pinned memory behind an event, read
    # once the next step is queued. So the CPU never waits for the GPU inside the loop (a wait per step left the GPU
    # idle while the next batch and its first kernels were prepared: 17% of the step time at the 0.5B shape). The
    # guard against a non-finite step acts on the GPU (apply_update); settle() reports it when the values arrive.
    cuda = device.startswith("cuda")
    host = torch.empty(2, pin_memory=cuda)
    pending = None  # (step, lr, n_sup, example ids, event) of the step whose values are on their way to `host`

    def settle():
        nonlocal pending, bad_in_a_row, last
        if pending is None:
            return
        s, lr, n_sup, ids, event = pending
        pending = None
        if event is not None:
            event.synchronize()
        loss_v, gnorm_v = host.tolist()
        # (with fp16 an inf gradient is the GradScaler's business: it skips the step and lowers the scale itself)
        if not math.isfinite(loss_v) or (not math.isfinite(gnorm_v) and not scaler):
            bad_in_a_row += 1
            say(f"step {s}: non-finite loss {loss_v} / grad norm {gnorm_v}: update skipped ({bad_in_a_row} in a "
                f"row); examples in this batch: {ids}")
            log({"step": s, "event": "skipped_nonfinite", "loss": loss_v, "grad_norm": gnorm_v, "example_ids": ids})
            if bad_in_a_row >= cfg.max_bad_steps:
                raise TrainingError(f"{bad_in_a_row} non-finite steps in a row (last at step {s}); stopping "
                                    f"without applying any of them. See metrics.jsonl for the example ids; try a "
                                    f"lower lr, dtype=float32 to rule out precision, or check those examples.")
        else:
            bad_in_a_row = 0
            last = {"step": s, "loss": loss_v, "lr": lr, "grad_norm": gnorm_v, "n_sup": n_sup}

    try:
        while step < total_steps:
            out_of_time = bool(cfg.max_time) and time.time() - t_start > cfg.max_time
            if cfg.max_time and world > 1:
                # the ranks' clocks differ: stop when any of them is out of time. They agree at log steps only,
                # where the loop waits for the GPU anyway: reading a collective every step would stall the queue
                if step % cfg.log_interval == 0:
                    flag = torch.tensor([float(out_of_time)], device=device)
                    dist.all_reduce(flag)
                    out_of_time = flag.item() > 0
                else:
                    out_of_time = False
            if out_of_time:
                stop_reason = "max_time"
                break
            lr = lr_at(step, cfg, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            # rank r's m-th micro-batch: rows (step * grad_accum + m) * world + r of the global order, so the ranks
            # together see each row once and a step covers the rows one process would with a world-times batch
            micro = [train_ds.batch(((step * cfg.grad_accum + m) * world + rank) * cfg.batch_size, cfg.batch_size)
                     for m in range(cfg.grad_accum)]
            n_sup = train_ds.supervised_tokens(step * rows_per_step, rows_per_step)  # of all ranks' rows
            loss_acc, _ = forward_backward(model, micro, ctx, scaler, device, world, n_sup)
            values = apply_update(opt, params, loss_acc, cfg.grad_clip, scaler)
            step += 1  # steps are counted from 1 in logs and checkpoint names: ckpt-000010.pt has taken 10 steps
            settle()  # the previous step's values: ready by now, ahead of this step's work on the GPU
            host.copy_(values, non_blocking=cuda)
            event = torch.cuda.Event() if cuda else None
            if event is not None:
                event.record()
            pending = (step, lr, n_sup, [i for b in micro for row in b["example_ids"] for i in row], event)
            tokens_since += train_ds.real_tokens((step - 1) * rows_per_step, rows_per_step)  # not padding (nor MFU)

            if step % cfg.log_interval == 0 or step == total_steps:
                settle()  # waits for this step: the time below covers all the work queued so far
                dt = time.time() - t_log
                tps = tokens_since / dt
                eta = (total_steps - step) * dt / max(1, min(cfg.log_interval, step))
                rec = {**last, "step": step, "tok_per_s": tps, "elapsed": time.time() - t_start}
                line = (f"step {step}/{total_steps} | loss {last['loss']:.4f} | lr {last['lr']:.2e} | gnorm {last['grad_norm']:.2f} "
                        f"| {tps / 1e3:.1f}k tok/s")
                if peak_flops:
                    rec["mfu"] = flops_per_token * tps / (peak_flops * world)  # per GPU
                    rec["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    line += f" | mfu {rec['mfu']:.1%} | mem {rec['mem_gib']:.1f}GiB"
                say(line + f" | eta {int(eta // 60)}m{int(eta % 60):02d}s")
                log(rec)
                t_log, tokens_since = time.time(), 0
            if step % cfg.eval_interval == 0 or step == total_steps:
                settle()
                run_eval()
            if step % cfg.save_interval == 0 and step != total_steps:
                settle()
                checkpoint(f"ckpt-{step:06d}.pt")
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        say("interrupted: saving a checkpoint before exiting")
    settle()
    if step == 0 or not os.path.exists(os.path.join(cfg.out_dir, f"ckpt-{step:06d}.pt")):
        checkpoint(f"ckpt-{step:06d}.pt")
    summary = {"step": step, "stop_reason": stop_reason, "best": best, "time": time.time() - t_start, **last}
    say(f"done: {stop_reason} at step {step} after {summary['time']:.0f}s; checkpoints in {cfg.out_dir}")
    if wandb_run:
        wandb_run.finish()
    if started_dist:
        dist.destroy_process_group()
    return summary


def main(argv=None):
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    try:
        summary = train(cfg)
    except TrainingError as e:
        raise SystemExit(f"training stopped: {e}")
    except (ValueError, OSError) as e:  # bad input (a dataset, a checkpoint, a file): one line, no traceback
        raise SystemExit(f"error: {e}")
    if summary["stop_reason"] == "interrupted":
        raise SystemExit(130)  # Ctrl-C, after the checkpoint is saved


if __name__ == "__main__":
    main()
