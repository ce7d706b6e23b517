"""training.py, the library under train.py and rl.py: per-token losses through the fused chunked loss, the config
loader for any dataclass, and a loop of one's own built from the pieces (what rl.py does) that checkpoints and
resumes exactly."""
import dataclasses
import os
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint as C  # noqa: E402
import config  # noqa: E402
import data  # noqa: E402
import model as M  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402


def _tiny():
    torch.manual_seed(0)
    return M.Transformer(M.ModelConfig(vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                       intermediate_size=48, qkv_bias=True, tie_embeddings=False))


@pytest.mark.parametrize("chunk", [7, 1024])
def test_per_token_loss_equals_autograd_through_full_logits(chunk):
    # a loss that is not linear in the log-probabilities (PPO's clipped ratio against old log-probs, per-token
    # advantages): the fused loss computes each chunk's gradient in the forward pass from d fn / d logp; it must
    # equal autograd through the whole (B, T, V) log-softmax, and logp the targets' log-probabilities
    m = _tiny()
    m.loss_chunk = chunk
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 96, (3, 12), generator=g), torch.randint(0, 96, (3, 12), generator=g)
    targets[0, :5] = -100
    index = (targets.flatten() != -100).nonzero().squeeze(1)
    adv = torch.randn(len(index), generator=g)
    old = -4.6 + 0.3 * torch.randn(len(index), generator=g)  # near log(1/96): some ratios clip, some not

    def fn(lp, sl):
        ratio = (lp - old[sl]).exp()
        return -torch.minimum(ratio * adv[sl], ratio.clamp(0.8, 1.2) * adv[sl])

    ref_logp = F.log_softmax(m(idx).float(), -1).flatten(0, 1)[index, targets.flatten()[index]]
    ref = fn(ref_logp, slice(0, len(index))).sum()
    ref.backward()
    want = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad()
    loss, logp = m.token_loss(m.hidden(idx), targets, index, fn)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and not logp.requires_grad
    torch.testing.assert_close(logp, ref_logp.detach(), rtol=1e-5, atol=1e-5)
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[k], rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the no-grad path (old / reference log-probs) gives the same numbers
        loss2, logp2 = m.token_loss(m.hidden(idx), targets, index, fn)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6) and torch.equal(logp2, logp)


def test_config_loader_serves_any_dataclass(tmp_path, capsys):
    @dataclasses.dataclass
    class Other:
        group_size: int = 8  # samples per prompt
        lr: float = 1e-6
    p = tmp_path / "exp.py"
    p.write_text("group_size = 4\n")
    cfg = config.parse_config(Other, [str(p), "--lr=2e-6"], script="rl.py")
    assert (cfg.group_size, cfg.lr) == (4, 2e-6)
    with pytest.raises(SystemExit, match="did you mean 'group_size'"):
        config.parse_config(Other, ["--group_sise=3"])
    with pytest.raises(SystemExit):
        config.parse_config(Other, ["-h"], script="rl.py")
    assert "python rl.py" in capsys.readouterr().out


def test_a_loop_built_from_the_library_checkpoints_and_resumes_exactly(tmp_path):
    cfg = train.load_config(["--n_layer=1", "--n_embd=32", "--n_head=2", "--seq_len=96", "--lr=1e-3"])
    env = training.setup("cpu", "float32")

    def late_tokens_count_double(model, x, batch):  # a custom per-token loss: the later half of the answers x2
        n = len(batch["loss_index"])
        w = 1.0 + (torch.arange(n) >= n // 2).float()
        return model.token_loss(x, batch["targets"], batch["loss_index"], lambda lp, sl: -w[sl] * lp)[0]

    def run(steps, resume=None):
        model, tok, part = training.build_model(cfg, env.device)
        ds, _ = data.build_datasets("arith2", tok, 96, "plain", max_samples=64, seed=0)
        opt, params = training.make_optimizer(model, cfg)
        step, losses = 0, []
        if resume:
            ck = C.load_for_resume(resume, dataclasses.asdict(cfg), train.RESUME_KEYS, 4, "rows", "4")
            model.load_state_dict(ck["model"])
            step, _ = C.restore_training_state(ck, model, opt)
        while step < steps:
            loss, _ = training.forward_backward(model, [ds.batch(step * 4, 4)], env.ctx, None, env.device,
                                                loss_fn=late_tokens_count_double)
            losses.append(training.apply_update(opt, params, loss, cfg.grad_clip)[0].item())
            step += 1
            if step == 3:
                training.save_run(str(tmp_path / "ckpt-000003.pt"), model, opt, env, step, None, False, part,
                                  dataclasses.asdict(cfg), global_batch=4)
        return model, losses

    whole, losses = run(6)
    resumed, tail = run(6, resume=str(tmp_path / "ckpt-000003.pt"))
    assert tail == losses[3:] and losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_bf16_working_weights_train_bit_for_bit_as_autocast_casts(one_thread):
    # wrap_model(working=True) (rl.py's) gives the fp32 weights bf16 working copies; the update must equal
    # autocast's cast-at-every-call (train.py's),
    # exactly: the same bf16 products, gradients upcast to fp32 and summed over micro-batches in fp32. The
    # copies follow each optimizer step (fused AdamW) by the version counters: a stale copy changes the losses.
    cfg = train.load_config(["--n_layer=2", "--n_embd=32", "--n_head=2", "--seq_len=96", "--lr=3e-3"])
    env = training.setup("cpu", "bfloat16")
    runs = []
    for working in (False, True):
        model, tok, _ = training.build_model(cfg, env.device)
        ds, _ = data.build_datasets("arith2", tok, 96, "plain", pack=True, max_samples=200, seed=0)
        model, _ = training.wrap_model(model, env, compile=False, working=working)
        assert len(model.working) == (2 * 7 + 1 if working else 0)  # every projection and the output head
        opt, params = training.make_optimizer(model, cfg)
        losses = []
        for step in range(20):
            micro = [ds.batch((2 * step + i) * 2, 2) for i in range(2)]  # packed rows, 2 micro-batches
            loss, _ = training.forward_backward(model, micro, env.ctx, None, env.device)
            losses.append(training.apply_update(opt, params, loss, cfg.grad_clip)[0].item())
        runs.append((model, losses))
    (a, la), (b, lb) = runs
    assert la == lb and la[-1] < la[0]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with env.ctx, torch.no_grad():
        x = torch.randint(0, 20, (2, 9))
        assert torch.equal(a(x), b(x))  # the forward recast the copies the last update left stale
    assert all(torch.equal(m.working, m.weight.detach().to(torch.bfloat16)) for m, _, _ in b.working)


def test_working_copies_follow_weights_changed_outside_the_optimizer(one_thread):
    # a load or any in-place change reaches the copies at the next forward and the next Engine.generate (whose
    # CUDA graph would otherwise replay stale copies)
    from engine import Engine, Sampling
    ctx = torch.autocast("cpu", dtype=torch.bfloat16)
    m, ref = _tiny(), _tiny()
    m.set_working_dtype(torch.bfloat16)
    engine = Engine(m, slots=4, max_len=32, max_new_tokens=8, ctx=ctx)
    prompts, greedy = [[1, 2, 3], [4, 5]], Sampling(8)
    engine.generate(prompts, greedy)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.load_state_dict(m.state_dict())  # no working copies: autocast casts the changed weights
    got = [s.ids for s in engine.generate(prompts, greedy)]
    assert got == [s.ids for s in Engine(ref, 4, 32, 8, ctx=ctx).generate(prompts, greedy)]
    m.load_state_dict(_tiny().state_dict())
    with ctx, torch.no_grad():
        x = torch.randint(0, 96, (2, 7))
        assert torch.equal(m(x), _tiny()(x))
    other = M.Transformer(m.config)
    m.load_state_dict(other.state_dict(), assign=True)  # new weight tensors, not new values
    with ctx, torch.no_grad():
        assert torch.equal(m(x), other(x))
    m.set_working_dtype(None)
    assert m.working == [] and m.lm_head.working is None


def test_last_saved_is_read_once_at_the_start(tmp_path):
    # the loops' final save asks last_saved() and then their own memory, never the file system at the end: rank 0
    # writes checkpoints in the background, and a rank that looked for the file before rank 0 renamed it took the
    # save alone and waited at its barrier forever
    from training import last_saved
    assert last_saved(None, str(tmp_path)) == -1  # a fresh run
    (tmp_path / "ckpt-000040.pt").write_bytes(b"")
    assert last_saved({"step": 40}, str(tmp_path)) == 40  # resumed in its own folder: that step is on disk
    assert last_saved({"step": 40}, str(tmp_path / "elsewhere")) == -1  # resumed into another folder: save it there
    for script in ("train.py", "rl.py"):
        src = open(os.path.join(ROOT, script)).read()
        assert "if saved != step:" in src and 'os.path.exists(os.path.join(cfg.out_dir, f"ckpt' not in src
