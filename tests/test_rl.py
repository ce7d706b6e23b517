"""rl.py, GRPO: advantages and masks on hand-made groups, the loss's gradient against a hand-written REINFORCE
gradient, the clipped ratio and the KL term at the start, exact resume, two processes equal to one, the inputs it
refuses, and a tiny model whose reward rises within a CPU-minute run."""
import functools
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint as C  # noqa: E402
import data  # noqa: E402
import rl  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
from conftest import tiny_model  # noqa: E402
from engine import Sample  # noqa: E402


def smp(ids, stopped, logprobs=None):
    return Sample(ids, stopped, None, logprobs or [-0.5] * (len(ids) + stopped), 7 if stopped else None)


def test_advantages_on_hand_made_groups():
    a = rl.advantages([1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], 4)
    assert a.tolist() == [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, 0, 0, 0, 0]  # all-equal groups: no signal
    s = rl.advantages([1, 0, 0, 0], 4, std_normalize=True)
    assert s == pytest.approx([0.75 / np.sqrt(0.1875), -0.25 / np.sqrt(0.1875)] + [-0.25 / np.sqrt(0.1875)] * 2)
    assert not rl.advantages([1, 1], 2, std_normalize=True).any()


def test_pack_keeps_signal_trains_the_stop_token_and_aligns_the_fields():
    cfg = rl.Config(group_size=2, seq_len=32)
    groups = [{"prompt": [1, 2, 3], "rewards": [1.0, 0.0],
               "samples": [smp([4, 5], True, [-0.1, -0.2, -0.3]), smp([6, 8, 9], False, [-0.4, -0.5, -0.6])]},
              {"prompt": [1, 2], "rewards": [0.0, 0.0], "samples": [smp([4], True), smp([5], True)]}]
    examples, rows = rl.pack(groups, cfg)
    assert len(examples) == 2  # the flat group is left out
    assert examples[0]["ids"] == [1, 2, 3, 4, 5, 7] and examples[0]["mask"] == [0, 0, 0, 1, 1, 1]  # + stop token
    assert examples[1]["ids"] == [1, 2, 3, 6, 8, 9] and examples[1]["mask"] == [0, 0, 0, 1, 1, 1]  # cut off
    b = data.collate(rows, examples, 32, 0, ("adv", "old_logp"))
    flat = b["targets"].flatten()[b["loss_index"]].tolist()
    by_row = [examples[i] for r in rows for i in r]
    assert flat == [t for e in by_row for t in e["ids"][3:]]  # the targets are the response tokens, in order
    assert b["adv"].tolist() == [e["adv"] for e in by_row for _ in range(3)]
    assert sorted(e["adv"] for e in examples) == [-0.5, 0.5]
    assert b["old_logp"].tolist() == pytest.approx([lp for e in by_row for lp in e["old_logp"]])


def _batch(model, seed=0):
    """Three rollouts of a tiny model as one packed batch, with their advantages and current log-probs."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i, a in enumerate((1.0, -0.5, 0.25)):
        ids = torch.randint(0, 128, (12 + i,), generator=g).tolist()
        examples.append({"ids": ids, "mask": [0] * 5 + [1] * (len(ids) - 5), "adv": a, "old_logp": [0.0] * (len(ids) - 5)})
    b = data.collate([[0, 1], [2]], examples, 32, 0, ("adv", "old_logp"))
    with torch.no_grad():
        b["old_logp"] = model.token_loss(model.hidden(b["idx"], pos=b["pos"], doc=b["doc"]), b["targets"],
                                         b["loss_index"])[1]
    return b


def _grads(model):
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return out


def test_loss_gradient_is_reinforce_and_the_clip_changes_nothing_on_the_first_pass(one_thread):
    model = tiny_model(seed=1).train()
    b = _batch(model)
    n = len(b["loss_index"])
    stats = {"clipped": torch.zeros(()), "kl": torch.zeros(())}
    ctx = torch.autocast("cpu", enabled=False)
    training.forward_backward(model, [b], ctx, None, "cpu", 1, n,
                              functools.partial(rl.pg_loss, clip_eps=0.2, kl_coef=0.0, stats=stats))
    ours = _grads(model)
    # REINFORCE by hand: -(1/n) sum_t A_t grad log p(token t), through the whole (B, T, V) log-softmax
    logp = F.log_softmax(model(b["idx"], pos=b["pos"], doc=b["doc"]).float(), -1).flatten(0, 1)
    lp = logp[b["loss_index"], b["targets"].flatten()[b["loss_index"]]]
    (-(b["adv"] * lp).sum() / n).backward()
    ref = _grads(model)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-7)
    assert stats["clipped"].item() == 0  # ratio 1: nothing clipped
    # a later pass: the sampler's log-probs now differ from the policy's, so the clip acts on some tokens and the
    # gradient is no longer the unclipped one
    b2 = dict(b, old_logp=b["old_logp"] + torch.linspace(-0.6, 0.6, n))
    for eps in (0.2, 0.99):
        stats["clipped"].zero_()
        training.forward_backward(model, [b2], ctx, None, "cpu", 1, n,
                                  functools.partial(rl.pg_loss, clip_eps=eps, kl_coef=0.0, stats=stats))
        if eps == 0.2:
            clipped, n_clipped = _grads(model), stats["clipped"].item()
    loose = _grads(model)
    assert n_clipped > 0 and any(not torch.allclose(clipped[k], loose[k]) for k in loose)


def test_kl_to_the_start_is_zero_at_the_start(one_thread):
    model = tiny_model(seed=2).train()
    b = _batch(model, seed=3)
    b["ref_logp"] = b["old_logp"].clone()  # the reference is the starting policy: this one
    n = len(b["loss_index"])
    ctx = torch.autocast("cpu", enabled=False)
    got = []
    for kl in (0.0, 0.5):
        stats = {"clipped": torch.zeros(()), "kl": torch.zeros(())}
        loss, _ = training.forward_backward(model, [b], ctx, None, "cpu", 1, n,
                                            functools.partial(rl.pg_loss, clip_eps=0.2, kl_coef=kl, stats=stats))
        got.append((loss.item(), _grads(model), stats["kl"].item()))
    assert abs(got[1][2]) < 1e-5 and got[1][0] == pytest.approx(got[0][0], abs=1e-7)
    for k in got[0][1]:
        torch.testing.assert_close(got[1][1][k], got[0][1][k], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# whole runs, from a tiny model that has learned some arithmetic

RL = ["--datasets=arith2", "--prompt_format=plain", "--max_new_tokens=32", "--eval_max_new_tokens=32",
      "--seq_len=64", "--val_size=20", "--eval_samples=8", "--save_interval=1000", "--device=cpu"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    train.train(train.load_config(["--n_layer=2", "--n_embd=64", "--n_head=2", "--seq_len=64", "--batch_size=32",
                                   "--max_iters=500", "--warmup_iters=20", "--eval_interval=500",
                                   "--eval_samples=0", "--val_size=50", "--log_interval=500",
                                   f"--out_dir={out}"]))
    return out / "ckpt-000500.pt"


def run_rl(sft, out, *flags):
    return rl.train(rl.load_config(RL + [f"--init_from={sft}", f"--out_dir={out}", *flags]))


def rows(out, start=False):
    """metrics.jsonl's step rows; with start, the fresh run's step-0 row (the starting model's eval) too."""
    got = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return got if start else [r for r in got if r["step"] > 0]


def test_a_tiny_model_raises_its_reward(sft, tmp_path):
    run_rl(sft, tmp_path, "--prompts_per_step=16", "--group_size=16", "--slots=256", "--batch_size=128",
           "--lr=1e-3", "--max_iters=60", "--eval_interval=60", "--max_samples=16")
    start = rows(tmp_path, start=True)[0]  # the starting model's held-out accuracy, before any update
    assert start["step"] == 0 and "eval_accuracy" in start and "reward" not in start
    r = [x["reward"] for x in rows(tmp_path)]
    first, last = np.mean(r[:20]), np.mean(r[-20:])
    print(f"\nmean reward, steps 1-20: {first:.3f}; steps 41-60: {last:.3f}")
    assert last > first


def test_resume_continues_exactly(sft, tmp_path):
    flags = ["--prompts_per_step=8", "--group_size=8", "--slots=64", "--batch_size=64", "--lr=1e-3",
             "--max_iters=6", "--eval_interval=3", "--save_interval=3", "--keep_last=5", "--max_samples=32"]
    run_rl(sft, tmp_path / "a", *flags)
    run_rl(sft, tmp_path / "b", *flags, f"--resume={tmp_path / 'a' / 'ckpt-000003.pt'}")
    keys = ("reward", "loss", "grad_norm", "response_length", "trained_tokens", "eval_accuracy")
    a = [{k: r.get(k) for k in keys} for r in rows(tmp_path / "a") if r["step"] > 3]
    b = [{k: r.get(k) for k in keys} for r in rows(tmp_path / "b")]
    assert [r["step"] for r in rows(tmp_path / "b")] == [4, 5, 6] and a == b  # the same samples, the same update
    wa = torch.load(tmp_path / "a" / "ckpt-000006.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "ckpt-000006.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ctrl_c_between_ppo_passes_finishes_the_step_and_resumes_exactly(sft, tmp_path, monkeypatch):
    # a real SIGINT during the second PPO pass of a step: the step finishes whole (its update, step count, data
    # position and metrics row), a checkpoint is written, the exit is 130, and the resumed run continues as the
    # uninterrupted one (without whole_step the checkpoint held half an update under the previous step's name)
    import signal

    from model import Transformer
    flags = ["--prompts_per_step=8", "--group_size=8", "--slots=64", "--batch_size=64", "--lr=1e-3",
             "--max_iters=4", "--eval_interval=1000", "--save_interval=1000", "--max_samples=32", "--ppo_epochs=2"]
    run_rl(sft, tmp_path / "a", *flags)
    real, calls = Transformer.forward, {"n": 0}

    def interrupted(self, idx, targets=None, **kw):
        if kw.get("loss_fn") is not None and self.training:  # a pass of the update (one micro-batch each)
            calls["n"] += 1
            if calls["n"] == 4:
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, idx, targets, **kw)
    monkeypatch.setattr(Transformer, "forward", interrupted)
    with pytest.raises(SystemExit) as e:
        rl.main(RL + [f"--init_from={sft}", f"--out_dir={tmp_path / 'b'}", *flags])
    monkeypatch.undo()
    assert e.value.code == 130 and calls["n"] == 4
    stopped = [r["step"] for r in rows(tmp_path / "b")]
    assert stopped[-1] < 4 and (tmp_path / "b" / f"ckpt-{stopped[-1]:06d}.pt").exists()
    run_rl(sft, tmp_path / "b", *flags, "--resume=auto")
    keys = ("step", "reward", "loss", "grad_norm", "trained_tokens", "clip_frac")
    assert [{k: r.get(k) for k in keys} for r in rows(tmp_path / "b")] == \
        [{k: r.get(k) for k in keys} for r in rows(tmp_path / "a")]
    wa = torch.load(tmp_path / "a" / "ckpt-000004.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "ckpt-000004.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_two_processes_equal_one_with_the_whole_batch(sft, tmp_path, dtype):
    # bfloat16: the fp32 weights train through bf16 working copies (wrap_model(working=True)), DDP reducing the
    # fp32 gradients they pass on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [*RL, f"--init_from={sft}", "--prompts_per_step=8", "--group_size=8", "--slots=64", "--batch_size=4",
             "--lr=1e-3", "--max_iters=2", "--eval_interval=1000", "--max_samples=32", "--seed=3", f"--dtype={dtype}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"] \
            if n == 2 else [sys.executable]
        r = subprocess.run(launch + ["rl.py", *flags, f"--out_dir={out}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["trained_tokens"] for r in one] == [r["trained_tokens"] for r in two]  # the same rollouts
    # a step whose groups are all flat trains nothing and logs no loss (None), in both
    assert [r["loss"] is None for r in two] == [r["loss"] is None for r in one]
    assert [r["loss"] for r in two if r["loss"] is not None] == \
        pytest.approx([r["loss"] for r in one if r["loss"] is not None], rel=1e-4, abs=1e-7)
    wa = torch.load(tmp_path / "one" / "ckpt-000002.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "ckpt-000002.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lora", [True, False])
def test_kl_ppo_passes_refill_and_lora_run_end_to_end(sft, tmp_path, lora):
    # every option at once: a KL penalty to the start (LoRA: the base with adapters off; full: a frozen copy),
    # two PPO passes per batch, flat groups replaced by other problems, std-normalised advantages
    run_rl(sft, tmp_path, "--prompts_per_step=8", "--group_size=8", "--slots=64", "--batch_size=64", "--lr=1e-3",
           "--max_iters=3", "--eval_interval=1000", "--max_samples=32", "--kl_coef=0.05", "--ppo_epochs=2",
           "--refill=2", "--std_normalize=true", *(["--lora_rank=4", "--lora_alpha=8", "--lr=1e-2"] if lora else []))
    r = rows(tmp_path)
    assert [x["step"] for x in r] == [1, 2, 3]
    assert all(x["sampled_tok_s"] > 0 and x["trained_tok_s"] > 0 and x["sample_s"] > 0 for x in r)
    assert all(x["kl"] > 0 for x in r)  # the last pass runs after an update: the policy has moved from the start
    assert all(0 <= x["clip_frac"] <= 1 for x in r) and any(x["clip_frac"] > 0 for x in r)
    assert any(x["groups"] > 8 for x in r)  # all-equal groups were replaced by other problems
    saved = torch.load(tmp_path / "ckpt-000003.pt", weights_only=True)["model"]
    assert all("lora" in k for k in saved) == lora  # LoRA keeps only the adapters


def test_math_problems_run_end_to_end(sft, tmp_path):
    # MATH's loader, prompts and grader through a run (its problems earn this model nothing; arithmetic's do).
    # MATH prompts outgrow the 64-token context the model was trained with: the same weights, a longer limit
    with pytest.raises(SystemExit, match="max_seq_len=64"):
        run_rl(sft, tmp_path / "short", "--datasets=math", "--max_samples=8", "--seq_len=4096")
    ck = C.load_checkpoint(str(sft))
    ck["model_config"]["max_seq_len"] = 2048
    C.save_checkpoint(ck, os.path.join(os.path.dirname(sft), "long.pt"))
    s = run_rl(os.path.join(os.path.dirname(sft), "long.pt"), tmp_path, "--datasets=arith2,math", "--max_samples=16", "--prompts_per_step=32",
               "--group_size=16", "--slots=256", "--batch_size=64", "--max_iters=1", "--eval_interval=1000",
               "--seq_len=1024")
    assert s["step"] == 1 and rows(tmp_path)[0]["groups"] == 32
