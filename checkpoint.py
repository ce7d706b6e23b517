"""
Everything nanomath keeps on disk, read and written in one place: atomic writes, our own safetensors reader
and writer, Hugging Face checkpoint folders (config.json mapping, sharded weights, tokenizer files) in and
out, training checkpoints (ckpt-*.pt, best.pt), and one loader for every kind of checkpoint a user holds:

    model, tok, info = load_model(path_or_hub_id)   # HF folder, cached hub id, best.pt, ckpt-*.pt, or their folder
    save_pretrained(model, "out/hf"); export_hf(model, tok, "out/hf")   # folders transformers can load
    save_checkpoint(state, "out/ckpt-000100.pt"); state = load_checkpoint(path)

Nothing here downloads: a hub id is looked up in the local Hugging Face cache only.
"""
import functools
import glob
import json
import math
import mmap
import os
import pathlib
import random
import re
import shutil
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

import data
from lora import apply_lora, merge_lora
from model import ModelConfig, Transformer
from tokenizer import load_tokenizer

# -----------------------------------------------------------------------------
# atomic writes: every file below goes through here

def atomic_write(path, write_fn):
    """write_fn(file) into a temp file next to path, fsync, then rename over path: readers (and a
    crash) never see half a file, and an interrupted write leaves the previous file intact.
    train.py and sample.py use it too."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise



def check_output_folder(folder):
    """None if `folder` is a folder this process can write in, or one it can create (its nearest existing parent
    is a writable folder); else why not, in a few words. Tried for real, with a temporary file (or folder) that
    is removed at once: access() says yes to root for /proc and for read-only file systems."""
    folder = os.path.abspath(folder)
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            return "is a file, not a folder"
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
            return None
        except OSError as e:
            return f"is a folder this process cannot write in ({e.strerror})"
    parent = os.path.dirname(folder)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be made: {parent} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".write-test."))
        return None
    except OSError as e:
        return f"cannot be made: {parent} refuses new folders ({e.strerror})"


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# -----------------------------------------------------------------------------
# safetensors reader / writer (our own; the format is an 8-byte LE header length, a JSON header, raw bytes)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def read_safetensors(path) -> dict:
    """name -> CPU tensor, memory-mapped from the file (private copy-on-write mapping: nothing is read until
    touched, pages are shared with the OS page cache, and writing to a tensor never writes to the file)."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise ValueError(f"{path}: truncated or corrupt safetensors file ({size} bytes, no header)")
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise ValueError(f"{path}: truncated or corrupt safetensors file: header length {n} is beyond the "
                             f"file size {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header (not JSON: {e})") from None
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else b""
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path}: corrupt safetensors header: __metadata__ must map strings to strings")
    data_start, data_size = 8 + n, size - 8 - n
    # the checks the reference implementation makes: every entry well formed, each tensor's
    # bytes exactly its shape times its dtype size, and the tensors tiling the data section in
    # order with no gap, overlap or tail
    entries = []
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
              and all(type(d) is int and d >= 0 for d in info["shape"]) and isinstance(info.get("data_offsets"), list)
              and len(info["data_offsets"]) == 2 and all(type(o) is int and o >= 0 for o in info["data_offsets"]))
        if not ok:
            raise ValueError(f"{path}: corrupt safetensors header entry for {name!r}: {json.dumps(info)[:200]} "
                             f"(expected dtype: string, shape: list of ints >= 0, data_offsets: [begin, end])")
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, not supported (only F32, F16, BF16)")
        entries.append((info["data_offsets"], name, info))
    expect = 0
    for (begin, end), name, info in sorted(entries, key=lambda e: e[0]):
        if begin != expect or end < begin:
            raise ValueError(f"{path}: corrupt: tensor {name!r} offsets [{begin}, {end}) do not follow the previous "
                             f"tensor's end {expect} (tensors must tile the data section without gaps or overlaps)")
        nbytes = math.prod(info["shape"]) * _ST_DTYPES[info["dtype"]].itemsize
        if end - begin != nbytes:
            raise ValueError(f"{path}: corrupt: tensor {name!r} {info['dtype']}{info['shape']} needs {nbytes} bytes, "
                             f"offsets give {end - begin}")
        expect = end
    if expect != data_size:
        what = "truncated" if expect > data_size else "corrupt"
        raise ValueError(f"{path}: {what}: the tensors cover {expect} bytes but the data section has {data_size}")
    out = {}
    for (begin, end), name, info in entries:
        dtype, shape = _ST_DTYPES[info["dtype"]], info["shape"]
        numel = math.prod(shape)
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(mm, dtype=dtype, count=numel, offset=data_start + begin).view(shape)
    return out


def write_safetensors(path, tensors: dict, metadata=None):
    """Write name -> tensor to path in safetensors format (atomically)."""
    header, offset = {}, 0
    for name, t in tensors.items():
        if t.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be saved (only float32, float16, bfloat16)")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad so the data section starts 8-byte aligned, as the spec recommends

    def write(f):
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for t in tensors.values():
            if t.numel():
                # raw bytes through a uint8 view: no copy beyond a contiguous CPU one; works for bf16 too
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    atomic_write(path, write)


# -----------------------------------------------------------------------------
# HF config.json <-> ModelConfig


def config_from_hf(cfg: dict) -> ModelConfig:
    """ModelConfig from a parsed HF config.json (qwen2 or llama). Understands both the transformers 4.x layout
    (top-level rope_theta, rope_scaling) and the 5.x layout (rope_parameters). Raises ValueError naming the
    key for anything this model cannot represent, rather than silently computing something else."""
    mt = cfg.get("model_type")
    if mt not in ("qwen2", "llama"):
        raise ValueError(f"config.json: model_type={mt!r} is not supported (expected 'qwen2' or 'llama')")
    for key in ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"):
        if key not in cfg:
            raise ValueError(f"config.json: missing required key {key!r}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act={cfg['hidden_act']!r} is not supported (only 'silu')")
    if cfg.get("use_sliding_window", False):
        raise ValueError("config.json: use_sliding_window=true is not supported (full attention only)")
    if cfg.get("mlp_bias", False):
        raise ValueError("config.json: mlp_bias=true is not supported")
    # rope: 5.x keeps theta and type in rope_parameters; 4.x has rope_theta at the top and rope_scaling
    rp = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = rp.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only plain rope)")
    theta = rp.get("rope_theta", cfg.get("rope_theta")) or 10000.0
    if mt == "qwen2":
        qkv_bias = True  # Qwen2 always has q/k/v biases (and no o_proj bias), whatever attention_bias says
    else:
        # Llama's attention_bias puts a bias on o_proj too, which this model does not have
        if cfg.get("attention_bias", False):
            raise ValueError("config.json: llama with attention_bias=true (o_proj bias) is not supported")
        qkv_bias = False
    for key in ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                "num_key_value_heads", "head_dim", "max_position_embeddings"):
        v = cfg.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"config.json: {key}={v!r} must be a whole number > 0")
    for key in ("rope_theta", "rms_norm_eps"):
        v = rp.get(key, cfg.get(key)) if key == "rope_theta" else cfg.get(key)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"config.json: {key}={v!r} must be a number > 0")
    n_head = cfg["num_attention_heads"]
    if cfg.get("num_key_value_heads") and n_head % cfg["num_key_value_heads"]:
        raise ValueError(f"config.json: num_attention_heads={n_head} is not a multiple of "
                         f"num_key_value_heads={cfg['num_key_value_heads']}")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    if not cfg.get("head_dim") and cfg["hidden_size"] % n_head:
        raise ValueError(f"config.json: hidden_size={cfg['hidden_size']} is not a multiple of "
                         f"num_attention_heads={n_head} (and no head_dim is given)")
    if head_dim % 2:
        raise ValueError(f"config.json: the head dimension {head_dim} is odd (rotary embedding pairs them)")
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads") or n_head,
        n_embd=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 32768),
        rope_theta=float(theta),
        rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6),
        qkv_bias=qkv_bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # qwen2 and llama both default to False
        head_dim=cfg.get("head_dim") or 0,
    )


def config_to_hf(cfg: ModelConfig, dtype=torch.float32) -> dict:
    """HF config.json dict: Qwen2 layout when qkv_bias, else Llama layout. rope_theta is written both at the
    top (transformers 4.x) and in rope_parameters (5.x) so either version reads it."""
    dtype_name = str(dtype).removeprefix("torch.")
    d = {
        "architectures": ["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"],
        "model_type": "qwen2" if cfg.qkv_bias else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": dtype_name,  # 4.x name
        "dtype": dtype_name,  # 5.x name
    }
    if cfg.qkv_bias:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    else:
        d.update(attention_bias=False, mlp_bias=False)
    return d


# -----------------------------------------------------------------------------
# Hugging Face checkpoint folders, in and out


def _hub_cache_dirs():
    """Where the HF hub cache may be, in the order huggingface_hub itself looks."""
    if os.environ.get("HF_HUB_CACHE"):
        return [pathlib.Path(os.environ["HF_HUB_CACHE"])]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # older name
        return [pathlib.Path(os.environ["HUGGINGFACE_HUB_CACHE"])]
    if os.environ.get("HF_HOME"):
        return [pathlib.Path(os.environ["HF_HOME"]) / "hub"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [pathlib.Path(xdg) / "huggingface" / "hub"]


def resolve_checkpoint_dir(path_or_hub_id) -> pathlib.Path:
    """A checkpoint folder as given, or a hub id ("Org/Name") found in the local HF cache at
    <cache>/models--Org--Name/snapshots/<rev>/ with <rev> read from refs/main (no network, ever)."""
    p = pathlib.Path(path_or_hub_id).expanduser()
    if p.is_dir():
        return p
    name = str(path_or_hub_id)
    looked = [str(p)]
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not name.endswith((".pt", ".bin", ".safetensors")):
        for cache in _hub_cache_dirs():
            repo = cache / ("models--" + name.replace("/", "--"))
            looked.append(str(repo))
            snaps = repo / "snapshots"
            if not snaps.is_dir():
                continue
            ref = repo / "refs" / "main"
            if ref.is_file():
                snap = snaps / ref.read_text().strip()
                if snap.is_dir():
                    return snap
                looked.append(str(snap) + " (named by refs/main)")
                continue
            cands = sorted((s for s in snaps.iterdir() if (s / "config.json").exists()), key=lambda s: s.stat().st_mtime)
            if cands:
                return cands[-1]  # no refs/main: the newest complete snapshot
    if len(looked) > 1:  # it has the form of a hub id (Org/Name) and is not in the local cache
        raise FileNotFoundError(f"checkpoint {name!r} not found; looked in: {', '.join(looked)}. Download it first, "
                                f"e.g. `huggingface-cli download {name}`, or pass the path of a checkpoint")
    raise FileNotFoundError(f"checkpoint {name!r} not found: no such file or folder")


def _load_weight_files(d: pathlib.Path) -> dict:
    """All tensors of a checkpoint folder (HF names), memory-mapped where the format allows."""
    if (d / "model.safetensors").exists():
        return read_safetensors(d / "model.safetensors")
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", _read_bin)):
        index_path = d / index_name
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index_path}: not a valid index file ({e!r})") from None
            sd = {}
            for shard in sorted(set(weight_map.values())):
                if not (d / shard).exists():
                    raise FileNotFoundError(f"{index_path} names shard {shard!r}, which is missing from {d}")
                tensors = reader(d / shard)
                sd.update({k: v for k, v in tensors.items() if weight_map.get(k) == shard})
            missing_in_shards = sorted(set(weight_map) - set(sd))
            if missing_in_shards:
                raise ValueError(f"{index_path} lists tensors not found in their shard: {missing_in_shards[:10]}")
            return sd
    if (d / "pytorch_model.bin").exists():
        return _read_bin(d / "pytorch_model.bin")
    raise FileNotFoundError(f"{d}: no weights found (model.safetensors, model.safetensors.index.json, "
                            f"pytorch_model.bin)")


def _read_bin(path):
    # weights_only: a .bin is a pickle, never run code from it; mmap: do not copy it into RAM
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # pre-1.6 (non-zip) files cannot mmap


def _hf_config(d: pathlib.Path) -> ModelConfig:
    """The ModelConfig of a Hugging Face checkpoint folder, from its config.json; errors name the file."""
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{d}: no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        hf_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from None
    if not isinstance(hf_cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(hf_cfg).__name__}")
    try:
        return config_from_hf(hf_cfg)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {str(e).removeprefix('config.json: ')}") from None


def from_pretrained(path_or_hub_id, device="cpu", dtype=torch.float32) -> Transformer:
    """Load an HF Qwen2/Llama checkpoint (folder or hub id in the local cache) into a Transformer with
    weights in `dtype` on `device`. The model is built on the meta device and the (memory-mapped)
    tensors are assigned, so weights are never allocated twice. model.config is the ModelConfig,
    model.source_dir the folder (str)."""
    d = resolve_checkpoint_dir(path_or_hub_id)
    config = _hf_config(d)
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del expected["lm_head.weight"]  # tied checkpoints store the matrix once, as the embedding
    sd = {}
    for name, t in _load_weight_files(d).items():
        name = name.removeprefix("model.")
        if config.tie_embeddings and name == "lm_head.weight":
            continue  # some tied checkpoints carry a copy anyway; the tie wins, as in transformers
        sd[name] = t
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{d}: checkpoint does not match config.json: missing tensors {missing}, "
                         f"unexpected tensors {unexpected}")
    bad = [f"{k}: expected {tuple(expected[k])}, found {tuple(t.shape)}" for k, t in sd.items() if t.shape != expected[k]]
    if bad:
        raise ValueError(f"{d}: shape mismatch: " + "; ".join(bad))
    # no-op (still mmap) if already so
    sd = {k: t.to(device=device, dtype=dtype or t.dtype) for k, t in sd.items()}
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)  # the post-load hook re-ties a tied head
    model.source_dir = str(d)
    return model


# files a checkpoint folder carries besides the weights, copied along by
# save_pretrained if the source has them
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
               "added_tokens.json", "chat_template.jinja", "generation_config.json")


def save_pretrained(model, out_dir, max_shard_bytes=2**31) -> None:
    """Write model to out_dir in HF layout: config.json + model.safetensors, or shards
    model-0000i-of-0000n.safetensors plus model.safetensors.index.json when the weights exceed
    max_shard_bytes. Tied weights are written once (no lm_head.weight), as transformers does. Every file is
    written atomically; weight files of another layout left from an earlier save are removed afterwards.
    Tokenizer files from model.source_dir are copied along."""
    model = getattr(model, "module", model)  # DistributedDataParallel wrapper
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper (its state_dict keys carry a prefix)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, t in model.state_dict().items():
        if (model.config.tie_embeddings and k == "lm_head.weight") or k.startswith("value_head."):
            continue  # a verifier's head has no place in the HF layout: it stays in our checkpoints
        tensors[k if k == "lm_head.weight" else "model." + k] = t
    dtype = next(iter(tensors.values())).dtype
    # shards: fill greedily in state_dict order
    shards, cur, cur_bytes = [], {}, 0
    for k, t in tensors.items():
        nb = t.numel() * t.element_size()
        if cur and cur_bytes + nb > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[k] = t
        cur_bytes += nb
    shards.append(cur)
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", tensors)
        written = {"model.safetensors"}
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {}
        for name, shard in zip(names, shards):
            write_safetensors(out / name, shard)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        # the index goes last: it is what makes the shards a checkpoint
        atomic_write(out / "model.safetensors.index.json", lambda f: f.write(json.dumps(index, indent=2).encode()))
        written = set(names) | {"model.safetensors.index.json"}
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        if stale.name not in written:
            stale.unlink()
    hf = config_to_hf(model.config, dtype)
    atomic_write(out / "config.json", lambda f: f.write((json.dumps(hf, indent=2) + "\n").encode()))
    src = getattr(model, "source_dir", None)
    if src and pathlib.Path(src).resolve() != out.resolve():
        for fn in _SIDE_FILES:
            if (pathlib.Path(src) / fn).is_file():
                atomic_write(out / fn, lambda f, fn=fn: f.write((pathlib.Path(src) / fn).read_bytes()))


def save_tokenizer(tok, out_dir, hf=False):
    """The tokenizer's own files (tokenizer.json / math_tokenizer.json and their side files), byte for byte;
    with hf=True also its Hugging Face form (for the math tokenizer, so AutoTokenizer loads the folder)."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, raw in {**(tok.hf_files() if hf else {}), **tok.files}.items():
        atomic_write(os.path.join(out_dir, fname), lambda f, raw=raw: f.write(raw))


def export_hf(model, tok, out_dir):
    """A Hugging Face checkpoint folder: config.json + safetensors (save_pretrained), the tokenizer files, and
    a generation_config.json naming our stop tokens if the source did not bring one. Written in a temporary
    folder beside out_dir and moved in file by file once all is written: a failure (a full disk) leaves out_dir
    as it was, never half an export that blocks the re-run."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=os.path.basename(out_dir) + ".", suffix=".tmp")
    try:
        save_pretrained(model, tmp)
        save_tokenizer(tok, tmp, hf=True)
        gen = os.path.join(tmp, "generation_config.json")
        if not os.path.isfile(gen):
            cfg = {"eos_token_id": sorted(tok.stop_ids), "pad_token_id": tok.pad_id, "do_sample": False}
            write_text(gen, json.dumps(cfg, indent=2) + "\n")
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    except OSError as e:
        raise OSError(e.errno, f"writing the export {out_dir} failed: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -----------------------------------------------------------------------------
# training checkpoints: one format, one resume path, owned here. A run writes ckpt-NNNNNN.pt (everything to
# continue it) and best.pt (weights only) as a dict:
#   model          state_dict; a run that trains part of the model (LoRA adapters, a verifier's head on a frozen
#                  backbone) stores only that part, plus "base": the checkpoint it was put on
#   model_config   ModelConfig as a dict       config       the run's config as a dict (train.Config, rl.Config)
#   step, best     steps taken, best eval metric so far      global_batch   rows (or rollouts) per optimizer step
#   world_size     processes that wrote it     tokenizer_dir  relative to the file's folder
#   lora           {"rank", "alpha", "dropout", "targets"} or absent       value_head   a verifier's head
#   optimizer      keyed by parameter name ("optimizer_format": "fqn"), so any sharding resumes it
#   scaler, rng    the fp16 GradScaler's state and every random generator (resume is bit for bit)
#   data_position  problems consumed (rl.py, whose steps may sample more problems than others)
# ckpt-*.pt only: optimizer, optimizer_format, scaler, rng, data_position.


def save_training_checkpoint(path, model_state, model_config, config, *, step, best, global_batch, world_size=1,
                             base=None, lora=None, value_head=False, optimizer=None, scaler=None, keep_last=0,
                             extra=None, background=False):
    """Write one training checkpoint (the layout above) atomically. model_state: the model's whole
    state_dict, or only its trained part with `base` naming the checkpoint it goes on. With `optimizer`
    (its state dict, keyed by parameter name) it is a ckpt-*.pt: the RNG state is taken here, and keep_last
    > 0 deletes all but the newest keep_last ckpt-*.pt of the folder. Callers hand it plain dicts:
    gathering them from shards is theirs. background: see save_checkpoint."""
    state = {"model": model_state, "model_config": model_config, "config": config, "step": step, "best": best,
             "tokenizer_dir": "tokenizer", "world_size": world_size, "global_batch": global_batch,
             "value_head": value_head}
    if base is not None:
        state["base"] = base
    if lora:
        state["lora"] = lora
    if optimizer is not None:
        state.update(optimizer=optimizer, optimizer_format="fqn", scaler=scaler, rng=rng_state(), **(extra or {}))
    prune = functools.partial(_keep_newest, os.path.dirname(path), keep_last) \
        if optimizer is not None and keep_last > 0 else None
    save_checkpoint(state, path, background, then=prune)


def _keep_newest(folder, n):
    """Delete all but the newest n ckpt-*.pt of folder."""
    for old in list_checkpoints(folder)[:-n]:
        os.remove(old)


def resume_path(resume, out_dir):
    """The checkpoint `resume` names: "" none, "auto" the latest ckpt-*.pt in out_dir (none if there is none),
    else the path itself."""
    if resume == "auto":
        found = list_checkpoints(out_dir)
        return found[-1] if found else ""
    return resume


def load_for_resume(path, config, keys, global_batch, batch_name, batch_now):
    """A ckpt-*.pt to continue from: loaded, verified, and checked against the run about to continue it.
    `keys`: the config fields the data order and the model depend on, which must be as in the run that wrote
    it (run length, intervals and the output folder may change); the global batch must be the same too (on any
    number of processes): global_batch rows now, which batch_now spells out in the units of batch_name
    ("batch_size x grad_accum x processes", "8 x 1 x 1"). A ValueError names every difference."""
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise ValueError(f"{path} holds weights only (best.pt); resume from a ckpt-*.pt file")
    was_cfg = ckpt["config"]
    foreign = [k for k in keys if k not in was_cfg]  # train.py's checkpoint given to rl.py, say
    if foreign:
        raise ValueError(f"cannot resume from {path}: another script's checkpoint (its settings have no "
                         f"{', '.join(foreign)}): start from it with init_from instead")
    diff = [f"{k}: checkpoint {was_cfg.get(k)!r}, now {config[k]!r}" for k in keys if was_cfg.get(k) != config[k]]
    was = ckpt.get("global_batch") or was_cfg["batch_size"] * was_cfg["grad_accum"] * ckpt.get("world_size", 1)
    if was != global_batch:
        diff.append(f"global batch ({batch_name}): checkpoint {was} rows, now {batch_now}")
    if diff:
        raise ValueError(f"cannot resume from {path}: these settings differ from the run that wrote it, and the "
                         f"data order or the model depends on them: " + "; ".join(diff))
    return ckpt


def restore_training_state(ckpt, model, opt, scaler=None):
    """Load a ckpt-*.pt's optimizer state (by parameter name, under any sharding of `model`), its GradScaler
    state and its RNG state: what remains after its weights are in the model. -> (step, best)."""
    if ckpt.get("optimizer_format") == "fqn":
        set_optimizer_state_dict(model, opt, ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:  # written before optimizer states were keyed by name
        opt.load_state_dict(ckpt["optimizer"])
    if scaler and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt["step"], ckpt.get("best")


def _digest(state):
    """CRC32 of a checkpoint's contents: every tensor's bytes (in parallel: zlib releases the
    GIL) and the structure and plain values around them. Detects damage (flipped bits, a
    truncated or spliced file), not tampering."""
    tensors = []

    def skeleton(x):
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return f"tensor{len(tensors)}:{x.dtype}:{tuple(x.shape)}"
        if isinstance(x, dict):
            return [[repr(k), skeleton(v)] for k, v in x.items()]
        if isinstance(x, (list, tuple)):
            return [skeleton(v) for v in x]
        return repr(x)
    skel = json.dumps(skeleton(state)).encode()
    crc = lambda t: zlib.crc32(t.detach().reshape(-1).view(torch.uint8).numpy())  # noqa: E731
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
        crcs = list(ex.map(crc, tensors))
    return zlib.crc32(skel + b"".join(c.to_bytes(4, "little") for c in crcs))


# the checkpoint being written in the background (one at a time), and the error of the last one, if any
_writing = {"thread": None, "error": None}


def save_checkpoint(state, path, background=False, then=None):
    """torch.save through atomic_write (an interrupted save never damages the previous file),
    with a checksum of the contents that load_checkpoint verifies. Tensors are moved to the CPU
    first (the checksum reads them). background=True: they are copied now (the run goes on changing
    its own) and the checksum and the write happen in a thread while the run continues (a 0.5B
    ckpt-*.pt with AdamW's state is 7.5 GB: 15-27 s of an H200 run's time each, written in
    line); the next save and wait_for_saves() wait for it, and re-raise its error. then(): called
    once the file is in place."""
    state = _to_cpu(state, copy=background)
    wait_for_saves()
    if not background:
        _write_checkpoint(state, path, then)
        return
    _writing["thread"] = threading.Thread(target=_write_checkpoint, args=(state, path, then, True),
                                          name=f"save {os.path.basename(path)}")
    _writing["thread"].start()  # not a daemon: the interpreter waits for it at exit


def _write_checkpoint(state, path, then=None, background=False):
    try:
        state["checksum"] = _digest(state)
        atomic_write(path, lambda f: torch.save(state, f))
        if then is not None:
            then()
    except BaseException as e:
        if not background:
            raise
        _writing["error"] = e  # the main thread's next save or wait_for_saves() raises it


def wait_for_saves():
    """Return once the checkpoint being written in the background is on disk; re-raise its error."""
    if _writing["thread"] is not None:
        _writing["thread"].join()
        _writing["thread"] = None
    error, _writing["error"] = _writing["error"], None
    if error is not None:
        raise error


def _to_cpu(x, memo=None, copy=False):
    # CPU copies, one per distinct tensor: a tied embedding / output head stays one tensor in the file.
    # copy: CPU tensors are copied too (else they are used as they are)
    memo = {} if memo is None else memo
    if isinstance(x, torch.Tensor):
        key = (x.data_ptr(), x.dtype, tuple(x.shape), x.stride(), x.device)
        if key not in memo:
            memo[key] = x.detach().to("cpu", copy=copy).contiguous()
        return memo[key]
    if isinstance(x, dict):
        return {k: _to_cpu(v, memo, copy) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v, memo, copy) for v in x)
    return x


def rng_state():
    """Every random generator a training step uses, for ckpt-*.pt: resume then continues bit for bit."""
    s = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s):
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def list_checkpoints(out_dir):
    return sorted(glob.glob(os.path.join(out_dir, "ckpt-*.pt")))


# What a run writes in its folder. A save interrupted by a kill leaves NAME.XXXXXXXX.tmp (atomic_write's
# mkstemp) or, from versions before 2026-11, NAME.tmp; the tokenizer/ folder is the run's own.
RUN_FILES = r"(ckpt-\d+\.pt|best\.pt|config\.json|metrics\.jsonl|samples\.jsonl|curves\.png|eval-.+\.jsonl|eval-.+\.json)"


def remove_orphan_tmp(folder):
    """Delete the temporary files an interrupted save of this code leaves in a run folder (and its tokenizer/),
    and nothing else; returns how many. Called by train.py and rl.py at start, before they write anything."""
    n = 0
    for p in glob.glob(os.path.join(folder, "*.tmp")) + glob.glob(os.path.join(folder, "tokenizer", "*.tmp")):
        name = RUN_FILES if os.path.basename(os.path.dirname(p)) != "tokenizer" else r"[^/]+?"
        if re.fullmatch(name + r"(\.\w{1,16})?\.tmp", os.path.basename(p)):
            os.remove(p)
            n += 1
    return n


def load_checkpoint(path, map_location="cpu"):
    """A training checkpoint (ckpt-*.pt or best.pt) whose checksum matches its contents; a clear error for a
    file that is damaged, truncated, or not a checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception:
        raise ValueError(f"{path}: cannot be read as a nanomath checkpoint (damaged or truncated, or not a "
                         f"checkpoint file)") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path}: not a nanomath checkpoint (no 'model' / 'model_config' entries)")
    want = ckpt.pop("checksum", None)
    if want is None:
        print(f"warning: {path} has no checksum (written before nanomath checked them); loading it unverified")
    elif _digest(ckpt) != want:
        raise ValueError(f"{path}: damaged: its contents do not match the checksum written with it; use another "
                         f"checkpoint (e.g. an earlier ckpt-*.pt)")
    return ckpt


def attach_trained_parts(model, lora=None, value_head=False, freeze=False):
    """Put on a base model the parts a run trains besides (or instead of) its weights, the one place they are
    assembled (training builds its model with it, model_from_checkpoint rebuilds a checkpoint's): LoRA
    adapters, lora = {"rank", "alpha", "dropout", "targets": "q,k,..."}, which freeze the rest; freeze=True
    freezes the whole base; and a verifier's value head (trainable)."""
    if lora:
        apply_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"].split(","))
    if freeze:
        model.requires_grad_(False)
    if value_head:
        model.add_value_head()
    return model


def model_from_checkpoint(ckpt, device="cpu", dtype=None):
    """The model of a training checkpoint. A LoRA checkpoint holds adapters only: they are put on its base
    model (loaded from the path it names) and merged into the weights, so what comes back is a plain model."""
    if "base" in ckpt:  # only what was trained (LoRA adapters, a verifier's head) on top of a base checkpoint
        try:
            model, _, _ = load_model(ckpt["base"], device, torch.float32)
        except FileNotFoundError:
            raise FileNotFoundError(f"this checkpoint holds trained parts of the base model {ckpt['base']!r}, which "
                                    f"is not there any more (or pass a merged export)") from None
        attach_trained_parts(model, ckpt.get("lora"), ckpt.get("value_head"))
        try:
            bad = model.load_state_dict(ckpt["model"], strict=False)
        except RuntimeError as e:  # shapes that differ: the base was replaced by another model
            raise ValueError(f"the trained parameters do not fit their base model {ckpt['base']!r} (was it "
                             f"replaced?): {str(e).splitlines()[-1].strip()[:300]}") from None
        if bad.unexpected_keys or any("lora_" in k or "value_head" in k for k in bad.missing_keys):
            raise ValueError(f"the trained parameters do not fit their base model {ckpt['base']!r}: {bad}")
        return (merge_lora(model) if ckpt.get("lora") else model).to(device=device, dtype=dtype)
    with torch.device("meta"):
        model = attach_trained_parts(Transformer(ModelConfig(**ckpt["model_config"])), None, ckpt.get("value_head"))
    model.load_state_dict(ckpt["model"], assign=True)
    return model.to(device=device, dtype=dtype)

# -----------------------------------------------------------------------------
# one loader for every kind of checkpoint


def checkpoint_file(path_or_hub_id):
    """The file load_model reads for one of our checkpoints: the path itself if it is a file, or in a run folder
    best.pt, else its latest ckpt-*.pt; None for anything else (a Hugging Face folder or hub id). Reads nothing."""
    path = os.fspath(path_or_hub_id)
    if os.path.isdir(path):  # train.py's out_dir (it also holds a config.json, but not an HF one)
        best, found = os.path.join(path, "best.pt"), list_checkpoints(path)
        if os.path.isfile(best) or found:
            return best if os.path.isfile(best) else found[-1]
    return path if os.path.isfile(path) else None


def _tokenizer_dir(path, name="tokenizer"):
    """The tokenizer folder next to one of our checkpoint files (train.py writes it there)."""
    tok_dir = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    if not os.path.isdir(tok_dir):
        raise FileNotFoundError(f"{path}: its tokenizer folder {tok_dir} is missing (train.py writes it next to "
                                f"the checkpoints; copy it along with the .pt file)")
    return tok_dir


def tokenizer_of(path_or_hub_id):
    """The tokenizer load_model returns with this checkpoint, read without its weights (so that the data can
    be checked before a model is loaded)."""
    path = checkpoint_file(path_or_hub_id)
    return load_tokenizer(_tokenizer_dir(path) if path else resolve_checkpoint_dir(path_or_hub_id))


def _peek(path, read):
    """read(state) of one of our checkpoint files without reading its weights (mmap, no checksum: the load
    checks that); ValueError as load_checkpoint's for a file that cannot be read."""
    try:
        return read(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception:
        raise ValueError(f"{path}: cannot be read as a nanomath checkpoint (damaged or truncated, or not a "
                         f"checkpoint file)") from None


def has_value_head(path):
    """Whether one of our checkpoint files holds a verifier's value head."""
    return _peek(path, lambda state: bool(state.get("value_head")))


def model_config_of(path_or_hub_id):
    """The ModelConfig load_model would build, read without the weights (our checkpoint files; a Hugging Face
    folder's config.json): for the checks that come before a model is loaded (its context, its layers, the
    memory of a KV cache)."""
    path = checkpoint_file(path_or_hub_id)
    if path is None:
        return _hf_config(resolve_checkpoint_dir(path_or_hub_id))
    return _peek(path, lambda state: ModelConfig(**state["model_config"]))


def load_model(path_or_hub_id, device="cpu", dtype=torch.float32):
    """-> (model, tok, info) with weights in `dtype` (None: as stored) on `device`. path_or_hub_id: a training
    checkpoint file (best.pt / ckpt-*.pt), a folder holding them (train.py's out_dir: best.pt, else the latest
    ckpt-*.pt), a Hugging Face checkpoint folder, or a hub id in the local HF cache. info: {"kind": "nanomath"
    | "hf", "path", "prompt_format", "system_prompt"}: the prompt format a nanomath checkpoint was trained
    with, or chat/plain by the tokenizer for HF models."""
    path = checkpoint_file(path_or_hub_id) or os.fspath(path_or_hub_id)
    if os.path.isfile(path):
        state = load_checkpoint(path)
        model = model_from_checkpoint(state, device, dtype)
        cfg = state.get("config") or {}
        tok_dir = _tokenizer_dir(path, state.get("tokenizer_dir") or "tokenizer")
        tok = load_tokenizer(tok_dir)
        model.source_dir = tok_dir
        info = {"kind": "nanomath", "path": path, "prompt_format": cfg.get("prompt_format", "plain"),
                "system_prompt": cfg.get("system_prompt", data.SYSTEM_PROMPT)}
    else:
        model = from_pretrained(path, device=device, dtype=dtype)  # FileNotFoundError naming where it looked
        tok = load_tokenizer(model.source_dir)
        info = {"kind": "hf", "path": model.source_dir, "prompt_format": "chat" if tok.has_chat_template else "plain",
                "system_prompt": data.SYSTEM_PROMPT}
    if tok.n_vocab > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.n_vocab} tokens but the model only "
                         f"{model.config.vocab_size} embedding rows")
    return model, tok, info
