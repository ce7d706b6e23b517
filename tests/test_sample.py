"""sample.py: the CLI (--eval, prompts, streaming, errors) on a checkpoint laid out as train.py writes it, and export
to a folder transformers loads and generates from identically."""

import dataclasses
import io
import json
import os

import pytest
import torch

import checkpoint as C
import data
import engine as E
import grade as G
import sample as S
import train
from conftest import tiny_model
from tokenizer import load_tokenizer


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


HERE = os.path.dirname(os.path.abspath(__file__))
_tiny = tiny_model


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, math_tok):
    """A checkpoint folder laid out as train.py writes it: best.pt + tokenizer/ (+ its config.json)."""
    d = tmp_path_factory.mktemp("run")
    m = _tiny(vocab=4096, seed=4, max_seq_len=512, qkv_bias=False, tie_embeddings=True)
    cfg = dataclasses.asdict(train.Config(prompt_format="plain", system_prompt=""))
    state = {"model": m.state_dict(), "model_config": dataclasses.asdict(m.config), "config": cfg, "step": 2,
             "best": None, "tokenizer_dir": "tokenizer"}
    C.save_tokenizer(math_tok, str(d / "tokenizer"))
    C.save_checkpoint(state, str(d / "best.pt"))
    (d / "config.json").write_text(json.dumps(cfg))  # train.py's run config, not an HF config
    return d


def _utf8_ok(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False

# -----------------------------------------------------------------------------
# generate and grade


def test_text_stream_prints_split_utf8_whole(math_tok):
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
    model, tok, info = C.load_model(str(ckpt_dir / "best.pt"))
    assert info["kind"] == "nanomath" and info["prompt_format"] == "plain"
    _, recs = E.evaluate(model, tok, probs, E.Sampling(8), "plain", "")
    assert [r["response"] for r in recs] == [r["response"] for r in rows]


def test_cli_prompts_and_stream(ckpt_dir, tmp_path, capsys, monkeypatch):
    model, tok, _ = C.load_model(str(ckpt_dir))
    want = [tok.decode(E.generate(model, [data.render_prompt(tok, q, "plain")], E.Sampling(6, stop_ids=tok.stop_ids))[0].ids)
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
    with pytest.raises(SystemExit, match="junk.pt: cannot be read as a nanomath checkpoint"):
        S.main(["--ckpt", str(junk), "--prompt", "x"])
    with pytest.raises(SystemExit, match="unknown dataset 'gsm9k'"):
        S.main(["--ckpt", str(ckpt_dir), "--eval", "gsm9k"])
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
    C.export_hf(m, qtok, str(out))
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert sorted(gen_cfg["eos_token_id"]) == sorted(qtok.stop_ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    q = "What is 2 + 3?"
    ours = data.render_prompt(qtok, q, "chat")
    msgs = data.prompt_messages(q)
    theirs = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(theirs) == ours
    ids = E.generate(m, [ours], E.Sampling(12, stop_ids=qtok.stop_ids))[0].ids
    with torch.no_grad():
        g = hf.generate(torch.tensor([ours]), max_new_tokens=12, do_sample=False)[0, len(ours):].tolist()
    g = g[:next((k for k, t in enumerate(g) if t in qtok.stop_ids), len(g))]
    assert ids == g and len(ids) > 0
    assert hf_tok.decode(g) == qtok.decode(ids)
    # the exported folder loads back here as a chat model
    m2, tok2, info = C.load_model(str(out))
    assert info == {"kind": "hf", "path": str(out), "prompt_format": "chat", "system_prompt": data.SYSTEM_PROMPT}
    assert E.generate(m2, [ours], E.Sampling(12, stop_ids=tok2.stop_ids))[0].ids == ids
    # and through the CLI, from a training checkpoint (math tokenizer: transformers loads the model part)
    S.main(["--ckpt", str(ckpt_dir), "--export-hf", str(tmp_path / "hf2")])
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf2")).eval()
    hf2_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf2"))  # the math tokenizer, in HF form
    m3, tok3, _ = C.load_model(str(ckpt_dir))
    p = data.render_prompt(tok3, "What is 2 + 3?", "plain")
    with torch.no_grad():
        g = hf2.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None)[0, len(p):]
    assert E.generate(m3, [p], E.Sampling(10))[0].ids == g.tolist()
    q = "What is 2 + 3?"
    assert hf2_tok.encode(data.PLAIN_TEMPLATE.format(problem=q), add_special_tokens=False) == p
    assert hf2_tok.decode(g) == tok3.decode(g.tolist())
