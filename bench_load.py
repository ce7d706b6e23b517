"""
Benchmark: our safetensors reader (checkpoint.read_safetensors, mmap) vs safetensors.torch.load_file.

    python bench_load.py                          # makes a 1.2 GB bf16 checkpoint in /tmp and benchmarks it
    python bench_load.py --path /x/model.safetensors --repeats 7

Each load runs in a fresh subprocess (so peak memory is that reader's alone), runs alternate between the two
readers, and the first run of each is a discarded warm-up (both then read from the OS page cache).
"Loaded" means usable: every tensor is reduced (sum) after loading, inside the timed region, for both readers -
an mmap reader that never touches its pages would otherwise look free. Peak memory is ru_maxrss / VmHWM of the
child (RSS counts both anonymous copies and mapped file pages that were touched).
Needs the safetensors package (benchmark only; checkpoint.py does not use it).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def child(reader, path):
    import resource
    import torch

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MiB
        return float("nan")

    if reader == "ours":
        import checkpoint
        load = checkpoint.read_safetensors
    else:
        from safetensors.torch import load_file
        load = load_file
    base_rss = status("VmRSS")
    t0 = time.perf_counter()
    sd = load(path)
    t_open = time.perf_counter() - t0
    total = 0.0
    for t in sd.values():
        total += float(t.sum(dtype=torch.float32))  # touch every byte
    dt = time.perf_counter() - t0
    print(json.dumps({"time_s": dt, "open_s": t_open, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "hwm_mib": status("VmHWM"), "base_rss_mib": base_rss, "checksum": total, "n": len(sd)}))


def make_checkpoint(path, gb):
    import torch
    import checkpoint
    # Qwen-like names and shapes (hidden 1536, intermediate 8960) in bf16, as many layers as fit in `gb`
    C, I, V = 1536, 8960, 151936
    g = torch.Generator().manual_seed(0)
    sd = {"model.embed_tokens.weight": torch.randn(V, C, generator=g).bfloat16()}
    i = 0
    while sum(t.numel() * 2 for t in sd.values()) < gb * 1e9:
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj.weight", (C, C)), ("self_attn.q_proj.bias", (C,)),
                            ("self_attn.k_proj.weight", (256, C)), ("self_attn.k_proj.bias", (256,)),
                            ("self_attn.v_proj.weight", (256, C)), ("self_attn.v_proj.bias", (256,)),
                            ("self_attn.o_proj.weight", (C, C)), ("mlp.gate_proj.weight", (I, C)),
                            ("mlp.up_proj.weight", (I, C)), ("mlp.down_proj.weight", (C, I)),
                            ("input_layernorm.weight", (C,)), ("post_attention_layernorm.weight", (C,))):
            sd[p + name] = torch.randn(shape, generator=g).bfloat16()
        i += 1
    checkpoint.write_safetensors(path, sd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default=None, help="a .safetensors file (default: create one)")
    ap.add_argument("--size-gb", type=float, default=1.2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--child", choices=["ours", "st"], default=None)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.path)
    import torch
    path = args.path or f"/tmp/nanomath_bench_{args.size_gb:g}gb.safetensors"
    if not os.path.exists(path):
        print(f"creating {path} ...", flush=True)
        make_checkpoint(path, args.size_gb)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"file: {path} ({os.path.getsize(path) / 1e9:.2f} GB), repeats: {args.repeats} (+1 warm-up each)")
    print(f"machine: {cpu}, {os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}")
    res = {"ours": [], "st": []}
    for r in range(args.repeats + 1):
        for reader in (("ours", "st") if r % 2 == 0 else ("st", "ours")):  # alternate who goes first
            out = subprocess.run([sys.executable, __file__, "--child", reader, "--path", path],
                                 capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
            d = json.loads(out.stdout.strip().splitlines()[-1])
            if r > 0:
                res[reader].append(d)
    assert res["ours"][0]["checksum"] == res["st"][0]["checksum"], "readers disagree on the data"
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("time_s", "open_s", "hwm_mib", "maxrss_mib", "base_rss_mib")}
           for k, v in res.items()}
    for k, name in (("ours", "checkpoint.read_safetensors"), ("st", "safetensors.torch.load_file")):
        times = ", ".join(f"{x['time_s']:.3f}" for x in res[k])
        print(f"{name:28s} median {med[k]['time_s']:.3f}s, min {min(x['time_s'] for x in res[k]):.3f}s "
              f"(runs: {times}; median before the touch "
              f"{med[k]['open_s']:.3f}s); peak RSS (VmHWM) "
              f"{med[k]['hwm_mib']:.0f} MiB, of which {med[k]['base_rss_mib']:.0f} MiB before loading")
    mins = {k: min(x["time_s"] for x in v) for k, v in res.items()}
    print(f"ratio ours/safetensors: time {med['ours']['time_s'] / med['st']['time_s']:.2f}x (median), "
          f"{mins['ours'] / mins['st']:.2f}x (min), "
          f"peak RSS {med['ours']['hwm_mib'] / med['st']['hwm_mib']:.2f}x, "
          f"peak RSS above baseline {(med['ours']['hwm_mib'] - med['ours']['base_rss_mib']) / (med['st']['hwm_mib'] - med['st']['base_rss_mib']):.2f}x")


if __name__ == "__main__":
    main()
