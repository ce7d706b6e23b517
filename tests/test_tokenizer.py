# Tokenizer tests: Qwen ids identical to the Hugging Face reference (tokenizers / transformers, test-only imports),
# chat rendering identical to apply_chat_template with the right assistant mask, and the math tokenizer's promises.
import json
import os
import random
import re
import sys
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import tokenizer as T  # noqa: E402
from checkpoint import save_tokenizer  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures", "qwen2.5")

HARD = [
    "", " ", "\n", "\r\n", "a\r\nb", "\r\r\n\n\r", " \r\n ", "\t\tx", "x\t", "x   ", "   x", "a  \n\n  b\n", "  \n",
    "trailing space ", "中文测试，你好！", "日本語のテキスト", "한국어 텍스트", "😀👍🏽", "👨‍👩‍👧‍👦 family", "🏳️‍🌈",
    "e\u0301", "cafe\u0301 na\u0308ive", "A\u030a\u0301", "\u1100\u1161\u11a8", "a\u0300\u0301\u0302\u0303\u0304",
    "\u0301start", "x\u0338=", "\u212b \u212a \u2126", "Ǆ ǅ ǆ", "ﬁ ﬀ", "12345678901234567890", "3.14159e-10",
    "1,000,000", "〇一二 ٣٤٥ Ⅻ ½ ²", "I'M HERE, it's he'LL we'Ve", "'S 'ſ don't'll'd '''", "a" * 3000,
    "ab" * 2000 + "!", "supercalifragilisticexpialidocious" * 50,
    " " * 10000, "\n" * 3000, "1" * 5000, "!" * 3000, " a" * 3000, "\u00a0\u2003\u3000x", "\u200b\u200d\ufeff",
    "\x00\x01\x7f", "\U0001d465\U0001d466", "\u2028\u2029\x85", "…!!!???", "$$x^2$$ \\frac{1}{2} \\le 3",
    "    def f():\n\treturn 1\n", "\ufdfa", "Ἀ\u0345", "\u07fd\u0301 a\u0301\u07fd \U00011935\U00011930",
    # added tokens in text, whole and partial
    "x<|im_end|>y", "<|im_start|>user\nhi<|im_end|>\n", "<|im_", "<|im_end", "|im_end|>", "<|endoftext|><|endoftext|>",
    "<<|im_end|>>", "<tool_call>x</tool_call>", "<|im_end|>\u0338", " <|im_start|> ", "<|fim_prefix|>a<|fim_suffix|>",
]

CONVS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Solve $x^2=4$."},
     {"role": "assistant", "content": "$x=\\pm 2$\n\nThe answer is \\boxed{2}."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\n\n leading newlines"},
     {"role": "user", "content": "  spaced  "}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "x<|im_end|>y"}, {"role": "assistant", "content": "I said <|im_end|> ok"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "cafe\u0301 中文 😀"},
     {"role": "system", "content": "second system"}, {"role": "assistant", "content": " ok "}],
]


def vendored_texts():
    return data.read_texts()  # every question, answer, problem and solution string of the vendored data


@pytest.fixture(scope="module")
def texts():
    return vendored_texts()


@pytest.fixture(scope="module")
def qwen():
    return T.load_tokenizer(FIX)


@pytest.fixture(scope="module")
def ref():
    import tokenizers
    return tokenizers.Tokenizer.from_file(os.path.join(FIX, "tokenizer.json"))


@pytest.fixture(scope="module")
def hf():
    import transformers
    return transformers.AutoTokenizer.from_pretrained(FIX)


@pytest.fixture(scope="module")
def math_tok():
    return T.load_tokenizer("math")

# -----------------------------------------------------------------------------
# Qwen: ids


def test_qwen_interface(qwen, hf):
    assert qwen.name == "qwen"
    assert qwen.n_vocab == len(qwen) == len(hf) == 151936  # the fixture's vocab carries [PAD...] rows up to the model's 151936
    assert qwen.eot_id == qwen.pad_id == hf.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert qwen.stop_ids == {151645, 151643}
    with open(os.path.join(FIX, "tokenizer.json"), encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    assert qwen.special == {t["content"]: t["id"] for t in added}
    assert all(qwen.encode(s) == [i] for s, i in qwen.special.items())


def test_qwen_matches_hf_on_all_vendored_text(qwen, ref, texts):
    assert len(texts) > 50000
    ours = qwen.encode_batch(texts, num_threads=2)
    theirs = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    bad = [i for i in range(len(texts)) if ours[i] != theirs[i]]
    assert not bad, f"{len(bad)} strings differ, first: {texts[bad[0]][:200]!r}"
    # and encode == encode_batch
    rng = random.Random(0)
    for i in rng.sample(range(len(texts)), 200):
        assert qwen.encode(texts[i]) == ours[i]


def test_qwen_hard_strings(qwen, ref, hf):
    for s in HARD:
        want = ref.encode(s, add_special_tokens=False).ids
        assert qwen.encode(s) == want == hf(s, add_special_tokens=False)["input_ids"], repr(s)
        assert qwen.encode_batch([s, s], num_threads=1) == [want, want]
        # with special tokens as text, HF's split_special_tokens=True: <tool_call> (added, not special) stays atomic
        assert qwen.encode(s, allow_special=False) == \
            hf(s, add_special_tokens=False, split_special_tokens=True)["input_ids"], repr(s)
        assert qwen.decode(want) == hf.decode(want), repr(s)
        # decode(encode(s)) == NFC(s), except: specials are split off before NFC, and marks newer than HF's Unicode 9
        # tables stay inert (see tokenizer._HF_UNKNOWN)
        if not any(t in s for t in qwen.special) and not T._HF_UNKNOWN.search(s):
            assert qwen.decode(want) == unicodedata.normalize("NFC", s), repr(s)
    as_text = qwen.encode("<|im_end|>", allow_special=False)
    assert len(as_text) > 1 and not set(as_text) & set(qwen.special.values()) and qwen.decode(as_text) == "<|im_end|>"
    assert qwen.encode("<tool_call>", allow_special=False) == [151657]


def test_qwen_every_code_point(qwen, ref):
    # all assigned code points (and every 61st unassigned / private one) in four contexts each, against HF
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000
           and (unicodedata.category(chr(c)) not in ("Cn", "Co") or c % 61 == 0)]
    texts = ["".join(f"{chr(c)}x {chr(c)}{chr(c)} 1{chr(c)}\n" for c in cps[i:i + 256]) for i in range(0, len(cps), 256)]
    ours = qwen.encode_batch(texts, num_threads=2)
    theirs = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    bad = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} blocks differ, first starts {bad[0][:40]!r}"


def test_qwen_nfc_matches_hf_on_every_combining_or_decomposable_char(qwen):
    import tokenizers.normalizers as normalizers
    nfc = normalizers.NFC()
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and
           (unicodedata.combining(chr(c)) or unicodedata.decomposition(chr(c)) or T._HF_UNKNOWN.match(chr(c)))]
    bad = []
    for c in map(chr, cps):
        d = unicodedata.decomposition(c)
        parts = "" if not d or d.startswith("<") else "".join(chr(int(x, 16)) for x in d.split())
        for s in (c, "a" + c, "a\u0345" + c, "a" + c + "\u0334", c + "\u0301", "\U00011935" + c, parts, "a" + parts):
            if nfc.normalize_str(s) != qwen._norm(s):
                bad.append(s)
    assert not bad, [ascii(s) for s in bad[:10]]


def test_qwen_decode_matches_hf(qwen, hf):
    rng = random.Random(0)
    for _ in range(300):  # lone / truncated UTF-8 bytes -> U+FFFD exactly where HF puts them
        ids = [rng.randrange(256) for _ in range(rng.randrange(1, 8))]
        assert qwen.decode(ids) == hf.decode(ids), ids
    for _ in range(300):
        ids = [rng.randrange(qwen.n_vocab) for _ in range(rng.randrange(1, 6))]
        assert qwen.decode(ids) == hf.decode(ids), ids
    # ids past the vocabulary are skipped, as HF does; tensors / numpy arrays are accepted
    assert qwen.decode([9707, 999999, 11]) == hf.decode([9707, 999999, 11]) == "Hello,"
    import numpy as np
    assert qwen.decode(np.array([9707, 11])) == "Hello,"


def test_qwen_lone_surrogates(qwen, ref):
    # HF refuses such str (TypeError); tiktoken encodes a lone surrogate as U+FFFD. Ours: same as tiktoken, no crash.
    with pytest.raises(TypeError):
        ref.encode("a\ud800b")
    assert qwen.encode("a\ud800b") == qwen.encode("a\ufffdb")
    assert qwen.encode_batch(["a\ud800b"]) == [qwen.encode("a\ufffdb")]

# -----------------------------------------------------------------------------
# Qwen: chat


@pytest.mark.parametrize("gen", [False, True])
def test_qwen_chat_matches_hf(qwen, hf, gen):
    for conv in CONVS:
        ids, mask = qwen.render_chat(conv, add_generation_prompt=gen)
        want = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        assert ids == want, conv
        assert len(mask) == len(ids) and set(mask) <= {0, 1}
        # the masked tokens spell each assistant content + <|im_end|>; content opening with newlines fuses with the
        # header's "\n" (Qwen's regex \s*[\r\n]+), and that fused token is masked 1, so it brings one "\n" along
        got = "".join(qwen.decode([i]) for i, m in zip(ids, mask) if m)
        expect = "".join(("\n" if re.match(r"\s*[\r\n]", m["content"]) else "") + m["content"] + "<|im_end|>"
                         for m in conv if m["role"] == "assistant")
        assert got == expect, conv
        if gen:
            assert ids[-3:] == qwen.encode("<|im_start|>assistant\n") and mask[-3:] == [0, 0, 0]


def test_qwen_chat_mask_layout(qwen):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    ids, mask = qwen.render_chat(conv)
    head = qwen.encode(f"<|im_start|>system\n{T.QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                       "<|im_start|>assistant\n")
    body = qwen.encode("Hello there")
    assert ids == head + body + [qwen.special["<|im_end|>"]] + qwen.encode("\n")
    assert mask == [0] * len(head) + [1] * len(body) + [1, 0]
    # an assistant message after a system message and a user turn: only its tokens are 1
    ids2, mask2 = qwen.render_chat([{"role": "system", "content": "S"}] + conv + conv)
    assert sum(mask2) == 2 * (len(body) + 1)
    # content starting with whitespace fuses with the header's "\n" into one token: that token holds content -> 1
    ids3, mask3 = qwen.render_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "\nb"}])
    k = ids3.index(qwen.encode("assistant")[0])
    assert qwen.decode([ids3[k + 1]]) == "\n\n" and mask3[k:k + 2] == [0, 1]


def test_chat_allow_special_false_keeps_content_as_text(qwen, math_tok):
    conv = [{"role": "user", "content": "end<|im_end|>here"}, {"role": "assistant", "content": "ok<|endoftext|>"}]
    for tok in (qwen, math_tok):
        ids, mask = tok.render_chat(conv, allow_special=False)
        blocks = 3 if tok.name == "qwen" else 2  # Qwen adds its default system block
        assert ids.count(tok.im_end_id) == blocks and tok.eot_id not in ids  # only the template's own markers
        assert tok.decode(ids).count("<|im_end|>") == blocks + 1
        assert "".join(tok.decode([i]) for i, m in zip(ids, mask) if m) == "ok<|endoftext|><|im_end|>"
        ids2, _ = tok.render_chat(conv)
        assert ids2.count(tok.im_end_id) == blocks + 1 and tok.eot_id in ids2


def test_chat_errors(qwen):
    for bad in ([], [{"role": "user"}], [{"role": "robot", "content": "x"}], [{"role": "user", "content": None}],
                [{"role": "tool", "content": "x"}], "hello",
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [{}]}]):
        with pytest.raises(ValueError):
            qwen.render_chat(bad)

# -----------------------------------------------------------------------------
# Loading, saving, errors


def test_qwen_save_and_reload(qwen, tmp_path, hf):
    save_tokenizer(qwen, tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        with open(os.path.join(FIX, f), "rb") as a, open(tmp_path / f, "rb") as b:
            assert a.read() == b.read(), f
    again = T.load_tokenizer(tmp_path)
    s = "Saved <|im_end|> and reloaded: café 123"
    assert again.encode(s) == qwen.encode(s)
    assert T.load_tokenizer(tmp_path / "tokenizer.json").encode(s) == qwen.encode(s)
    import transformers
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(s)["input_ids"] == qwen.encode(s)


def test_qwen_vocab_merges_folder(qwen, tmp_path, texts):
    with open(os.path.join(FIX, "tokenizer.json"), encoding="utf-8") as f:
        d = json.load(f)
    with open(tmp_path / "vocab.json", "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in d["model"]["vocab"].items() if v < 151643}, f, ensure_ascii=False)
    with open(tmp_path / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in d["model"]["merges"]))
    with open(tmp_path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"added_tokens_decoder": {str(t["id"]): t for t in d["added_tokens"]}}, f)
    tok = T.load_tokenizer(tmp_path)
    assert tok.name == "qwen" and tok.special == qwen.special and tok.n_vocab == 151665
    sample = texts[::50] + HARD
    assert tok.encode_batch(sample) == qwen.encode_batch(sample)
    out = tmp_path / "saved"
    save_tokenizer(tok, out)
    assert sorted(os.listdir(out)) == ["merges.txt", "tokenizer_config.json", "vocab.json"]


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def tiny_tokenizer_json():
    # a small but complete byte-level BPE tokenizer.json in Qwen's layout, so error tests need not copy 7 MB
    with open(os.path.join(FIX, "tokenizer.json"), encoding="utf-8") as f:
        d = json.load(f)
    vocab = {T.BYTE_TO_CHAR[b]: b for b in range(256)}
    merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["i", "n"], ["Ġ", "a"], ["Ġ", "Ġ"], ["ĠĠ", "ĠĠ"], ["1", "2"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = [dict(t, id=len(vocab) + k) for k, t in enumerate(d["added_tokens"][:3])]
    return dict(d, added_tokens=added, model=dict(d["model"], vocab=vocab, merges=merges))


def test_tiny_tokenizer_json_matches_hf(tmp_path):
    import tokenizers
    _write(tmp_path / "tokenizer.json", json.dumps(tiny_tokenizer_json()))
    ours, ref = T.load_tokenizer(tmp_path), tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ours.n_vocab == 256 + 8 + 3
    for s in HARD + ["the thin 123 in a     tin<|im_end|>"]:
        assert ours.encode(s) == ref.encode(s, add_special_tokens=False).ids, repr(s)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        T.load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        T.load_tokenizer(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad / "tokenizer.json", '{"model": {\n  "type": "BPE",,\n}')
    with pytest.raises(ValueError, match=r"bad[/\\]tokenizer.json: not valid JSON \(line 2"):
        T.load_tokenizer(bad)
    good = tiny_tokenizer_json()

    def broken(fn, match):
        d = json.loads(json.dumps(good))
        fn(d)
        _write(bad / "tokenizer.json", json.dumps(d))
        with pytest.raises(ValueError, match=match):
            T.load_tokenizer(bad)

    broken(lambda d: d.pop("model"), "missing key 'model'")
    broken(lambda d: d["model"].update(type="WordPiece"), "model must be BPE")
    broken(lambda d: d.update(normalizer={"type": "NFKC"}), "normalizer")
    broken(lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer")
    broken(lambda d: d["model"]["merges"].__setitem__(2, d["model"]["merges"][6]), "merge 3 .* previous merge")
    broken(lambda d: d["model"]["merges"].__setitem__(7, ["q", "zz"]), "merge 7 .* not in the vocab")
    broken(lambda d: d["model"]["vocab"].pop("Ġ"), "single-byte tokens")
    broken(lambda d: d.update(added_tokens=[t for t in d["added_tokens"] if t["content"] != "<|im_end|>"]),
           "'<\\|im_end\\|>' missing")
    broken(lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip")
    # math file
    m = tmp_path / "m"
    m.mkdir()
    with open(T.MATH_FILE, encoding="utf-8") as f:
        md = json.load(f)
    md.pop("vocab")
    _write(m / "math_tokenizer.json", json.dumps(md))
    with pytest.raises(ValueError, match="math_tokenizer.json: missing key 'vocab'"):
        T.load_tokenizer(m)
    _write(m / "other.json", '{"format": "something-else"}')
    with pytest.raises(ValueError, match="other.json: missing key 'model'"):
        T.load_tokenizer(m / "other.json")
    _write(m / "other.json", '{"format": "nanomath-math-tokenizer", "pattern": ".", "special": {}, "vocab": ["a"]}')
    with pytest.raises(ValueError, match="single-byte"):
        T.load_tokenizer(m / "other.json")

# -----------------------------------------------------------------------------
# Math tokenizer


def test_math_interface_and_file(math_tok, tmp_path):
    assert math_tok.name == "math" and math_tok.n_vocab == T.MATH_VOCAB == 4096
    assert set(math_tok.special) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert math_tok.pad_id == math_tok.eot_id == math_tok.special["<|endoftext|>"]
    assert math_tok.stop_ids == {math_tok.special["<|im_end|>"], math_tok.eot_id}
    assert os.path.getsize(T.MATH_FILE) < 100_000
    save_tokenizer(math_tok, tmp_path)
    assert os.listdir(tmp_path) == ["math_tokenizer.json"]
    s = "Let $x = \\frac{3}{4}$. <|im_end|>"
    assert T.load_tokenizer(tmp_path).encode(s) == math_tok.encode(s)


def test_math_tokenizer_in_hf_form_gives_our_ids(math_tok, texts, tmp_path):
    # what --export-hf writes for a from-scratch model: AutoTokenizer loads it, ids and chat rendering equal ours
    import tokenizers
    import transformers
    ht = tokenizers.Tokenizer.from_str(math_tok.hf_files()["tokenizer.json"].decode())
    rng = random.Random(1)
    sample = rng.sample(texts, 8000) + HARD
    ours = math_tok.encode_batch(sample, num_threads=2)  # special-token text becomes special tokens, as in HF
    theirs = [e.ids for e in ht.encode_batch(sample, add_special_tokens=False)]
    bad = [t for t, a, b in zip(sample, ours, theirs) if a != b]
    assert not bad, bad[0][:200]
    for fname, raw in math_tok.hf_files().items():
        (tmp_path / fname).write_bytes(raw)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    s = "Let $x = \\frac{3}{4}$, so 2x = 1.5."
    assert auto.encode(s, add_special_tokens=False) == math_tok.encode(s)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    hf_ids = auto.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(hf_ids) == math_tok.render_chat(msgs, add_generation_prompt=True)[0]
    assert auto.decode(math_tok.encode(s)) == s


def test_math_roundtrips_every_vendored_string(math_tok, texts):
    ids = math_tok.encode_batch(texts, num_threads=2)
    bad = [t for t, i in zip(texts, ids) if math_tok.decode(i) != t]
    assert not bad, bad[0][:200]
    assert max(max(i) for i in ids if i) < math_tok.eot_id  # no special token appears in the data
    # 4096 tokens should still compress: MATH/GSM8K text averages > 2 bytes per token
    assert sum(len(t.encode()) for t in texts) / sum(map(len, ids)) > 2.0


def test_math_lossless_on_any_text(math_tok):
    rng = random.Random(0)
    for s in HARD + [b.decode("utf-8", "replace") for b in (bytes(rng.randrange(256) for _ in range(50)) for _ in range(50))]:
        assert math_tok.decode(math_tok.encode(s, allow_special=False)) == s, repr(s)
    for _ in range(300):
        s = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000), rng.randrange(0x1F300, 0x1F700),
                                    ord(rng.choice("\\\n\t 0123456789"))])) for _ in range(rng.randrange(1, 40)))
        assert math_tok.decode(math_tok.encode(s)) == s, repr(s)
    assert math_tok.encode("\\") and math_tok.decode(math_tok.encode("x\\")) == "x\\"  # a trailing backslash survives


def test_math_digits_are_single_tokens(math_tok, texts):
    for i in range(math_tok.eot_id):  # every non-special token
        b = math_tok.token_bytes(i)
        assert len(b) == 1 or not any(48 <= x <= 57 for x in b), b  # no multi-byte token holds an ASCII digit
    pieces = [math_tok.decode([i]) for i in math_tok.encode("x = 1234567890 and 3.14, 2^{10}")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234567890314210")


def test_math_symbols_are_single_tokens(math_tok):
    syms = T.math_symbols()
    assert len(syms) >= 200
    assert {"\\frac", "\\sqrt", "\\cdot", "\\le", "\\alpha", "\\pi", "∑", "≤", "π", "√"} <= set(syms)
    for s in syms:
        assert len(math_tok.encode(s)) == 1, s
        # in context, the symbol's bytes never straddle a token boundary (a LaTeX command ends at a non-letter)
        ctxs = (f"x{s} y", f" {s}", f"{s}{s}", f"({s}2)", f"$a{s}_b$") if s[1:2].isalpha() else \
            (f"x{s}y", f" {s} ", f"{s}{s}", f"({s}2)", f"$a{s}b$")
        for ctx in ctxs:
            ends, pos = set(), 0
            for i in math_tok.encode(ctx):
                pos += len(math_tok.token_bytes(i))
                ends.add(pos)
            start = ctx.index(s)
            inner = range(len(ctx[:start].encode()) + 1, len(ctx[:start].encode()) + len(s.encode()))
            assert not ends & set(inner), (s, ctx)


def test_math_chat_uses_chatml_without_default_system(math_tok):
    conv = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    ids, mask = math_tok.render_chat(conv, add_generation_prompt=False)
    assert math_tok.decode(ids) == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
    assert "".join(math_tok.decode([i]) for i, m in zip(ids, mask) if m) == "2<|im_end|>"
    ids, mask = math_tok.render_chat(conv[:1], add_generation_prompt=True)
    assert math_tok.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n") and sum(mask) == 0


def test_math_training_regenerates_the_committed_file():
    vocab, special = T.train_math_tokenizer(data.read_texts(data.MATH_TOKENIZER_TEXT), verbose=False)
    with open(T.MATH_FILE, "rb") as f:
        assert T.math_tokenizer_json(vocab, special) == f.read()
