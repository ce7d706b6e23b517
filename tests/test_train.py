"""train.py: config handling, gradient accumulation, packing through the real data path, resume, checkpoints,
time budget and the non-finite guard. Tiny from-scratch models on generated arithmetic: seconds each on a CPU."""
import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
from model import Transformer  # noqa: E402

TINY = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--seq_len=96", "--batch_size=4", "--max_samples=300",
        "--val_size=16", "--eval_samples=0", "--log_interval=1", "--eval_interval=1000", "--warmup_iters=2",
        "--lr=1e-3"]


def tiny_cfg(tmp_path, *extra):
    return train.load_config(TINY + [f"--out_dir={tmp_path}"] + list(extra))


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


# ---------------------------------------------------------------- config

def test_config_file_and_flags_override_in_order(tmp_path):
    p = tmp_path / "exp.py"
    p.write_text("import math\nlr = 2e-5\nbatch_size = 3\n_private = 1\n")
    cfg = train.load_config([str(p), "--batch_size=5", "--pack=false"])
    assert cfg.lr == 2e-5 and cfg.batch_size == 5 and cfg.pack is False


def test_config_unknown_key_names_closest(tmp_path):
    with pytest.raises(SystemExit, match="unknown config key 'learning_rate'; did you mean 'lr'"):
        train.load_config(["--learning_rate=1"])
    with pytest.raises(SystemExit, match="did you mean 'batch_size'"):
        train.load_config(["--batch_sise=4"])
    p = tmp_path / "exp.py"
    p.write_text("max_iter = 5\n")
    with pytest.raises(SystemExit, match=r"exp\.py: unknown config key 'max_iter'; did you mean 'max_iters'"):
        train.load_config([str(p)])


def test_config_type_errors(tmp_path):
    with pytest.raises(SystemExit, match="batch_size='four' is not an integer"):
        train.load_config(["--batch_size=four"])
    p = tmp_path / "exp.py"
    p.write_text("pack = 'yes'\n")
    with pytest.raises(SystemExit, match="pack must be true or false, got 'yes'"):
        train.load_config([str(p)])
    with pytest.raises(SystemExit, match="--key=value"):
        train.load_config(["--lr"])


def test_lr_schedule():
    cfg = train.Config(lr=1.0, warmup_iters=10, min_lr_ratio=0.1, schedule="cosine")
    assert train.lr_at(0, cfg, 100) == pytest.approx(0.1)
    assert train.lr_at(9, cfg, 100) == pytest.approx(1.0)
    assert train.lr_at(100, cfg, 100) == pytest.approx(0.1)
    assert train.lr_at(55, cfg, 100) == pytest.approx(0.55)
    assert train.lr_at(55, dataclasses.replace(cfg, schedule="linear"), 100) == pytest.approx(0.55)
    assert train.lr_at(80, dataclasses.replace(cfg, schedule="constant"), 100) == 1.0

# ---------------------------------------------------------------- numerics of one step

@pytest.fixture(scope="module")
def tiny_setup():
    torch.manual_seed(0)
    cfg = train.Config(n_layer=2, n_embd=32, n_head=2, seq_len=96)
    model, tok, _ = train.build_model(cfg, "cpu")
    ds, _ = data.build_datasets("arith", tok, 96, "plain", max_samples=64, seed=0)
    return model, tok, ds


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_equals_one_big_batch(tiny_setup):
    model, _, ds = tiny_setup
    big = ds.batch(0, 6)
    model.zero_grad()
    loss1, n1 = train.forward_backward(model, [big], torch.autocast("cpu", enabled=False), None, "cpu")
    g1 = grads(model)
    model.zero_grad()
    loss2, n2 = train.forward_backward(model, [ds.batch(i, 1) for i in range(6)], torch.autocast("cpu", enabled=False), None, "cpu")
    g2 = grads(model)
    assert n1 == n2 and loss1.item() == pytest.approx(loss2.item(), rel=1e-6)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-5, atol=1e-7)
    # and the loss is per answer token of the whole batch, not a mean of micro-batch means
    b = ds.batch(0, 6)
    ref = torch.nn.functional.cross_entropy(model(b["idx"], pos=b["pos"], doc=b["doc"]).flatten(0, 1),
                                            b["targets"].flatten(), ignore_index=-100)
    assert abs(loss1.item() - ref.item()) < 1e-5


def test_packed_rows_match_examples_run_alone(tiny_setup):
    model, _, ds = tiny_setup
    row = next(r for r in ds.plan(0) if len(r) >= 2)
    k = ds.plan(0).index(row)
    b = ds.batch(k, 1)
    with torch.no_grad():
        packed = model(b["idx"], pos=b["pos"], doc=b["doc"])[0]  # (T, V)
        t = 0
        for i in row:
            ids = torch.tensor([ds.examples[i]["ids"]])
            alone = model(ids)[0]
            torch.testing.assert_close(packed[t:t + ids.size(1)], alone, atol=1e-5, rtol=1e-5)
            t += ids.size(1)


def test_masked_loss_equals_reference_on_data_rows(tiny_setup):
    model, _, ds = tiny_setup
    b = ds.batch(0, 3)
    with torch.no_grad():
        ours = model(b["idx"], b["targets"], pos=b["pos"], doc=b["doc"])
        logits = model(b["idx"], pos=b["pos"], doc=b["doc"]).float()
        ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["targets"].flatten(), ignore_index=-100)
    assert abs(ours.item() - ref.item()) < 1e-5

# ---------------------------------------------------------------- whole runs

def test_resume_reproduces_uninterrupted_run(tmp_path):
    a = tmp_path / "a"
    train.train(tiny_cfg(a, "--max_iters=8", "--save_interval=4", "--keep_last=5"))
    full = [r["loss"] for r in read_metrics(a) if "loss" in r]
    # resume from the step-4 checkpoint of that run, in a fresh folder, and compare steps 5..8
    ck4 = os.path.join(a, "ckpt-000004.pt")
    d = tmp_path / "d"
    train.train(tiny_cfg(d, "--max_iters=8", "--save_interval=4", f"--resume={ck4}"))
    resumed = [r["loss"] for r in read_metrics(d) if "loss" in r]
    assert [r["step"] for r in read_metrics(d) if "loss" in r] == [5, 6, 7, 8]
    assert resumed == pytest.approx(full[4:], rel=1e-6, abs=1e-7)
    sa = torch.load(os.path.join(a, "ckpt-000008.pt"), weights_only=True)["model"]
    sd = torch.load(os.path.join(d, "ckpt-000008.pt"), weights_only=True)["model"]
    for k in sa:
        torch.testing.assert_close(sd[k], sa[k], rtol=1e-6, atol=1e-7)


def test_keep_last_and_best(tmp_path):
    train.train(tiny_cfg(tmp_path, "--max_iters=9", "--save_interval=2", "--keep_last=2", "--eval_interval=3"))
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tmp_path, "*.pt")))
    assert names == ["best.pt", "ckpt-000008.pt", "ckpt-000009.pt"]
    assert not glob.glob(os.path.join(tmp_path, "*.tmp"))
    evals = [r for r in read_metrics(tmp_path) if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6, 9]
    best = torch.load(os.path.join(tmp_path, "best.pt"), weights_only=True)
    want = max(evals, key=lambda r: -r["val_loss"])
    assert best["step"] == want["step"] and best["best"] == pytest.approx(-want["val_loss"])
    assert "optimizer" not in best and not any(k.startswith("_orig_mod.") for k in best["model"])
    with pytest.raises(SystemExit, match="weights only"):
        train.train(tiny_cfg(tmp_path / "x", "--max_iters=10", f"--resume={tmp_path}/best.pt"))
    # resume=auto picks the latest checkpoint
    s = train.train(tiny_cfg(tmp_path, "--max_iters=10", "--save_interval=2", "--keep_last=2", "--resume=auto"))
    assert s["step"] == 10


def test_time_budget_stops_and_saves(tmp_path):
    s = train.train(tiny_cfg(tmp_path, "--max_iters=100000", "--max_time=2"))
    assert s["stop_reason"] == "max_time" and 0 < s["step"] < 100000
    assert os.path.exists(os.path.join(tmp_path, f"ckpt-{s['step']:06d}.pt"))


def test_nonfinite_step_is_skipped_and_reported(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Transformer.forward

    def poisoned(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if kw.get("loss_fn") is not None and self.training:  # a training step's forward
            calls["n"] += 1
            if calls["n"] in bad:
                out = out * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", poisoned)
    bad = {3}
    train.train(tiny_cfg(tmp_path, "--max_iters=5", "--save_interval=1", "--keep_last=10"))
    skipped = [r for r in read_metrics(tmp_path) if r.get("event") == "skipped_nonfinite"]
    assert len(skipped) == 1 and skipped[0]["step"] == 3 and skipped[0]["example_ids"]
    w2 = torch.load(os.path.join(tmp_path, "ckpt-000002.pt"), weights_only=True)["model"]
    w3 = torch.load(os.path.join(tmp_path, "ckpt-000003.pt"), weights_only=True)["model"]
    assert all(torch.equal(w2[k], w3[k]) for k in w2), "the poisoned step must not change the weights"
    assert all(torch.isfinite(v).all() for v in w3.values())
    # the guard acts on the GPU and the host hears of it a step later: with no checkpoint or log in between, the
    # report still names the right step and the skipped update leaves AdamW's step count behind by exactly one
    calls["n"] = 0
    train.train(tiny_cfg(tmp_path / "lag", "--max_iters=6", "--save_interval=100", "--log_interval=100",
                         "--eval_interval=100"))
    skipped = [r for r in read_metrics(tmp_path / "lag") if r.get("event") == "skipped_nonfinite"]
    assert [r["step"] for r in skipped] == [3]
    opt_state = torch.load(os.path.join(tmp_path / "lag", "ckpt-000006.pt"), weights_only=True)["optimizer"]["state"]
    assert {float(v["step"]) for v in opt_state.values()} == {5.0}
    # several in a row: a clear stop
    calls["n"], bad = 0, set(range(2, 100))
    with pytest.raises(training.TrainingError, match="non-finite steps in a row"):
        train.train(tiny_cfg(tmp_path / "b", "--max_iters=20", "--max_bad_steps=3"))


def test_end_to_end_cli_train_then_sample(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "train.py", *TINY, "--max_iters=3", f"--out_dir={out}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3/3" in r.stdout and os.path.exists(out / "ckpt-000003.pt") and os.path.exists(out / "config.json")
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(out / "ckpt-000003.pt"), "--prompt", "What is 2 + 3?",
                        "--max-new-tokens", "8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_experiment_config_loads():
    import rl
    files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
    assert len(files) >= 3
    for f in files:
        cfg = (rl if "grpo" in f else train).load_config([f])  # rl.py's configs hold its own keys
        assert cfg.out_dir.startswith("out")


def test_resume_refuses_changed_data_settings(tmp_path):
    train.train(tiny_cfg(tmp_path, "--max_iters=2", "--save_interval=2"))
    with pytest.raises(SystemExit, match=r"cannot resume .*global batch .*checkpoint 4 rows, now 8 x 1 x 1"):
        train.train(tiny_cfg(tmp_path, "--max_iters=4", "--resume=auto", "--batch_size=8"))
    s = train.train(tiny_cfg(tmp_path, "--max_iters=4", "--resume=auto", "--log_interval=2"))  # run length may change
    assert s["step"] == 4


def test_compiled_model_gives_the_same_loss_and_gradients(tiny_setup):
    model, _, ds = tiny_setup
    b = ds.batch(0, 4)
    args = (b["idx"], b["targets"])
    kw = dict(pos=b["pos"], doc=b["doc"], reduction="sum")
    model.zero_grad()
    eager = model(*args, **kw)
    eager.backward()
    g_eager = grads(model)
    model.zero_grad()
    compiled = torch.compile(model)(*args, **kw)
    compiled.backward()
    g_comp = grads(model)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-6)
    for k in g_eager:
        torch.testing.assert_close(g_comp[k], g_eager[k], rtol=1e-4, atol=1e-6)


def test_init_from_our_own_checkpoints(tmp_path):
    # best.pt, a ckpt-*.pt file and the run folder all start a new run from those weights, with their tokenizer
    a = tmp_path / "a"
    train.train(tiny_cfg(a, "--max_iters=3", "--eval_interval=3"))
    want = torch.load(a / "best.pt", weights_only=True)["model"]
    for src in (a / "best.pt", a / "ckpt-000003.pt", a):
        model, tok, _ = train.build_model(tiny_cfg(tmp_path / "b", f"--init_from={src}"), "cpu")
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in want.items()), src
        assert tok.name == "math"
    s = train.train(tiny_cfg(tmp_path / "b", f"--init_from={a}/best.pt", "--max_iters=2"))
    assert s["step"] == 2 and s["loss"] > 0


def test_flex_attention_path_equals_bool_mask_path_and_examples_alone(tiny_setup):
    # the training path on CUDA: packed rows through flex attention with a BlockMask built from the document ids
    # (compile_blocks; here uncompiled, the same code path). Loss and per-example logits must equal the boolean-mask
    # SDPA path and each example run alone (fp32). Flex attention has no backward on the CPU: bench.py train
    # compares the gradients of the two paths on the GPU.
    import warnings
    model, _, ds = tiny_setup
    b = ds.batch(0, 4)
    kw = dict(pos=b["pos"], doc=b["doc"], reduction="sum", loss_index=b["loss_index"])
    with torch.no_grad():
        ref = model(b["idx"], b["targets"], **kw)
        logits_ref = model(b["idx"], pos=b["pos"], doc=b["doc"])
        model.compile_blocks(compile=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # flex attention warns that uncompiled it is slow
                flex = model(b["idx"], b["targets"], **kw)
                logits = model(b["idx"], pos=b["pos"], doc=b["doc"])
        finally:
            model.uncompile()
        assert flex.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-5)
        row = ds.plan(0)[1]
        t = 0
        for i in row:
            ids = torch.tensor([ds.examples[i]["ids"]])
            torch.testing.assert_close(logits[1, t:t + ids.size(1)], model(ids)[0], atol=1e-5, rtol=1e-5)
            t += ids.size(1)


def test_activation_budget_is_off_when_every_block_is_recomputed(tiny_setup):
    # the budget makes the compiled backward recompute part of a block; under full checkpointing that would
    # recompute the recomputation, for no memory saved
    model = tiny_setup[0]
    try:
        for ckpt, want in ((0, 0.7), (1, 0.7), (-1, 1.0), (model.config.n_layer, 1.0)):
            model.grad_checkpointing = ckpt
            model.compile_blocks(compile=False, activation_budget=0.7)
            assert torch._functorch.config.activation_memory_budget == want
    finally:
        model.grad_checkpointing = 0
        model.uncompile()
        torch._functorch.config.activation_memory_budget = 1.0


def test_partial_grad_checkpointing_gives_the_same_gradients(tiny_setup):
    model, _, ds = tiny_setup
    b = ds.batch(0, 2)
    kw = dict(pos=b["pos"], doc=b["doc"], reduction="sum")
    out = {}
    for n in (0, 1, -1):  # none, the first block, every block
        model.grad_checkpointing = n
        model.zero_grad()
        model(b["idx"], b["targets"], **kw).backward()
        out[n] = grads(model)
    model.grad_checkpointing = 0
    for n in (1, -1):
        for k, g in out[n].items():
            torch.testing.assert_close(g, out[0][k], rtol=1e-5, atol=1e-7)
