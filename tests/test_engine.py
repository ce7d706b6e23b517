"""engine.py: KV-cached decoding vs full forward, batch vs alone, stop tokens, seeded sampling, streaming of split
UTF-8, and the generate-and-grade loop (grading, pass@k / maj@k, mode restore)."""

import pytest
import torch

import data
import engine as E
from conftest import tiny_model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


PROMPTS = [[5, 17, 99, 3, 42, 8, 61], [7, 7, 120], [33, 2, 90, 14, 71, 11, 4, 19, 56, 23, 100], [9]]
_tiny = tiny_model


@pytest.fixture(scope="module")
def model():
    return _tiny()


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


def generate(model, prompts, n, temperature=0.0, top_k=0, top_p=1.0, seed=0, stop_ids=(), **kw):
    """engine.generate with the sampling settings as keywords."""
    sampling = E.Sampling(n, temperature, top_k, top_p, seed, tuple(sorted(stop_ids)))
    return E.generate(model, prompts, sampling, **kw)


def gen(model, prompts, n, **kw):
    return [smp.ids for smp in generate(model, prompts, n, **kw)]


def test_cached_equals_uncached(model):
    samples = generate(model, PROMPTS, 16, entropy=True)
    for p, smp in zip(PROMPTS, samples):
        assert smp.ids == _greedy_uncached(model, p, 16) and not smp.stopped
        assert len(smp.entropy) == 16 and all(0 <= e <= torch.log(torch.tensor(128.0)) + 1e-4 for e in smp.entropy)
    # the entropy is the model's next-token entropy at each generated position
    p, out = PROMPTS[1], samples[1].ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + out]))[0, len(p) - 1:-1].float(), -1)
    assert torch.allclose(torch.tensor(samples[1].entropy), -(logp.exp() * logp).sum(-1), atol=1e-4)
    assert generate(model, PROMPTS, 4)[0].entropy is None  # not computed unless asked


def test_continuous_batching_equals_one_prompt_at_a_time(model):
    # 12 prompts of mixed lengths through 3 slots; two stop ids make rows end at different steps, so slots are
    # refilled while the other rows are mid-sequence. Every output equals the prompt decoded alone, uncached.
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 128, (int(n),), generator=g).tolist() for n in torch.randint(1, 14, (12,), generator=g)]
    full = gen(model, prompts, 10)
    stops = {full[0][2], full[5][6]}
    want = [_greedy_uncached(model, p, 10, stop=stops) for p in prompts]
    assert len({len(w) for w in want}) > 2  # rows really end at different steps
    for bs in (1, 3, 5, 64):
        samples = generate(model, prompts, 10, stop_ids=stops, batch_size=bs)
        assert [smp.ids for smp in samples] == want, bs
        assert [smp.stopped for smp in samples] == [len(w) < 10 for w in want]
    # prompts of equal length but different content, and duplicates, come back in input order
    ps = [PROMPTS[2], PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    assert gen(model, ps, 12, batch_size=2) == [gen(model, [p], 12)[0] for p in ps]


def test_shared_prefix_samples_equal_separate_prompts(model):
    # k samples of a prompt share one prefill (copied cache rows); they must equal k separate prefills
    kw = dict(temperature=1.0, seed=7)
    shared = gen(model, PROMPTS, 10, num_samples=3, batch_size=4, **kw)
    separate = gen(model, [p for p in PROMPTS for _ in range(3)], 10, batch_size=5, **kw)
    assert shared == separate and len(shared) == 12
    assert len({tuple(x) for x in shared[:3]}) > 1  # the samples of one prompt differ
    # greedy samples of a prompt are all its greedy continuation
    greedy = gen(model, PROMPTS, 10)
    assert gen(model, PROMPTS, 10, num_samples=2, batch_size=3) == [g for g in greedy for _ in range(2)]


def test_stops_at_each_stop_token(model, math_tok):
    full = gen(model, PROMPTS, 12)
    # a stop id that is the greedy choice at some step ends the row just before it; rows stop at different steps
    # in one batch, and the finished rows' continued decoding must not leak into anyone's output
    s1, s2 = full[0][3], full[2][6]
    got = gen(model, PROMPTS, 12, stop_ids={s1, s2})
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
                smp = generate(m, [[5, 6, 7]], 10, stop_ids=stops)[0]
            finally:
                h.remove()
            assert len(smp.ids) == at and s not in smp.ids and smp.stopped
    assert len(gen(m, [[5, 6, 7]], 10, stop_ids=())[0]) == 10  # without stops it runs to the limit


def test_context_limit(model):
    m = _tiny(max_seq_len=16)
    out = gen(m, [[1] * 10, [2] * 4], 50)
    assert [len(o) for o in out] == [6, 12]  # each row fills the context on its own, whatever its batch mates
    assert out[1] == gen(m, [[2] * 4], 50)[0]
    with pytest.raises(ValueError, match=r"prompt 1 has 16 tokens.*max_seq_len=16"):
        generate(m, [[1], [1] * 16], 4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(m, [[1]], 0)


def test_sampling_is_seeded_and_independent_of_the_batch(model):
    kw = dict(temperature=1.0, top_k=50, top_p=0.95)
    a = gen(model, PROMPTS, 16, seed=0, **kw)
    assert a == gen(model, PROMPTS, 16, seed=0, **kw)
    assert a == gen(model, PROMPTS, 16, seed=0, batch_size=1, **kw)  # a sequence's draws are its own
    assert a != gen(model, PROMPTS, 16, seed=1, **kw)
    greedy = gen(model, PROMPTS, 16)
    assert a != greedy
    # top_k=1 and a vanishing top_p leave only the argmax
    assert gen(model, PROMPTS, 16, temperature=1.0, top_k=1, seed=3) == greedy
    assert gen(model, PROMPTS, 16, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_sample_next_distribution():
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(40000, 1)
    freq = lambda **kw: torch.bincount(E.sample_next(logits, E.Sampling(**kw), u=u), minlength=4) / 40000  # noqa: E731
    assert torch.allclose(freq(temperature=1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01)
    assert torch.allclose(freq(temperature=1.0, top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=0.01)
    # top_p=0.7: 0.5 alone is below 0.7, so 0.3 is kept too; 0.15 is dropped (0.8 already before it)
    assert torch.allclose(freq(temperature=1.0, top_p=0.7), torch.tensor([0.625, 0.375, 0, 0]), atol=0.01)
    p2 = torch.tensor([25, 9, 2.25, 0.25]) / 36.5  # temperature 0.5: p^2, renormalised
    assert torch.allclose(freq(temperature=0.5), p2, atol=0.01)
    # the same through the order the sort puts the vocabulary in (top-p), with a shuffled vocabulary
    perm = torch.tensor([2, 0, 3, 1])
    got = torch.bincount(E.sample_next(logits[:, perm], E.Sampling(temperature=1.0, top_p=0.99), u=u), minlength=4) / 40000
    assert torch.allclose(got, torch.tensor([0.5, 0.3, 0.15, 0.05])[perm], atol=0.01)
    assert E.sample_next(logits, E.Sampling()).eq(0).all()  # greedy
    # a -inf logit is never drawn, even at u just below 1
    masked = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]]).repeat(4, 1)
    assert E.sample_next(masked, E.Sampling(temperature=1.0), u=torch.tensor([0.0, 0.5, 0.51, 1 - 2**-24])).tolist() == [1, 1, 3, 3]


def test_two_level_draw_inverts_the_whole_cdf():
    # at a temperature alone sample_next searches the block sums, then one block of VOCAB_BLOCK entries: each
    # draw is the token whose CDF interval (fp64, over the whole vocabulary) holds u, never a -inf one, with a
    # vocabulary that does not fill its last block, a first block all -inf and holes in the middle
    g = torch.Generator().manual_seed(0)
    B, V = 4000, 3 * E.VOCAB_BLOCK + 37
    logits = 3 * torch.randn(B, V, generator=g)
    logits[:, :E.VOCAB_BLOCK] = float("-inf")
    logits[::2, -40:] = float("-inf")  # the other rows fill their last block up to V
    logits[::3, 200:260] = float("-inf")
    u = torch.rand(B, generator=g)
    u[:3] = torch.tensor([0.0, 2**-24, 0.5])
    u[-1000:] = 1 - 2**-24  # the last block with mass, where the block's recomputed sum may round below u
    for T in (1.0, 0.7):
        tok = E.sample_next(logits, E.Sampling(temperature=T), u=u)[:, None]
        p = torch.softmax(logits.double() / T, -1)  # (B, V)
        cdf = p.cumsum(-1)
        assert (p.gather(1, tok) > 0).all()
        lo, hi = (cdf - p).gather(1, tok)[:, 0], cdf.gather(1, tok)[:, 0]
        assert ((lo - 1e-5 <= u) & (u <= hi + 1e-5)).all()


def test_compiled_token_sums_equal_eager():
    # the engine's decode step compiles token_sums (the draw's block sums, the statistics' sums): the same
    # numbers as eager to fp32 rounding, and the same tokens
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(64, 1000, generator=g)).to(torch.bfloat16)
    logits[::5, 100:300] = float("-inf")
    u = torch.rand(64, generator=g)
    fast = torch.compile(E.token_sums, dynamic=False)
    for T, stats in ((1.0, True), (0.8, False), (0.0, True)):
        want, got = E.token_sums(logits, T, stats), fast(logits, T, stats)
        assert [w is None for w in want] == [x is None for x in got]
        for w, x in zip(want, got):
            if w is not None:
                torch.testing.assert_close(x, w, rtol=1e-5, atol=1e-5)
        if T:
            assert E._invert(logits, T, u, *got[:2]).equal(E._invert(logits, T, u, *want[:2]))


def test_compiled_sampling_equals_eager_with_logprobs(model):
    engine = E.Engine(model, 3, 40, 12, compile=True, cuda_graph=False)
    sampling = E.Sampling(12, temperature=1.0, seed=3)
    fast = engine.generate(PROMPTS, sampling, logprobs=True, entropy=True)
    slow = generate(model, PROMPTS, 12, temperature=1.0, seed=3, logprobs=True, entropy=True)
    assert engine.compiled and [s.ids for s in fast] == [s.ids for s in slow]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(a.entropy), torch.tensor(b.entropy), rtol=0, atol=1e-5)


def test_stream_calls_back_every_kept_token(model):
    seen = []
    out = gen(model, PROMPTS, 8, batch_size=2, stream=lambda i, t: seen.append((i, t)))
    for i, ids in enumerate(out):
        assert [t for j, t in seen if j == i] == ids


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
        summary, records = E.evaluate(m, math_tok, probs, E.Sampling(20, seed=0), "plain", data.SYSTEM_PROMPT,
                                      batch_size=2, ctx=torch.autocast("cpu", enabled=False), entropy=True)
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
    timing = {"tokens_per_s": 0, "generate_s": 0, "grade_s": 0}
    s1, r1 = E.evaluate(m, math_tok, probs, E.Sampling(6), "plain", "", batch_size=2, entropy=True)
    s2, r2 = E.evaluate(m, math_tok, probs, E.Sampling(6), "plain", "", batch_size=2, entropy=True)
    assert r1 == r2 and {**s1, **timing} == {**s2, **timing}
    s3, r3 = E.evaluate(m, math_tok, probs, E.Sampling(6), "plain", "", batch_size=3, entropy=True)
    assert r3 == r1 and abs(s3["mean_entropy"] - s1["mean_entropy"]) < 1e-5
    assert "mean_entropy" not in E.evaluate(m, math_tok, probs, E.Sampling(6), "plain", "")[0]
    assert not m.training
    summary, records = E.evaluate(m, math_tok, probs, E.Sampling(6, temperature=1.0, seed=0), "plain", "",
                                  num_samples=3)
    assert len(records) == 9 and [r["sample"] for r in records[:3]] == [0, 1, 2]
    assert [r["id"] for r in records] == [p["id"] for p in probs for _ in range(3)]
    assert {"pass@3", "maj@3"} <= set(summary) and summary["n_problems"] == 3


def test_majority_vote():
    def rec(x, ok):
        return {"extracted": x, "correct": ok}
    # 0.5 and 1/2 are one answer (two votes) and beat 3 (one vote); None never wins
    assert E._majority([rec("3", False), rec("0.5", True), rec("\\frac{1}{2}", True), rec(None, False)])["correct"]
    assert E._majority([rec("4", False), rec("5", True)])["extracted"] == "4"  # tie: the earliest
    assert E._majority([rec(None, False)]) is None



# -----------------------------------------------------------------------------
# an engine a training loop drives: kept between calls, weights changed in place, log-probs, LoRA unmerged


def _greedy_next(model, ids):
    with torch.no_grad():
        return int(model(torch.tensor([ids]))[0, -1].argmax())


def test_logprobs_equal_a_separate_forward_pass(model):
    full = generate(model, PROMPTS, 12)
    stops = {full[0].ids[4], full[2].ids[7]}  # two rows end on a stop token, whose log-prob comes last
    samples = generate(model, PROMPTS, 12, temperature=1.0, seed=3, logprobs=True) + \
        generate(model, PROMPTS, 12, stop_ids=stops, logprobs=True)
    assert sum(s.stopped for s in samples) >= 2
    for p, smp in zip(PROMPTS + PROMPTS, samples):
        ids = smp.ids + ([_greedy_next(model, p + smp.ids)] if smp.stopped else [])  # the stop token, greedy
        assert len(smp.logprobs) == len(ids) == len(smp.ids) + smp.stopped
        with torch.no_grad():
            logits = model(torch.tensor([p + ids]))[0, len(p) - 1:-1].float()  # the logits each token came from
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(smp.logprobs), want, rtol=0, atol=1e-5)
    assert generate(model, PROMPTS, 4)[0].logprobs is None  # not computed unless asked


def test_weights_changed_in_place_reach_the_next_call_as_in_a_fresh_engine():
    m = _tiny(seed=4)
    engine = E.Engine(m, slots=3, max_len=40, max_new_tokens=12)
    sampling = E.Sampling(12, temperature=1.0, seed=1)
    first = [s.ids for s in engine.generate(PROMPTS, sampling, num_samples=2, logprobs=True)]
    with torch.no_grad():  # what an optimizer step does: the same tensors, new values
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    second = [s.ids for s in engine.generate(PROMPTS, sampling, num_samples=2, logprobs=True)]
    fresh = [s.ids for s in E.Engine(m, 3, 40, 12).generate(PROMPTS, sampling, num_samples=2, logprobs=True)]
    assert second == fresh and second != first
    used = engine.memory()
    assert used["cache"] == 2 * 2 * 3 * 2 * 40 * 16 * 4 + 3 * 8 and used["state"] > 0  # k, v (fp32) and pos
    engine.free()
    assert engine.cache is None
    assert [s.ids for s in engine.generate(PROMPTS, sampling, num_samples=2)] == fresh  # allocated again
    with pytest.raises(ValueError, match="this engine holds 3 slots of 40 positions"):
        engine.generate([[1] * 35], sampling)


def test_lora_generates_unmerged_as_merged():
    import lora
    m = lora.apply_lora(_tiny(seed=5), rank=4, alpha=8, targets=("q", "v", "up"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora.lora_layers(m):
            layer.lora_B.copy_(0.2 * torch.randn(layer.lora_B.shape, generator=g))
    unmerged = gen(m, PROMPTS, 10)
    assert unmerged != gen(_tiny(seed=5), PROMPTS, 10)  # the adapters matter
    assert gen(lora.merge_lora(m), PROMPTS, 10) == unmerged


def test_a_compiler_failure_falls_back_to_eager_decoding(model, monkeypatch, capsys):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("InductorError: codegen failed")
        return call
    monkeypatch.setattr(E.torch, "compile", broken)
    engine = E.Engine(model, 3, 40, 12, compile=True, cuda_graph=False)
    assert [s.ids for s in engine.generate(PROMPTS, E.Sampling(12))] == gen(model, PROMPTS, 12)
    assert "compiling the decode step failed (RuntimeError: InductorError: codegen failed); decoding eagerly" \
        in capsys.readouterr().err and not engine.compiled


def test_compiled_decoding_equals_eager_with_one_compile_for_every_layer(model):
    # the decode step runs each layer through model.run_block compiled once (the block is an argument): a
    # model of any depth compiles the same few graphs (the block's pieces around the eager cache_attention),
    # not one unrolled over its layers
    from torch._dynamo.utils import counters
    graphs = []
    for m in (model, tiny_model(n_layer=5)):
        torch._dynamo.reset()
        counters.clear()
        engine = E.Engine(m, 3, 40, 12, compile=True, cuda_graph=False)
        assert [s.ids for s in engine.generate(PROMPTS, E.Sampling(12))] == gen(m, PROMPTS, 12)
        assert engine.compiled
        graphs.append(counters["stats"]["unique_graphs"])
        # the cache write and the attention stay out of the graphs (compiled, they cost whole-cache copies)
        assert any("cache_attention" in k for k in counters["graph_break"])
    assert graphs[0] == graphs[1] <= 6, graphs

