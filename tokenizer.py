"""
Tokenizers for nanomath, both running on tiktoken's fast BPE core.

- "qwen": the Qwen2/Qwen2.5 byte-level BPE, rebuilt from a checkpoint's tokenizer.json (or vocab.json + merges.txt)
  with ids identical to the Hugging Face tokenizer (tests/test_tokenizer.py checks every vendored string).
- "math": a small (4096 token) tokenizer for from-scratch models: bytes + >=200 forced math symbols / LaTeX commands
  + merges learned on the GSM8K/MATH training text. Digits are never merged. Regenerate with
  `python tokenizer.py --train-math` (deterministic), which writes data/math_tokenizer.json.

Both are one `Tokenizer` class with the same methods; `load_tokenizer(path)` picks the right one.
Only tiktoken, regex and the standard library are needed here.
"""

import json
import os
import re
import sys
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import regex
import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
MATH_FILE = os.path.join(HERE, "data", "math_tokenizer.json")
MATH_FORMAT = "nanomath-math-tokenizer"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2's pre-tokenizer regex (the same string is in every Qwen2/2.5 tokenizer.json); used for vocab.json+merges.txt
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# -----------------------------------------------------------------------------
# GPT-2 byte <-> unicode mapping: byte-level BPE files store each token's bytes as printable unicode characters
# (printable latin-1 bytes map to themselves, the other 68 bytes to U+0100...). We need the raw bytes for tiktoken.

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}

BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}

def token_str_to_bytes(s, where):
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError as e:
        raise ValueError(f"{where}: token {s!r} has character {e.args[0]!r} outside the byte-level alphabet") from None

def token_bytes_to_str(b):
    return "".join(BYTE_TO_CHAR[x] for x in b)

# HF's NFC normaliser (the unicode-normalization-alignments crate inside `tokenizers`) has Unicode 9.0 tables;
# Python's are newer. To it, the combining marks added since 9.0 (and U+11930, whose composition with U+11935 is
# new) are unknown, i.e. inert starters that nothing reorders or composes across. Normalising the text between
# them and leaving them in place reproduces HF exactly (found by sweeping every code point against HF's NFC).
_HF_UNKNOWN = re.compile("([" + "".join(
    chr(int(a, 16)) + ("-" + chr(int(b, 16)) if b else "") for a, _, b in (r.partition("-") for r in """
    07FD 0898-089F 08CA-08D3 09FE 0C3C 0D3B-0D3C 0EBA 1715 1ABF-1ACE 1DF6-1DFA A82C 10D24-10D27 10EAB-10EAC
    10F46-10F50 10F82-10F85 11070 1133B 1145E 11839-1183A 11930 1193D-1193E 11943 119E0 11A34 11A47 11A99 11D42
    11D44-11D45 11D97 16FF0-16FF1 1E130-1E136 1E2AE 1E2EC-1E2EF""".split())) + "])")

# -----------------------------------------------------------------------------

class Tokenizer:
    """One interface over a tiktoken.Encoding plus the bits tiktoken does not do: NFC (Qwen), HF-style matching
    of added tokens in raw text, and ChatML rendering with an assistant mask."""

    def __init__(self, name, enc, special, special_flags, eot, stop, nfc, default_system, files):
        self.name = name                       # "qwen" or "math"
        self.enc = enc                         # tiktoken.Encoding (we call only encode_ordinary and decode on it)
        self.special = dict(special)           # every added token (string -> id), all atomic
        self.n_vocab = max(enc.max_token_value, max(special.values())) + 1
        self.eot_id = special[eot]
        self.pad_id = self.eot_id              # Qwen pads with <|endoftext|>; so do we
        self.stop_ids = {special[s] for s in stop}
        self.im_start_id, self.im_end_id = special["<|im_start|>"], special["<|im_end|>"]
        self.nfc = nfc
        self.default_system = default_system   # None: no system block unless the messages have one
        self.files = files                     # {filename: bytes}: checkpoint.save_tokenizer writes them
        self._special_bytes = {i: s.encode() for s, i in special.items()}
        # HF matches added tokens leftmost-longest in the raw text, before normalisation; longest-first alternation
        # gives the same. With allow_special=False only the tokens flagged special=True become text, like HF's
        # split_special_tokens=True (Qwen's <tool_call>, </tool_call> are added but not special: they stay atomic).
        def alternation(toks):
            toks = sorted(toks, key=lambda t: (-len(t), t))
            return re.compile("(" + "|".join(map(re.escape, toks)) + ")") if toks else None
        self._split_all = alternation(list(special))
        self._split_plain = alternation([t for t in special if not special_flags.get(t, True)])

    def __len__(self):
        return self.n_vocab

    def __repr__(self):
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab}, special={len(self.special)})"

    # --- encoding ---
    def _segments(self, text, allow_special):
        # -> list alternating [plain, added, plain, added, ..., plain]
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        pat = self._split_all if allow_special else self._split_plain
        return pat.split(text) if pat is not None else [text]

    def _norm(self, s):
        if not self.nfc or s.isascii() or unicodedata.is_normalized("NFC", s):
            return s
        if _HF_UNKNOWN.search(s) is None:
            return unicodedata.normalize("NFC", s)
        parts = _HF_UNKNOWN.split(s)  # [text, mark, text, mark, ..., text]
        return "".join(p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(parts))

    def encode(self, text, allow_special=True):
        segs = self._segments(text, allow_special)
        if len(segs) == 1:
            return self.enc.encode_ordinary(self._norm(text)) if text else []
        ids = []
        for i, seg in enumerate(segs):
            if i % 2:
                ids.append(self.special[seg])
            elif seg:
                ids.extend(self.enc.encode_ordinary(self._norm(seg)))
        return ids

    def encode_batch(self, texts, allow_special=True, num_threads=None):
        # Split/normalise in Python, then hand every plain segment to tiktoken in chunks across threads (its Rust
        # core releases the GIL). One call per chunk rather than per string keeps the thread-pool overhead small.
        num_threads = num_threads or os.cpu_count() or 1
        all_segs = [self._segments(t, allow_special) for t in texts]
        plain = [self._norm(s) for segs in all_segs for s in segs[::2]]
        enc = self.enc.encode_ordinary
        if num_threads <= 1 or len(plain) < 64:
            out = [enc(s) for s in plain]
        else:
            n = max(1, len(plain) // (num_threads * 8))
            chunks = [plain[i:i + n] for i in range(0, len(plain), n)]
            with ThreadPoolExecutor(num_threads) as ex:
                out = [ids for part in ex.map(lambda c: [enc(s) for s in c], chunks) for ids in part]
        result, k = [], 0
        for segs in all_segs:
            ids = []
            for i, seg in enumerate(segs):
                if i % 2:
                    ids.append(self.special[seg])
                else:
                    ids.extend(out[k])
                    k += 1
            result.append(ids)
        return result

    # --- decoding ---
    def decode(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        try:
            return self.enc.decode(ids, errors="replace")  # invalid UTF-8 -> U+FFFD, like HF's from_utf8_lossy
        except KeyError:
            # ids with no token (e.g. embedding rows past the vocabulary) are skipped, as the HF decoder does
            known = [i for i in ids if isinstance(i, int) and 0 <= i < self.n_vocab and self.token_bytes(i) is not None]
            return self.enc.decode(known, errors="replace")

    def token_bytes(self, i):
        if i in self._special_bytes:
            return self._special_bytes[i]
        try:
            return self.enc.decode_single_token_bytes(i)
        except KeyError:
            return None

    # --- chat ---
    def render_chat(self, messages, add_generation_prompt=False, allow_special=True):
        """ChatML as in the Qwen2.5 Instruct template (without tools):
            <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{..}<|im_end|>\\n<|im_start|>assistant\\n{..}<|im_end|>\\n
        Qwen inserts its default system prompt when messages[0] is not a system message; the math tokenizer writes
        no system block then. Returns (ids, mask): mask is 1 on each assistant message's content tokens and its
        closing <|im_end|>, 0 elsewhere. By default content is tokenised exactly as HF's apply_chat_template does, so
        special-token strings inside content become special tokens; allow_special=False encodes them as plain text
        (safer for untrusted data, but then no longer identical to HF on such content). If content starts with
        newlines that BPE fuses with the header's "\\n", the fused token holds content, so it is masked 1."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("render_chat needs a non-empty list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i}: need {{'role': system|user|assistant, 'content': str}} "
                                 f"(tools are not supported), got {m!r}")
            if m.get("tool_calls"):
                raise ValueError(f"message {i}: tool_calls are not supported")
        ids, mask = [], []
        nl = self.encode("\n")

        def block(role, content, train):
            ids.append(self.im_start_id)
            mask.append(0)
            head = role + "\n"
            part = self.encode(head + content, allow_special)  # one segment, as in the rendered string
            if train:
                nb = len(head.encode())
                pos = 0
                for t in part:  # a token is the assistant's if it ends past the header's bytes
                    pos += len(self.token_bytes(t))
                    mask.append(1 if pos > nb else 0)
            else:
                mask.extend([0] * len(part))
            ids.extend(part)
            ids.append(self.im_end_id)
            mask.append(1 if train else 0)
            ids.extend(nl)
            mask.extend([0] * len(nl))

        rest = messages
        if messages[0]["role"] == "system":
            block("system", messages[0]["content"], False)
            rest = messages[1:]
        elif self.default_system is not None:
            block("system", self.default_system, False)
        for m in rest:
            block(m["role"], m["content"], m["role"] == "assistant")
        if add_generation_prompt:
            ids.append(self.im_start_id)
            gen = self.encode("assistant\n")
            ids.extend(gen)
            mask.extend([0] * (1 + len(gen)))
        return ids, mask

    def hf_files(self):
        """{filename: bytes} that make a folder loadable by transformers' AutoTokenizer. A Qwen tokenizer already
        is (its own files); the math tokenizer is converted: math_hf_files()."""
        return math_hf_files(self) if self.name == "math" else dict(self.files)

    @property
    def has_chat_template(self):
        """A Qwen tokenizer that ships a chat template: the model is (most likely) a chat model."""
        if self.name != "qwen":
            return False
        if "chat_template.jinja" in self.files:
            return True
        cfg = self.files.get("tokenizer_config.json")
        return bool(cfg) and "chat_template" in json.loads(cfg)


# -----------------------------------------------------------------------------
# Qwen (HF byte-level BPE files)

def _read_json(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return raw, json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None

def _byte_level_ranks(vocab, merges, added_ids, path):
    """vocab {token_str: id} + merges [(a, b)] -> tiktoken mergeable ranks {bytes: id}.
    tiktoken merges by the rank of the merged token, HF by the merge's position; they agree when ids grow with the
    merge order (true for GPT-2-style vocabularies), so check that rather than hope."""
    ranks = {}
    for tok, i in vocab.items():
        if i in added_ids:
            continue
        if not isinstance(i, int) or i < 0:
            raise ValueError(f"{path}: vocab entry {tok!r} has invalid id {i!r}")
        ranks[token_str_to_bytes(tok, path)] = i
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: vocab has duplicate ids")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: vocab lacks {len(missing)} single-byte tokens (e.g. {BYTE_TO_CHAR[missing[0]]!r}); "
                         "not a byte-level BPE vocabulary")
    last = -1
    for n, m in enumerate(merges):
        a, b = m.split(" ") if isinstance(m, str) else m
        i = vocab.get(a + b)
        if i is None:
            raise ValueError(f"{path}: merge {n} ({a!r}, {b!r}) produces {a + b!r}, which is not in the vocab")
        if i <= last:
            raise ValueError(f"{path}: merge {n} ({a!r}, {b!r}) has id {i} <= the previous merge's id {last}; "
                             "ids are not in merge order, so tiktoken's rank-based BPE would differ")
        last = i
    return ranks

def _check_added(added, path):
    for t in added:
        for k in ("id", "content"):
            if k not in t:
                raise ValueError(f"{path}: added_tokens entry {t!r} lacks {k!r}")
        if t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise ValueError(f"{path}: added token {t['content']!r} uses normalized/lstrip/rstrip/single_word, "
                             "which this loader does not implement")

def load_qwen_tokenizer_json(path, extra_files=()):
    raw, d = _read_json(path)
    for k in ("model", "added_tokens", "pre_tokenizer"):
        if k not in d:
            raise ValueError(f"{path}: missing key {k!r}; not a Hugging Face tokenizer.json")
    model = d["model"]
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ValueError(f"{path}: model must be BPE with 'vocab' and 'merges' (got type {model.get('type')!r})")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("dropout"):
        raise ValueError(f"{path}: model uses byte_fallback/subword prefix/suffix/dropout; unsupported")
    norm = d.get("normalizer")
    if norm not in (None, {"type": "NFC"}):
        raise ValueError(f"{path}: normalizer {norm!r} unsupported (only NFC or none)")
    # expected: Sequence[Split(Regex, Isolated), ByteLevel(use_regex=False)]
    pre = d["pre_tokenizer"] or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    split = [s for s in steps if s.get("type") == "Split"]
    bl = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(steps) != 2 or len(split) != 1 or len(bl) != 1 or "Regex" not in split[0].get("pattern", {}) \
            or split[0].get("behavior") != "Isolated" or split[0].get("invert") or bl[0].get("use_regex") \
            or bl[0].get("add_prefix_space"):
        raise ValueError(f"{path}: pre_tokenizer {json.dumps(pre)[:200]} unsupported; expected "
                         "Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false, add_prefix_space=false)]")
    pattern = split[0]["pattern"]["Regex"]
    added = d["added_tokens"]
    _check_added(added, path)
    special = {t["content"]: t["id"] for t in added}
    flags = {t["content"]: bool(t.get("special", True)) for t in added}
    ranks = _byte_level_ranks(model["vocab"], model["merges"], set(special.values()), path)
    files = {"tokenizer.json": raw}
    files.update(extra_files)
    return _make_qwen(pattern, ranks, special, flags, files, path)

def load_qwen_vocab_merges(folder):
    vpath, mpath, cpath = (os.path.join(folder, f) for f in ("vocab.json", "merges.txt", "tokenizer_config.json"))
    vraw, vocab = _read_json(vpath)
    with open(mpath, "rb") as f:
        mraw = f.read()
    merges = []
    for n, line in enumerate(mraw.decode("utf-8").splitlines(), 1):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{mpath}:{n}: expected two space-separated tokens, got {line!r}")
        merges.append(parts)
    # the special tokens of a vocab.json/merges.txt checkpoint live in tokenizer_config.json
    if not os.path.exists(cpath):
        raise FileNotFoundError(f"{cpath}: needed for the special tokens (added_tokens_decoder) of {vpath}")
    craw, cfg = _read_json(cpath)
    atd = cfg.get("added_tokens_decoder")
    if not isinstance(atd, dict) or not atd:
        raise ValueError(f"{cpath}: missing 'added_tokens_decoder' (the special tokens)")
    added = [dict(v, id=int(k)) for k, v in atd.items()]
    _check_added(added, cpath)
    special = {t["content"]: t["id"] for t in added}
    flags = {t["content"]: bool(t.get("special", True)) for t in added}
    ranks = _byte_level_ranks(vocab, merges, set(special.values()), vpath)
    files = {"vocab.json": vraw, "merges.txt": mraw}
    return _make_qwen(QWEN_PATTERN, ranks, special, flags, files, vpath)

def _make_qwen(pattern, ranks, special, flags, files, path):
    for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        if s not in special:
            raise ValueError(f"{path}: special token {s!r} missing from the added tokens")
    # specials go into tiktoken only so it can decode them; encoding uses encode_ordinary + our own splitting
    enc = tiktoken.Encoding(name="qwen", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    return Tokenizer("qwen", enc, special, flags, "<|endoftext|>", ("<|im_end|>", "<|endoftext|>"),
                     nfc=True, default_system=QWEN_SYSTEM, files=files)

# -----------------------------------------------------------------------------
# The math tokenizer

# Pre-tokenizer: a LaTeX command, a backslash + one symbol (\{ \, \\), one digit, a word (with one leading space),
# a punctuation run (with one leading space), whitespace. Every character is matched by some branch, which matters:
# tiktoken silently drops text its regex does not match. Digits are alone in their piece, so they never merge.
MATH_PATTERN = r"""\\[a-zA-Z]+|\\[^a-zA-Z\p{N}]?|\p{N}| ?[\p{L}\p{M}]+| ?[^\s\p{L}\p{M}\p{N}\\]+|\s+(?!\S)|\s+"""
MATH_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MATH_VOCAB = 4096  # total, specials included

_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi rho "
          "varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon "
          "Phi Psi Omega")
_LATEX = ("frac dfrac tfrac sqrt cdot times div pm mp le leq ge geq ne neq approx equiv sim simeq cong propto "
          "infty sum prod int iint oint lim log ln exp sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh "
          "min max gcd lcm det deg mod pmod bmod binom dbinom tbinom choose left right big Big bigg Bigg bigl bigr "
          "text textbf textit mathrm mathbf mathbb mathcal mathit operatorname overline underline overrightarrow "
          "hat bar vec tilde dot ddot widehat angle triangle circ perp parallel cdots ldots dots vdots ddots quad "
          "qquad in notin ni subset subseteq supset supseteq cup cap setminus emptyset varnothing forall exists neg "
          "land lor wedge vee implies iff Rightarrow Leftarrow Leftrightarrow rightarrow leftarrow leftrightarrow "
          "to mapsto gets partial nabla prime begin end boxed displaystyle mid nmid lfloor rfloor lceil rceil "
          "langle rangle lvert rvert vert star ast oplus otimes odot square blacksquare spadesuit heartsuit "
          "diamondsuit clubsuit ell hbar Re Im aleph cdotp colon over underbrace overbrace stackrel frown "
          "sqcup bigcup bigcap limits nolimits phantom hspace vspace newline item label tag hline centering "
          "overset underset not because therefore checkmark dagger textstyle scriptstyle dfrac mathsf "
          "circledR degree pmb lt gt leqslant geqslant ngeq nleq ll gg").split()
_SYMBOLS = ("∑ ∏ ∫ ∮ √ ∛ ∞ ≤ ≥ ≠ ≈ ≡ ≅ ≃ ∼ ∝ ± ∓ × ÷ · ⋅ ∘ ° ∠ △ ⊥ ∥ ∈ ∉ ∋ ⊂ ⊆ ⊃ ⊇ ∪ ∩ ∖ ∅ ∀ ∃ ¬ ∧ ∨ ⇒ ⇐ ⇔ "
            "→ ← ↔ ↦ ∂ ∇ ′ ″ ½ ⅓ ¼ ¾ ⅔ ² ³ ¹ ⁿ … ∣ ∤ ⌊ ⌋ ⌈ ⌉ ⟨ ⟩ ℝ ℕ ℤ ℚ ℂ ∴ ∵ € £ ¥ ¢ — – ’ “ ” • "
            "α β γ δ ε ζ η θ ι κ λ μ ν ξ π ρ σ τ υ φ χ ψ ω Γ Δ Θ Λ Ξ Π Σ Φ Ψ Ω").split()
_ESCAPES = ["\\" + c for c in "{}\\,;!%$|#&_ "]

def math_symbols():
    """The tokens every math tokenizer has as single tokens (the issue asks for >= 200 math ones)."""
    out = ["\\" + w for w in _GREEK.split() + _LATEX] + _ESCAPES + _SYMBOLS
    return list(dict.fromkeys(out))  # dedupe, keep order

def _bpe(piece, ranks):
    # tiktoken's algorithm in Python (merge the lowest-ranked adjacent pair until none is in ranks); training only
    if piece in ranks:
        return [piece]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, bi = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, bi = r, i
        if best is None:
            break
        parts[bi:bi + 2] = [parts[bi] + parts[bi + 1]]
    return parts

def train_math_tokenizer(texts, vocab_size=MATH_VOCAB, verbose=True):
    """Byte-level BPE on top of bytes + forced math tokens. Deterministic: ties go to the smaller byte pair.
    Returns (vocab [bytes in rank order], special {str: id})."""
    import heapq
    vocab = [bytes([b]) for b in range(256)]
    # forced tokens, plus the byte prefixes of multi-byte characters, so tiktoken's pair merging can build them
    # inside longer pieces (they get the lowest ranks after the bytes, so they merge before anything learned)
    for sym in math_symbols() + ["system", "user", "assistant"]:  # + ChatML role names: short chat headers
        b = sym.encode()
        chain = [b[:k] for k in range(2, len(b))] if not sym.isascii() else []
        for t in chain + [b]:
            if t not in vocab:
                vocab.append(t)
    n_forced = len(vocab)
    ranks = {t: i for i, t in enumerate(vocab)}
    n_merges = vocab_size - len(MATH_SPECIAL) - len(vocab)
    pieces = Counter()
    pat = regex.compile(MATH_PATTERN)
    for t in texts:
        pieces.update(pat.findall(t))
    # words as tuples of token ids after the forced merges; pieces that already are one token need no statistics
    words, counts = [], []
    for p, c in sorted(pieces.items()):
        w = [ranks[t] for t in _bpe(p.encode(), ranks)]
        if len(w) > 1:
            words.append(w)
            counts.append(c)
    pair_count, where = Counter(), {}
    for wi, (w, c) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += c
            where.setdefault(pair, set()).add(wi)
    key = lambda pair: (vocab[pair[0]], vocab[pair[1]])
    heap = [(-c, key(p), p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    learned = 0
    while learned < n_merges and heap:
        negc, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc:
            continue  # stale entry
        if -negc < 2:
            break
        new_tok = vocab[pair[0]] + vocab[pair[1]]
        if new_tok in ranks:
            new_id = ranks[new_tok]  # a forced token reached by a different split; no new rank
        else:
            new_id = len(vocab)
            vocab.append(new_tok)
            ranks[new_tok] = new_id
            learned += 1
        changed = Counter()
        for wi in sorted(where.pop(pair, ())):
            w, c = words[wi], counts[wi]
            for p in zip(w, w[1:]):
                changed[p] -= c
            i, out = 0, []
            while i < len(w):
                if i + 1 < len(w) and w[i] == pair[0] and w[i + 1] == pair[1]:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                changed[p] += c
                where.setdefault(p, set()).add(wi)
        del pair_count[pair]
        for p, d in changed.items():
            if d and p != pair:
                pair_count[p] += d
                if pair_count[p] > 0:
                    heapq.heappush(heap, (-pair_count[p], key(p), p))
                else:
                    del pair_count[p]
    if verbose:
        print(f"math tokenizer: {len(pieces):,} distinct pieces, {n_forced - 256} forced tokens, {learned} merges, "
              f"{len(vocab) + len(MATH_SPECIAL)} tokens in all")
    special = {s: len(vocab) + k for k, s in enumerate(MATH_SPECIAL)}
    return vocab, special

def math_tokenizer_json(vocab, special):
    d = {"format": MATH_FORMAT, "version": 1, "pattern": MATH_PATTERN,
         "note": "vocab[i] is token i's bytes in the GPT-2 byte-to-unicode alphabet; regenerate with "
                 "`python tokenizer.py --train-math`",
         "special": special, "vocab": [token_bytes_to_str(t) for t in vocab]}
    return (json.dumps(d, ensure_ascii=False, indent=0) + "\n").encode()

def load_math_tokenizer(path):
    raw, d = _read_json(path)
    if not isinstance(d, dict) or d.get("format") != MATH_FORMAT:
        raise ValueError(f"{path}: not a nanomath math tokenizer (expected \"format\": {MATH_FORMAT!r})")
    for k in ("pattern", "special", "vocab"):
        if k not in d:
            raise ValueError(f"{path}: missing key {k!r}")
    vocab = [token_str_to_bytes(t, path) for t in d["vocab"]]
    ranks = {t: i for i, t in enumerate(vocab)}
    if len(ranks) != len(vocab):
        raise ValueError(f"{path}: duplicate tokens in 'vocab'")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"{path}: 'vocab' lacks some single-byte tokens, so encoding would not be lossless")
    special = d["special"]
    for s in MATH_SPECIAL:
        if s not in special:
            raise ValueError(f"{path}: special token {s!r} missing from 'special'")
    if set(special.values()) & set(range(len(vocab))):
        raise ValueError(f"{path}: special ids overlap the vocab ids 0..{len(vocab) - 1}")
    enc = tiktoken.Encoding(name="nanomath-math", pat_str=d["pattern"], mergeable_ranks=ranks, special_tokens=special)
    return Tokenizer("math", enc, special, {}, "<|endoftext|>", ("<|im_end|>", "<|endoftext|>"),
                     nfc=False, default_system=None, files={"math_tokenizer.json": raw})

# ChatML as render_chat writes it for the math tokenizer (no default system block)
MATH_CHAT_TEMPLATE = ("{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                      "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                      "{%- endif %}")


def math_hf_files(tok):
    """The math tokenizer in the Hugging Face layout: tokenizer.json (byte-level BPE with our split pattern) and
    tokenizer_config.json (ChatML template, end tokens). Two differences between tiktoken and HF's BPE are bridged:
    tiktoken takes a piece that is itself a token whole (HF: ignore_merges=true), and it merges any adjacent pair
    whose concatenation is a token, by that token's rank, where HF merges only listed pairs by list position
    (so every split (a, b) of each token is listed at its rank, in rank order). tests/test_tokenizer.py checks
    that the ids agree on all the vendored text."""
    ranks = tok.enc._mergeable_ranks  # {bytes: rank}; rank == id
    merges = []
    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        for i in range(1, len(t)):
            if t[:i] in ranks and t[i:] in ranks:  # tiktoken merges them at rank r, whatever their own ranks
                merges.append([token_bytes_to_str(t[:i]), token_bytes_to_str(t[i:])])
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    d = {"version": "1.0", "truncation": None, "padding": None,
         "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": False, "special": True} for s, i in sorted(tok.special.items(), key=lambda x: x[1])],
         "normalizer": None,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": tok.enc._pat_str}, "behavior": "Isolated", "invert": False},
             byte_level]},
         "post_processor": None, "decoder": byte_level,
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                   "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                   "vocab": {token_bytes_to_str(t): r for t, r in ranks.items()}, "merges": merges}}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
           "bos_token": None, "unk_token": None, "add_bos_token": False, "clean_up_tokenization_spaces": False,
           "model_max_length": 1 << 30, "chat_template": MATH_CHAT_TEMPLATE}
    return {"tokenizer.json": json.dumps(d, ensure_ascii=False).encode(),
            "tokenizer_config.json": json.dumps(cfg, indent=1).encode()}

# -----------------------------------------------------------------------------

def load_tokenizer(path):
    """path: a checkpoint folder (tokenizer.json -> Qwen, math_tokenizer.json -> math, vocab.json + merges.txt ->
    Qwen), one of those files, or "math" for the committed math tokenizer."""
    path = os.fspath(path)
    if path == "math":
        path = MATH_FILE
    if os.path.isdir(path):
        has = lambda f: os.path.isfile(os.path.join(path, f))
        if has("math_tokenizer.json"):  # first: an export of a math-tokenizer model also holds its tokenizer.json
            return load_math_tokenizer(os.path.join(path, "math_tokenizer.json"))
        if has("tokenizer.json"):
            return load_tokenizer(os.path.join(path, "tokenizer.json"))
        if has("vocab.json") and has("merges.txt"):
            tok = load_qwen_vocab_merges(path)
            tok.files.update(_side_files(path))
            return tok
        raise FileNotFoundError(f"{path}: no tokenizer.json, math_tokenizer.json or vocab.json+merges.txt in this folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    with open(path, "rb") as f:
        head = f.read(4096)
    if MATH_FORMAT.encode() in head:
        return load_math_tokenizer(path)
    return load_qwen_tokenizer_json(path, _side_files(os.path.dirname(path)))

def _side_files(folder):
    # tokenizer_config.json and chat_template.jinja travel with a Qwen tokenizer, byte for byte, so save() can copy them
    out = {}
    for f in ("tokenizer_config.json", "chat_template.jinja"):
        p = os.path.join(folder, f)
        if os.path.isfile(p):
            with open(p, "rb") as fh:
                out[f] = fh.read()
    return out

# -----------------------------------------------------------------------------

if __name__ == "__main__":
    if sys.argv[1:] == ["--train-math"]:
        import time
        t0 = time.time()
        import data  # the vendored text; only this command needs it
        vocab, special = train_math_tokenizer(data.read_texts(data.MATH_TOKENIZER_TEXT))
        # a developer command that rewrites a committed file: temp file + rename, so a crash cannot truncate it
        with open(MATH_FILE + ".tmp", "wb") as f:
            f.write(math_tokenizer_json(vocab, special))
        os.replace(MATH_FILE + ".tmp", MATH_FILE)
        print(f"wrote {MATH_FILE} in {time.time() - t0:.1f}s")
    else:
        print("usage: python tokenizer.py --train-math   (regenerates data/math_tokenizer.json)")
        sys.exit(1)
