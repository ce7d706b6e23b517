"""DDP under torchrun on the CPU (gloo, 2 processes): the same losses and weights as one process with the same
global batch (the loss is normalised by the answer tokens of the whole global batch), checkpoints written once,
and a 2-process checkpoint resumed in 1 process continues identically."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--seq_len=96", "--max_samples=300", "--val_size=16",
        "--eval_samples=0", "--log_interval=1", "--eval_interval=3", "--warmup_iters=2", "--lr=1e-3",
        "--save_interval=2", "--keep_last=5", "--device=cpu"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out, nproc, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_port()}"] \
        if nproc > 1 else [sys.executable]
    r = subprocess.run(launch + ["train.py", *TINY, f"--out_dir={out}", *flags], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r}


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    run(d / "one", 1, "--batch_size=4", "--grad_accum=2", "--max_iters=4")
    r2 = run(d / "two", 2, "--batch_size=2", "--grad_accum=2", "--max_iters=4")
    rf = run(d / "fsdp", 2, "--batch_size=2", "--grad_accum=2", "--max_iters=4", "--fsdp=true", "--eval_samples=3",
             "--eval_max_new_tokens=4")  # eval gathers the shards into a whole model on rank 0
    assert "x 2 processes (FSDP2)" in rf.stdout and "x 2 processes (DDP)" in r2.stdout
    # bf16: autocast over the fp32 weights, DDP reducing fp32 gradients (rl.py's working copies: test_rl.py)
    run(d / "one_bf16", 1, "--batch_size=4", "--grad_accum=2", "--max_iters=4", "--dtype=bfloat16")
    run(d / "two_bf16", 2, "--batch_size=2", "--grad_accum=2", "--max_iters=4", "--dtype=bfloat16")
    return d, r2


def same_losses(one, two):
    """Two runs logged steps 1-4 with the same losses (to 1e-5) -> their final weights."""
    a, b = losses(one), losses(two)
    assert list(a) == list(b) == [1, 2, 3, 4]
    assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-5)
    return weights(one / "ckpt-000004.pt"), weights(two / "ckpt-000004.pt")


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    d, r2 = runs
    wa, wb = same_losses(d / "one", d / "two")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    assert "x 2 processes" in r2.stdout and r2.stdout.count("done:") == 1  # one rank logs
    val = [json.loads(line) for line in open(d / "two" / "metrics.jsonl") if "val_loss" in line]
    assert [r["step"] for r in val] == [3, 4]  # evaluated once, by rank 0


def test_two_processes_equal_one_in_bf16(runs):
    d, _ = runs
    wa, wb = same_losses(d / "one_bf16", d / "two_bf16")
    assert all(v.dtype == torch.float32 for v in wb.values())  # the checkpoint holds the fp32 master weights
    # bf16 rounds each micro-batch's weight gradient (a sum over its rows, which differ between one and two
    # processes), and Adam turns a tiny gradient's rounding into up to a whole step of that weight: compare the
    # two runs' last two updates as wholes
    w2 = weights(d / "one_bf16" / "ckpt-000002.pt")
    diff = torch.cat([(wb[k] - wa[k]).flatten() for k in wa]).norm()
    step = torch.cat([(wa[k] - w2[k]).flatten() for k in wa]).norm()
    print(f"two vs one process, bf16: weights differ by {diff / step:.2%} of the last two updates")
    assert diff < 0.01 * step


def test_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    d, _ = runs
    out = tmp_path / "resumed"
    run(out, 1, "--batch_size=4", "--grad_accum=2", "--max_iters=4", f"--resume={d}/two/ckpt-000002.pt")
    assert losses(out) == pytest.approx({k: v for k, v in losses(d / "two").items() if k > 2}, rel=1e-5)
    wa, wb = weights(d / "two" / "ckpt-000004.pt"), weights(out / "ckpt-000004.pt")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


def test_fsdp_equals_one_process_and_resumes_in_one(runs, tmp_path):
    # FSDP2 (weights, gradients and optimizer state sharded over 2 gloo processes) follows the same trajectory,
    # writes whole checkpoints, and its checkpoint resumes in one process like any other
    d, _ = runs
    assert list(losses(d / "fsdp").values()) == pytest.approx(list(losses(d / "one").values()), rel=1e-5)
    wa, wb = weights(d / "one" / "ckpt-000004.pt"), weights(d / "fsdp" / "ckpt-000004.pt")
    assert wa.keys() == wb.keys() and (d / "fsdp" / "best.pt").exists()
    assert len((d / "fsdp" / "samples.jsonl").read_text().splitlines()) == 6  # 3 graded problems at steps 3, 4
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    out = tmp_path / "from_fsdp"
    run(out, 1, "--batch_size=4", "--grad_accum=2", "--max_iters=4", f"--resume={d}/fsdp/ckpt-000002.pt")
    assert losses(out) == pytest.approx({k: v for k, v in losses(d / "one").items() if k > 2}, rel=1e-5)


def test_time_budget_stops_every_rank_at_the_same_log_step(tmp_path):
    # the ranks agree on stopping at log steps only (no collective read per step); all stop, once, and save.
    # The budget counts from launch, and a cold start of 2 processes can take several seconds: 12 s leaves steps
    r = run(tmp_path, 2, "--batch_size=2", "--max_iters=100000", "--max_time=12", "--log_interval=3",
            "--eval_interval=100000", "--save_interval=100000")
    assert r.stdout.count("done: max_time at step") == 1
    step = int(r.stdout.split("done: max_time at step ")[1].split()[0])
    assert step > 0 and step % 3 == 0 and os.path.exists(tmp_path / f"ckpt-{step:06d}.pt")
