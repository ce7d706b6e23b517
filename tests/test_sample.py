"""sample.py: KV-cached decoding vs full forward, batch vs alone, stop tokens, seeded sampling, streaming of split
UTF-8, the generate-and-grade loop (grading, pass@k / maj@k, mode restore), the CLI (--eval, prompts, errors) and
export to a folder transformers loads and generates from identically."""

import dataclasses
import io
import json
import os

import pytest
import torch

import data
import grade as G
import sample as S
import train
from model import ModelConfig, Transformer
from tokenizer import load_tokenizer



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: a second thread only adds OpenMP hand-offs (and stalls badly on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = [[5, 17, 99, 3, 42, 8, 61], [7, 7, 120], [33, 2, 90, 14, 71, 11, 4, 19, 56, 23, 100], [9]]


def _randomize(model, seed):
    # the default init gives near-uniform logits whose argmax is decided by float noise; larger weights make
    # greedy decoding well defined, so "same output" tests test the decoding, not rounding luck
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name
                    else 0.08 * torch.randn(p.shape, generator=g))
    return model.eval()


def _tiny(vocab=128, seed=0, **kw):
    cfg = dict(vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=96, max_seq_len=256,
               rope_theta=1e4, qkv_bias=True, tie_embeddings=False)
    cfg.update(kw)
    return _randomize(Transformer(ModelConfig(**cfg)), seed)


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def math_tok():
    return load_tokenizer("math")


def _greedy_uncached(model, prompt, n, stop=()):
    """Reference: the full sequence through the model at every step, no cache."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids]))[0, -1].argmax())
            if t in stop:
                break
            out.append(t)
            ids.append(t)
    return out


class _Force:
    """lm_head forward hook that makes token plan[c] the argmax at the c-th model call (0 = prefill), for every
    row; None = leave the logits alone."""

    def __init__(self, plan):
        self.plan, self.calls = plan, 0

    def __call__(self, module, inp, out):
        c, self.calls = self.calls, self.calls + 1
        if c < len(self.plan) and self.plan[c] is not None:
            out = out.clone()
            out[..., self.plan[c]] += 1e4
        return out

# -----------------------------------------------------------------------------
# decoding


def test_cached_equals_uncached(model):
    ids, ents = S.generate(model, PROMPTS, 16)
    for p, out, ent in zip(PROMPTS, ids, ents):
        assert out == _greedy_uncached(model, p, 16)
        assert len(ent) == len(out) == 16 and all(0 <= e <= torch.log(torch.tensor(128.0)) + 1e-4 for e in ent)
    # the entropy is the model's next-token entropy at each generated position
    p, out = PROMPTS[1], ids[1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + out]))[0, len(p) - 1:-1].float(), -1)
    assert torch.allclose(torch.tensor(ents[1]), -(logp.exp() * logp).sum(-1), atol=1e-4)


def test_batch_equals_alone(model):
    alone = [S.generate(model, [p], 12)[0][0] for p in PROMPTS]
    for bs in (0, 2, 3):  # one batch, and sorted batches that mix lengths differently
        assert S.generate(model, PROMPTS, 12, batch_size=bs)[0] == alone
    # prompts of equal length but different content, and duplicates, come back in input order
    ps = [PROMPTS[2], PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    assert S.generate(model, ps, 12, batch_size=2)[0] == [alone[2], alone[0], alone[2], alone[3]]


def test_stops_at_each_stop_token(model, math_tok):
    full = S.generate(model, PROMPTS, 12)[0]
    # a stop id that is the greedy choice at some step ends the row just before it; rows stop at different steps
    # in one batch, and the finished rows' continued decoding must not leak into anyone's output
    s1, s2 = full[0][3], full[2][6]
    got = S.generate(model, PROMPTS, 12, stop_ids={s1, s2})[0]
    for p, f, g in zip(PROMPTS, full, got):
        cut = next((k for k, t in enumerate(f) if t in (s1, s2)), len(f))
        assert g == f[:cut] == _greedy_uncached(model, p, 12, stop=(s1, s2))
    assert len(got[0]) <= 3 and len(got[2]) <= 6
    # each of the tokenizer's end tokens (math and Qwen tokenizers: <|im_end|> and <|endoftext|>) stops generation
    m = _tiny(vocab=4096, seed=1)
    stops = math_tok.stop_ids
    assert stops == {math_tok.special["<|im_end|>"], math_tok.special["<|endoftext|>"]}
    for s in sorted(stops):
        for at in (0, 4):  # forced as the first token, and as the fifth
            h = m.lm_head.register_forward_hook(_Force([None] * at + [s]))
            try:
                out = S.generate(m, [[5, 6, 7]], 10, stop_ids=stops)[0][0]
            finally:
                h.remove()
            assert len(out) == at and s not in out
    assert len(S.generate(m, [[5, 6, 7]], 10, stop_ids=())[0][0]) == 10  # without stops it runs to the limit


def test_context_limit(model):
    m = _tiny(max_seq_len=16)
    out = S.generate(m, [[1] * 10, [2] * 4], 50)[0]
    assert [len(o) for o in out] == [6, 12]  # each row fills the context on its own, whatever its batch mates
    assert out[1] == S.generate(m, [[2] * 4], 50)[0][0]
    with pytest.raises(ValueError, match=r"prompt 1 has 16 tokens.*max_seq_len=16"):
        S.generate(m, [[1], [1] * 16], 4)


def test_sampling_is_seeded(model):
    kw = dict(temperature=1.0, top_k=50, top_p=0.95)
    a = S.generate(model, PROMPTS, 16, seed=0, **kw)[0]
    assert a == S.generate(model, PROMPTS, 16, seed=0, **kw)[0]
    assert a != S.generate(model, PROMPTS, 16, seed=1, **kw)[0]
    greedy = S.generate(model, PROMPTS, 16)[0]
    assert a != greedy
    # top_k=1 and a vanishing top_p leave only the argmax
    assert S.generate(model, PROMPTS, 16, temperature=1.0, top_k=1, seed=3)[0] == greedy
    assert S.generate(model, PROMPTS, 16, temperature=1.0, top_p=1e-6, seed=3)[0] == greedy


def test_sample_next_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(40000, 1)
    freq = torch.bincount(S.sample_next(logits, 1.0, generator=g), minlength=4) / 40000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01)
    freq = torch.bincount(S.sample_next(logits, 1.0, top_k=2, generator=g), minlength=4) / 40000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.01)
    # top_p=0.7: 0.5 alone is below 0.7, so 0.3 is kept too; 0.15 is dropped (0.8 already before it)
    freq = torch.bincount(S.sample_next(logits, 1.0, top_p=0.7, generator=g), minlength=4) / 40000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.01)
    freq = torch.bincount(S.sample_next(logits, 0.5, generator=g), minlength=4) / 40000  # p^2, renormalised
    assert torch.allclose(freq, torch.tensor([25, 9, 2.25, 0.25]) / 36.5, atol=0.01)


def test_stream_and_split_utf8(model, math_tok):
    seen = []
    ids = S.generate(model, PROMPTS, 8, stream=lambda i, t: seen.append((i, t)))[0]
    for i, out in enumerate(ids):
        assert [t for j, t in seen if j == i] == out
    # characters split across byte tokens are printed whole, once complete
    ids = math_tok.encode("π ≤ é 你好 ∑ x")
    assert any(not _utf8_ok(math_tok.token_bytes(t)) for t in ids)  # the test needs split characters
    buf = io.StringIO()
    st = S.TextStream(math_tok, buf)
    for t in ids:
        st(0, t)
        assert "\ufffd" not in buf.getvalue()
    st.close()
    assert buf.getvalue() == math_tok.decode(ids) + "\n"


def _utf8_ok(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False

# -----------------------------------------------------------------------------
# generate and grade


def test_evaluate_grades_and_reports(math_tok):
    m = _tiny(vocab=4096, seed=2)
    probs = data.load_dataset("gsm8k", "test")[:2]
    assert probs[0]["answer"] == "18"
    answer = math_tok.encode(" so \\boxed{18}")
    stop = min(math_tok.stop_ids)
    # every row is forced to say "... \boxed{18}" and stop: right for problem 0, wrong for problem 1
    h = m.lm_head.register_forward_hook(_Force(answer + [stop]))
    m.train()
    try:
        summary, records = S.evaluate(m, math_tok, probs, "plain", data.SYSTEM_PROMPT, max_new_tokens=20,
                                      batch_size=2, device="cpu", ctx=torch.autocast("cpu", enabled=False), seed=0)
    finally:
        h.remove()
    assert m.training  # mode restored
    assert [r["correct"] for r in records] == [True, False]
    assert all(r["formatted"] and r["extracted"] == "18" and r["n_tokens"] == len(answer) and not r["truncated"]
               for r in records)
    assert records[0]["response"] == math_tok.decode(answer) and records[1]["gold"] == probs[1]["answer"]
    assert set(records[0]) >= {"id", "prompt", "response", "extracted", "gold", "correct", "formatted", "n_tokens"}
    assert summary["accuracy"] == summary["answer_reward"] == 0.5
    assert summary["format_rate"] == summary["format_reward"] == 1.0
    assert summary["n"] == 2 and summary["mean_length"] == len(answer) and summary["tokens_per_s"] > 0
    assert 0 <= summary["mean_entropy"] < 1e-3  # the forced tokens are certain


def test_evaluate_deterministic_and_samples(math_tok):
    m = _tiny(vocab=4096, seed=3)
    probs = data.load_dataset("arith", "test")[:3]
    s1, r1 = S.evaluate(m, math_tok, probs, "plain", "", max_new_tokens=6, batch_size=2)
    s2, r2 = S.evaluate(m, math_tok, probs, "plain", "", max_new_tokens=6, batch_size=2)
    assert r1 == r2 and {**s1, "tokens_per_s": 0} == {**s2, "tokens_per_s": 0}
    s3, r3 = S.evaluate(m, math_tok, probs, "plain", "", max_new_tokens=6, batch_size=3)
    assert r3 == r1 and abs(s3["mean_entropy"] - s1["mean_entropy"]) < 1e-5
    assert not m.training
    summary, records = S.evaluate(m, math_tok, probs, "plain", "", max_new_tokens=6, temperature=1.0, seed=0,
                                  num_samples=3)
    assert len(records) == 9 and [r["sample"] for r in records[:3]] == [0, 1, 2]
    assert [r["id"] for r in records] == [p["id"] for p in probs for _ in range(3)]
    assert {"pass@3", "maj@3"} <= set(summary) and summary["n_problems"] == 3


def test_majority_vote():
    def rec(x, ok):
        return {"extracted": x, "correct": ok}
    # 0.5 and 1/2 are one answer (two votes) and beat 3 (one vote); None never wins
    assert S._majority([rec("3", False), rec("0.5", True), rec("\\frac{1}{2}", True), rec(None, False)])["correct"]
    assert S._majority([rec("4", False), rec("5", True)])["extracted"] == "4"  # tie: the earliest
    assert S._majority([rec(None, False)]) is None

# -----------------------------------------------------------------------------
# command line and checkpoints


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, math_tok):
    """A checkpoint folder laid out as train.py writes it: best.pt + tokenizer/ (+ its config.json)."""
    d = tmp_path_factory.mktemp("run")
    m = _tiny(vocab=4096, seed=4, max_seq_len=512, qkv_bias=False, tie_embeddings=True)
    cfg = dataclasses.asdict(train.Config(prompt_format="plain", system_prompt=""))
    state = {"model": m.state_dict(), "model_config": dataclasses.asdict(m.config), "config": cfg, "step": 2,
             "best": None, "tokenizer_dir": "tokenizer"}
    math_tok.save(str(d / "tokenizer"))
    train.save_atomic(state, str(d / "best.pt"))
    (d / "config.json").write_text(json.dumps(cfg))  # train.py's run config, not an HF config
    return d


def test_cli_eval_writes_jsonl_and_summary(ckpt_dir, tmp_path, capsys):
    out = tmp_path / "ev.jsonl"
    summary = S.main(["--ckpt", str(ckpt_dir), "--eval", "gsm8k", "--max-samples", "3", "--max-new-tokens", "8",
                      "--out", str(out)])
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    probs = data.load_dataset("gsm8k", "test")[:3]
    assert [r["id"] for r in rows] == [p["id"] for p in probs]
    for r in rows:
        g = G.grade(r["response"], r["gold"])
        assert (r["correct"], r["formatted"], r["extracted"]) == (g.correct, g.formatted, g.extracted)
        assert 0 < r["n_tokens"] <= 8
    saved = json.loads((tmp_path / "ev.summary.json").read_text())
    assert saved["n"] == 3 and saved["accuracy"] == summary["accuracy"] == sum(r["correct"] for r in rows) / 3
    assert saved["settings"]["prompt_format"] == "plain" and saved["settings"]["max_new_tokens"] == 8
    assert "accuracy" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))
    # the same generations as evaluate() on the checkpoint file itself (one path for CLI and train.py)
    model, tok, info = S.load_model(str(ckpt_dir / "best.pt"))
    assert info["kind"] == "nanomath" and info["prompt_format"] == "plain"
    _, recs = S.evaluate(model, tok, probs, "plain", "", max_new_tokens=8)
    assert [r["response"] for r in recs] == [r["response"] for r in rows]


def test_cli_prompts_and_stream(ckpt_dir, tmp_path, capsys, monkeypatch):
    model, tok, _ = S.load_model(str(ckpt_dir))
    want = [tok.decode(S.generate(model, [data.render_prompt(tok, q, "plain")], 6, stop_ids=tok.stop_ids)[0][0])
            for q in ("What is 2 + 3?", "What is 7 - 4?")]
    S.main(["--ckpt", str(ckpt_dir), "--prompt", "What is 2 + 3?", "--max-new-tokens", "6"])
    assert capsys.readouterr().out == want[0] + "\n"  # streamed
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "What is 2 + 3?"}) + "\n\n" + json.dumps({"prompt": "What is 7 - 4?"}) + "\n")
    outs = S.main(["--ckpt", str(ckpt_dir), "--prompts", str(f), "--max-new-tokens", "6"])
    assert [tok.decode(o) for o in outs] == want
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\nWhat is 7 - 4?\n"))
    outs = S.main(["--ckpt", str(ckpt_dir), "--max-new-tokens", "6"])
    assert [tok.decode(o) for o in outs] == want
    f.write_text('{"question": "ok"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: expected an object with a 'prompt'"):
        S.read_prompts(str(f))


def test_cli_errors(ckpt_dir, tmp_path, capsys):
    with pytest.raises(SystemExit, match="checkpoint .*nope.* not found"):
        S.main(["--ckpt", str(tmp_path / "nope"), "--prompt", "x"])
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="junk.pt: not a readable nanomath checkpoint"):
        S.main(["--ckpt", str(junk), "--prompt", "x"])
    with pytest.raises(SystemExit) as e:
        S.main(["--ckpt", str(ckpt_dir), "--eval", "gsm9k"])
    assert e.value.code == 2 and "unknown dataset 'gsm9k'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"prompt 0 has \d+ tokens.*max_seq_len=512"):
        S.main(["--ckpt", str(ckpt_dir), "--prompt", "1 + " * 600])
    with pytest.raises(SystemExit):
        S.main(["--ckpt", str(ckpt_dir), "--prompt", "x", "--num-samples", "2"])  # greedy samples are pointless

# -----------------------------------------------------------------------------
# export


def test_export_hf_generates_identically(ckpt_dir, tmp_path):
    import transformers
    # a Qwen-vocab model (tied, q/k/v biases) with the real Qwen2.5 tokenizer: the full text path
    qtok = load_tokenizer(os.path.join(HERE, "fixtures", "qwen2.5"))
    m = _tiny(vocab=151936, seed=5, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=64, tie_embeddings=True)
    out = tmp_path / "hf"
    S.export_hf(m, qtok, str(out))
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert sorted(gen_cfg["eos_token_id"]) == sorted(qtok.stop_ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    q = "What is 2 + 3?"
    ours = data.render_prompt(qtok, q, "chat")
    msgs = data.prompt_messages(q)
    theirs = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(theirs) == ours
    ids = S.generate(m, [ours], 12, stop_ids=qtok.stop_ids)[0][0]
    with torch.no_grad():
        g = hf.generate(torch.tensor([ours]), max_new_tokens=12, do_sample=False)[0, len(ours):].tolist()
    g = g[:next((k for k, t in enumerate(g) if t in qtok.stop_ids), len(g))]
    assert ids == g and len(ids) > 0
    assert hf_tok.decode(g) == qtok.decode(ids)
    # the exported folder loads back here as a chat model
    m2, tok2, info = S.load_model(str(out))
    assert info == {"kind": "hf", "path": str(out), "prompt_format": "chat", "system_prompt": data.SYSTEM_PROMPT}
    assert S.generate(m2, [ours], 12, stop_ids=tok2.stop_ids)[0][0] == ids
    # and through the CLI, from a training checkpoint (math tokenizer: transformers loads the model part)
    S.main(["--ckpt", str(ckpt_dir), "--export-hf", str(tmp_path / "hf2")])
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf2")).eval()
    m3, tok3, _ = S.load_model(str(ckpt_dir))
    p = data.render_prompt(tok3, "What is 2 + 3?", "plain")
    with torch.no_grad():
        g = hf2.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None)[0, len(p):]
    assert S.generate(m3, [p], 10)[0][0] == g.tolist()
