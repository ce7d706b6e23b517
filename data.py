"""
Data: load math datasets, render them into prompt/response token ids with a loss mask, and pack them into
fixed-length training rows.

An example is a dict {"id", "prompt", "response", "answer"}: `prompt` is the problem text, `response` the
target solution, `answer` the gold final answer (what grade.py compares against). Rendering turns it into
token ids plus a 0/1 mask of the tokens the loss is taken on (the response only). Packing puts several
examples into one row of exactly `seq_len` tokens; each keeps its own positions (restarting at 0) and its own
document id, so the model attends only within an example (see model.py `doc=`). The whole epoch plan (which
examples land in which row) is a pure function of (seed, epoch), so resuming at row k replays exactly the rows
an uninterrupted run would have seen.
"""
import functools
import json
import math
import os
import random
import re
from typing import NamedTuple

import numpy as np
import torch

from grade import gsm8k_gold, math_gold  # the one place that reads a '#### 72' line or a \boxed{} answer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")

# The one evaluation/training prompt protocol (cf. Qwen2.5-Math's chain-of-thought
# prompt). sample.py uses the same.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_TEMPLATE = "Solve this math problem:\n\n{problem}\n\nAnswer:"

# -----------------------------------------------------------------------------
# loading

def read_jsonl(path, required=(), one_of=(), lines=False):
    """Rows (dicts) of a JSON Lines file, blank lines skipped; each must have every key in `required`
    and at least one in `one_of`, with string values. Anything else (a missing or unreadable file, bytes
    that are not UTF-8, malformed JSON, a missing key, a null or a number where text belongs) is a
    ValueError or FileNotFoundError naming the file and line. lines=True gives (line number, row) pairs.
    The one JSONL reader of the project."""
    rows = []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected a .jsonl file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing key(s) {missing}; the line has {sorted(row)}")
            if one_of and not any(k in row for k in one_of):
                keys = ", ".join(repr(k) for k in one_of[:-1]) + f" or {one_of[-1]!r}"
                raise ValueError(f"{path}:{lineno}: expected an object with a {keys} key; the line has {sorted(row)}")
            for k in [*required, *(k for k in one_of if k in row)]:
                if not isinstance(row[k], str):
                    got = "null" if row[k] is None else type(row[k]).__name__
                    raise ValueError(f"{path}:{lineno}: '{k}' must be a string, got {got}")
            rows.append((lineno, row) if lines else row)
    return rows


# every question, answer, problem and solution string of the vendored data (tokenizer tests and benchmark),
# and the training text the math tokenizer is learned from (no test split)
VENDORED_TEXT = [("data/gsm8k/train.jsonl", ("question", "answer")), ("data/gsm8k/test.jsonl", ("question", "answer")),
                 ("data/math/train.jsonl", ("problem", "solution", "answer")),
                 ("data/math/test.jsonl", ("problem", "solution", "answer")),
                 ("data/math500/test.jsonl", ("problem", "solution", "answer"))]
MATH_TOKENIZER_TEXT = [("data/gsm8k/train.jsonl", ("question", "answer")), ("data/math/train.jsonl", ("problem", "solution"))]


def read_texts(files=VENDORED_TEXT):
    """The string fields `keys` of every row of each (jsonl path relative to the repo, keys)."""
    return [str(row[k]) for rel, keys in files for row in read_jsonl(os.path.join(HERE, rel), required=keys)
            for k in keys]


def is_test_split(path):
    """Whether a path is one of the vendored test splits (data/<dataset>/test.jsonl): by name, the datasets
    train on their train split; by path, nothing stops a user but this."""
    p = os.path.realpath(path)
    return p.startswith(os.path.realpath(DATA_DIR) + os.sep) and os.path.basename(p).startswith("test")


def test_problem(examples):
    """The first of `examples` (dicts with "id" and "prompt") whose problem text is a GSM8K, MATH or MATH-500
    test problem, as (its id, the dataset); None if none is. Graded samples and RFT rows of test problems keep
    the problems' texts: training on them, or picking best.pt by them, would carry the test set into the
    model, which no file name reveals. (No text is in both a train and a test split of these; the generated
    arithmetic's small problems recur across its sizes' splits, so it is not checked here.)"""
    tests = {ex["prompt"]: name for name in ("gsm8k", "math", "math500")  # 6,800 texts, ~0.1 s: for files only
             for ex in DATASETS[name].load("test")}
    return next(((ex["id"], tests[ex["prompt"]]) for ex in examples if ex["prompt"] in tests), None)


def short_name(path):
    """Example ids name files relative to the repo when they are vendored (data/gsm8k/test.jsonl:12)."""
    path = os.path.abspath(path)
    return os.path.relpath(path, HERE) if path.startswith(HERE + os.sep) else path


def gsm8k_solution(answer, where="GSM8K answer"):
    """A GSM8K answer in the form our prompt asks for: calculator annotations <<48/2=24>> dropped and the
    '#### 72' line replaced by a sentence ending in \\boxed{72}, which grade.py extracts."""
    if "####" not in answer:
        raise ValueError(f"{where}: no '#### <answer>' line")
    final = gsm8k_gold({"answer": answer})
    body = re.sub(r"<<[^<>]*>>", "", answer.rsplit("####", 1)[0]).strip()
    return f"{body}\nThe final answer is $\\boxed{{{final}}}$.", final


def load_gsm8k(path):
    out = []
    for i, (lineno, row) in enumerate(read_jsonl(path, required=("question", "answer"), lines=True)):
        solution, final = gsm8k_solution(row["answer"], where=f"{path}:{lineno}")
        out.append({"id": f"{short_name(path)}:{i + 1}", "prompt": row["question"], "response": solution, "answer": final})
    return out


def _math_rows(path):
    """MATH rows from a jsonl file or from the original tree (<split>/<subject>/<n>.json, detected automatically)."""
    if os.path.isfile(path):
        return [(f"{short_name(path)}:{i + 1}", r, f"{path}:{n}")
                for i, (n, r) in enumerate(read_jsonl(path, required=("problem", "solution"), lines=True))]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MATH data not found: {path} (expected a .jsonl file or a directory of <subject>/<n>.json)")
    rows = []
    for root, _, files in sorted(os.walk(path)):
        # numeric file ids sort numerically, so the order matches the vendored jsonl (subject, then id)
        for name in sorted((f for f in files if f.endswith(".json")), key=lambda f: (len(f), f)):
            fpath = os.path.join(root, name)
            try:
                with open(fpath, encoding="utf-8") as f:
                    row = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{fpath}: invalid JSON ({e.msg} at line {e.lineno})") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"{fpath}: not UTF-8 text (byte {e.start})") from None
            for k in ("problem", "solution"):
                if not isinstance(row, dict) or not isinstance(row.get(k), str):
                    raise ValueError(f"{fpath}: expected an object with a string '{k}'")
            rows.append((fpath, row, fpath))
    if not rows:
        raise FileNotFoundError(f"no MATH .json files under {path}")
    return rows


def load_math(path):
    out = []
    for where, row, loc in _math_rows(path):
        answer = row.get("answer")
        if answer is None:
            try:
                answer = math_gold(row)
            except ValueError:
                raise ValueError(f"{loc}: no 'answer' and no \\boxed{{}} answer in the solution") from None
        elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        elif not isinstance(answer, str):
            raise ValueError(f"{loc}: 'answer' must be a string or a number, got {type(answer).__name__}")
        out.append({"id": row.get("unique_id", where), "prompt": row["problem"], "response": row["solution"],
                    "answer": answer})
    return out


def load_pairs(path, prompt_key="prompt", response_key="response"):
    """Generic jsonl of prompt/response pairs: rejection-sampling data (sample.py --rft-out) or anything else.
    An 'answer' (or 'gold', as sample.py --eval writes it) is kept for grading; a boolean 'correct' becomes
    the example's label, which a verifier learns (train.py objective=verifier). Rows with a prompt and an
    answer but no response are problems to be solved (rl.py samples their solutions); their response is ""."""
    out = []
    rows = read_jsonl(path, required=(prompt_key,), lines=True)
    for n, r in rows:
        if response_key not in r and "answer" not in r:
            raise ValueError(f"{path}:{n}: a '{prompt_key}' row needs a '{response_key}' or an 'answer'")
        if not isinstance(r.get(response_key, ""), str):
            raise ValueError(f"{path}:{n}: '{response_key}' must be a string")
        r.setdefault(response_key, "")
    for i, (n, r) in enumerate(rows):
        answer = r.get("answer", r.get("gold"))
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        elif answer is not None and not isinstance(answer, str):
            raise ValueError(f"{path}:{n}: 'answer' must be a string or a number, got {type(answer).__name__}")
        ex = {"id": f"{short_name(path)}:{i + 1}", "prompt": r[prompt_key], "response": r[response_key],
              "answer": answer}
        if "correct" in r:
            if not isinstance(r["correct"], bool):
                raise ValueError(f"{path}:{n}: 'correct' must be true or false, got {r['correct']!r}")
            ex["label"] = float(r["correct"])
        out.append(ex)
    return out


# -----------------------------------------------------------------------------
# rejection sampling: the model's own correct, distinct solutions as training data (Yuan et al. 2023)

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def solution_signature(text):
    """What makes two solutions the same reasoning: the sequence of numbers they write, in order (the
    quantities of each calculation step; thousands separators and trailing zeros of decimals
    dropped), or for a solution without numbers its lower-cased words. Rewordings of one calculation
    collapse; another route does not."""
    nums = [n.replace(",", "") for n in _NUMBER.findall(text)]
    nums = [n.rstrip("0").rstrip(".") if "." in n else n for n in nums]
    return tuple(nums) if nums else tuple(re.findall(r"\w+", text.lower()))


def rft_rows(records, max_per_problem=0):
    """From graded samples (engine.evaluate's records): the correct ones that finished (not cut off) with a
    recognised answer, one per distinct signature per problem, at most max_per_problem (0 = all) ->
    rows {"id", "prompt", "response", "answer"} for a jsonl that train.py trains on (datasets=...)."""
    rows, seen, per = [], set(), {}
    for r in records:
        if not (r["correct"] and r["formatted"] and not r["truncated"]):
            continue
        key = (r["id"], solution_signature(r["response"]))
        if key in seen or (max_per_problem and per.get(r["id"], 0) >= max_per_problem):
            continue
        seen.add(key)
        per[r["id"]] = per.get(r["id"], 0) + 1
        rows.append({"id": r["id"], "prompt": r["prompt"], "response": r["response"], "answer": r["gold"]})
    return rows


def make_arith(n, seed, max_digits=3, exclude=()):
    """Generated addition/subtraction problems with operands of up to max_digits digits: the
    embedded default's data, needs no download. Deterministic; problems whose prompt is in
    `exclude` are skipped (train vs test)."""
    rng = random.Random(seed)
    out, exclude = [], set(exclude)
    while len(out) < n:
        a, b = rng.randrange(10 ** rng.randint(1, max_digits)), rng.randrange(10 ** rng.randint(1, max_digits))
        op = rng.choice("+-")
        c = a + b if op == "+" else a - b
        prompt = f"What is {a} {op} {b}?"
        if prompt in exclude:
            continue
        out.append({"id": f"arith{max_digits}-{seed}:{len(out)}", "prompt": prompt,
                    "response": f"{a} {op} {b} = {c}. The final answer is $\\boxed{{{c}}}$.", "answer": str(c)})
    return out


def load_arith(digits, split):
    """The embedded example's problems: operands of up to `digits` digits; no test problem appears in train."""
    test = make_arith(500, seed=1, max_digits=digits)
    if split == "test":
        return test
    return make_arith(20000, seed=0, max_digits=digits, exclude=[t["prompt"] for t in test])


class Named(NamedTuple):
    splits: tuple        # the splits it has
    max_new_tokens: int  # the evaluation protocol's budget of new tokens (engine.evaluate, sample.py --eval)
    load: object         # split -> examples {"id", "prompt", "response", "answer"}, the gold answer extracted


# Every named dataset, registered once: train.py, sample.py, engine.py and bench.py read this table. The
# answers are extracted by grade.py's gsm8k_gold / math_gold inside the loaders. A file of your own needs no
# entry: load_dataset reads any .jsonl (GSM8K, MATH or prompt/response layout) or MATH folder by its path.
DATASETS = {
    "gsm8k": Named(("train", "test"), 512, lambda s: load_gsm8k(os.path.join(DATA_DIR, "gsm8k", f"{s}.jsonl"))),
    "math": Named(("train", "test"), 1024, lambda s: load_math(os.path.join(DATA_DIR, "math", f"{s}.jsonl"))),
    "math500": Named(("test",), 1024, lambda s: load_math(os.path.join(DATA_DIR, "math500", "test.jsonl"))),
    # generated arithmetic for from-scratch models: arith = operands of up to 3 digits, arithN = up to N
    "arith": Named(("train", "test"), 48, functools.partial(load_arith, 3)),
    **{f"arith{d}": Named(("train", "test"), max(48, 16 * d), functools.partial(load_arith, d)) for d in range(1, 10)},
}


def load_dataset(name, split="train"):
    """A named dataset (DATASETS) or a path: a .jsonl with question/answer (GSM8K layout),
    problem/solution (MATH layout) or prompt/response keys, or a MATH directory tree (a path has no
    splits: the file is used whole)."""
    if name in DATASETS:
        if split not in DATASETS[name].splits:
            raise ValueError(f"{name} has no {split!r} split (it has {', '.join(DATASETS[name].splits)})")
        return DATASETS[name].load(split)
    if os.path.isdir(name):
        return load_math(name)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"dataset '{name}': not a known name ({', '.join(list(DATASETS)[:5])}, arith1-9) "
                                f"nor a file or folder")
    rows = read_jsonl(name)
    if not rows:
        raise ValueError(f"{name}: the dataset file has no rows")
    if "question" in rows[0]:
        return load_gsm8k(name)
    if "problem" in rows[0]:
        return load_math(name)
    if "prompt" in rows[0] and ("response" in rows[0] or "answer" in rows[0]):
        return load_pairs(name)
    raise ValueError(f"{name}:1: cannot tell the layout: expected question/answer (GSM8K), problem/solution (MATH) "
                     f"or prompt/response (or prompt/answer) keys; the line has {sorted(rows[0])}")


def parse_mixture(spec):
    """'gsm8k:1,math:0.5' -> [('gsm8k', 1.0), ('math', 0.5)]. A weight w means each epoch takes round(w * len)
    of that dataset's examples: w < 1 subsamples, w > 1 repeats. A ValueError names a bad entry and why."""
    out = []
    for part in spec.split(","):
        name, w = part.strip(), 1.0
        head, sep, tail = name.rpartition(":")
        if sep and not os.path.exists(name):  # name:weight (a file whose own name has a colon is taken whole)
            where = f"datasets='{spec}': the weight of '{head}'"
            try:
                name, w = head, float(tail)
            except ValueError:
                raise ValueError(f"{where}, {tail!r}, is not a number") from None
            if not math.isfinite(w):
                raise ValueError(f"{where} is {tail}: it must be a finite number >= 0")
            if w < 0:
                raise ValueError(f"{where} is {tail}: it must be >= 0 (0 leaves the dataset out of training)")
            if w > 1e4:
                raise ValueError(f"{where} is {tail}: at most 10000 (copies of the dataset in an epoch)")
        if not name:
            raise ValueError(f"datasets='{spec}': entry '{part}' names no dataset")
        if name in (n for n, _ in out):
            raise ValueError(f"datasets='{spec}': '{name}' is named twice: give it one weight")
        out.append((name, w))
    if not any(w > 0 for _, w in out):
        raise ValueError(f"datasets='{spec}': every weight is 0, so there is nothing to train on")
    return out

# -----------------------------------------------------------------------------
# rendering: example -> (ids, mask)

def prompt_messages(problem, system_prompt=SYSTEM_PROMPT):
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": problem}]


def render_prompt(tok, problem, prompt_format, system_prompt=SYSTEM_PROMPT):
    """Token ids of the prompt the model continues from: exactly the prefix that training puts before a response."""
    if prompt_format == "chat":
        return tok.render_chat(prompt_messages(problem, system_prompt), add_generation_prompt=True, allow_special=False)[0]
    if prompt_format == "plain":
        return tok.encode(PLAIN_TEMPLATE.format(problem=problem), allow_special=False)
    raise ValueError(f"prompt_format must be 'chat' or 'plain', got '{prompt_format}'")


def render_example(tok, ex, prompt_format, system_prompt=SYSTEM_PROMPT):
    """(ids, mask): mask[t] = 1 where token t belongs to the response (the loss is taken only
    there). Dataset text is encoded with special tokens as plain text, so a stray '<|im_end|>'
    in a problem cannot end a turn."""
    if prompt_format == "chat":
        msgs = prompt_messages(ex["prompt"], system_prompt) + [{"role": "assistant", "content": ex["response"]}]
        return tok.render_chat(msgs, allow_special=False)
    p = render_prompt(tok, ex["prompt"], "plain")
    r = tok.encode(" " + ex["response"], allow_special=False) + [tok.eot_id]
    return p + r, [0] * len(p) + [1] * len(r)

# -----------------------------------------------------------------------------
# packing: examples -> fixed-length rows

def pack_rows(lengths, order, seq_len, open_rows=64):
    """Assign examples to rows of at most seq_len tokens: first fit over the last `open_rows`
    rows, which packs tightly while keeping roughly the shuffled order. Returns a list of rows,
    each a list of example indices."""
    rows, free, open_ = [], [], []  # free[r] = tokens left in row r; open_ = rows still accepting
    for i in order:
        n = min(lengths[i], seq_len)
        for r in open_:
            if free[r] >= n:
                break
        else:
            r = len(rows)
            rows.append([]); free.append(seq_len); open_.append(r)
            if len(open_) > open_rows:
                open_.pop(0)
        rows[r].append(i)
        free[r] -= n
        if free[r] == 0:
            open_.remove(r)
    return rows


def collate(rows, examples, seq_len, pad_id, fields=()):
    """Rows of example indices -> tensors, all (B, T=seq_len): idx: token ids; targets: next token where it
    is a supervised response token else -100; pos: position within its own example; doc: document id within
    the row (pads get their own id, so they attend only to pads). Plus loss_index (N,): the flat positions of
    the supervised targets, found here on the CPU, not on the GPU. Examples with a "label" (graded samples: 1
    correct, 0 not) also give labels (M,) float, their label at each of their response tokens, and
    label_index (M,), those tokens' flat positions (a verifier's value head learns there whether the solution
    it has read so far ends correct). Each key of `fields` gives an (N,) float tensor aligned with loss_index,
    from each example's value of that key: a number for all its supervised targets (an advantage), or a list
    with one number per supervised target, in order (old log-probabilities)."""
    B, T = len(rows), seq_len
    idx = np.full((B, T), pad_id, dtype=np.int64)
    tgt = np.full((B, T), -100, dtype=np.int64)
    lab = np.full((B, T), -1.0, dtype=np.float32)
    pos = np.zeros((B, T), dtype=np.int64)
    doc = np.zeros((B, T), dtype=np.int64)
    vals = {k: [] for k in fields}
    for b, row in enumerate(rows):
        t = 0
        for d, i in enumerate(row):
            ids, mask = examples[i]["ids"], examples[i]["mask"]
            n = min(len(ids), T - t)
            idx[b, t:t + n] = ids[:n]
            # target at position j is token j+1, if that one is supervised
            m = np.asarray(mask[1:n], dtype=bool)
            tgt[b, t:t + n - 1] = np.where(m, np.asarray(ids[1:n]), -100)
            for key in fields:  # in loss_index's order: rows, then examples within a row, then positions
                v, k = examples[i][key], int(m.sum())
                v = np.full(k, v, dtype=np.float32) if np.isscalar(v) else np.asarray(v, dtype=np.float32)[:k]
                if len(v) != k:
                    raise ValueError(f"example {examples[i].get('id', i)}: '{key}' has {len(v)} values for {k} "
                                     f"supervised tokens")
                vals[key].append(v)
            if "label" in examples[i]:
                lab[b, t:t + n] = np.where(np.asarray(mask[:n], dtype=bool), examples[i]["label"], -1.0)
            pos[b, t:t + n] = np.arange(n)
            doc[b, t:t + n] = d
            t += n
        pos[b, t:] = np.arange(T - t)
        doc[b, t:] = len(row)
    out = {k: torch.from_numpy(v) for k, v in (("idx", idx), ("targets", tgt), ("pos", pos), ("doc", doc))}
    out["loss_index"] = torch.from_numpy(np.flatnonzero(tgt.reshape(-1) != -100))  # (N,)
    out["label_index"] = torch.from_numpy(np.flatnonzero(lab.reshape(-1) >= 0))  # (M,)
    out["labels"] = torch.from_numpy(lab.reshape(-1)[out["label_index"].numpy()])  # (M,)
    for key, v in vals.items():
        out[key] = torch.from_numpy(np.concatenate(v) if v else np.zeros(0, dtype=np.float32))  # (N,)
    return out


class Dataset:
    """Tokenized examples plus the deterministic plan of rows for every epoch.

    rows(k) gives the k-th training row of the whole run (epochs laid end to end), so the data position to
    resume from is a single integer: the number of rows consumed."""

    def __init__(self, examples, tok, seq_len, prompt_format, pack=True, seed=0, weights=None,
                 system_prompt=SYSTEM_PROMPT):
        self.seq_len, self.pack, self.seed, self.pad_id = seq_len, pack, seed, tok.pad_id
        self.examples = examples
        self.source = weights  # list of (start, end, weight) ranges into examples, one per dataset
        for ex in examples:
            ex["ids"], ex["mask"] = render_example(tok, ex, prompt_format, system_prompt)
        self.lengths = [len(ex["ids"]) for ex in examples]
        self.n_truncated = sum(n > seq_len for n in self.lengths)
        self.n_supervised_lost = sum(sum(ex["mask"][seq_len:]) for ex in examples)
        # a row's target at position j is token j+1: the tokens an example can be
        # trained on are mask[1:seq_len]
        kept = [sum(ex["mask"][1:seq_len]) for ex in examples]
        self.n_supervised = sum(kept)
        self.n_no_answer = sum(k == 0 for k in kept)  # examples that teach nothing: the answer is cut off
        self._plans = {}

    def epoch_order(self, epoch):
        """Shuffled example indices for one epoch, with per-dataset weights applied."""
        rng = np.random.default_rng([self.seed, epoch])
        order = []
        for start, end, w in self.source or [(0, len(self.examples), 1.0)]:
            n = end - start
            k = round(w * n)
            reps, rest = divmod(k, n) if n else (0, 0)
            idx = [start + j for _ in range(reps) for j in rng.permutation(n)]
            idx += [start + j for j in rng.permutation(n)[:rest]]
            order += idx
        return [order[j] for j in rng.permutation(len(order))]

    def plan(self, epoch):
        if epoch not in self._plans:
            order = self.epoch_order(epoch)
            self._plans[epoch] = pack_rows(self.lengths, order, self.seq_len) if self.pack else [[i] for i in order]
        return self._plans[epoch]

    def rows_per_epoch(self, epoch=0):
        return len(self.plan(epoch))

    def total_rows(self, epochs):
        """Rows in `epochs` epochs (a fraction counts that fraction of the last epoch's rows)."""
        full = int(epochs)
        n = sum(self.rows_per_epoch(e) for e in range(full))
        return n + int((epochs - full) * self.rows_per_epoch(full)) if epochs > full else n

    def row(self, k):
        """(epoch, row) for global row index k."""
        e = 0
        while k >= self.rows_per_epoch(e):
            k -= self.rows_per_epoch(e)
            e += 1
        return self.plan(e)[k]

    def batch(self, start, n, pad_to=0):
        """The n rows starting at global row `start`, as tensors, plus the ids of the examples in them; with
        pad_to, empty rows (no tokens, no targets) make up the batch to pad_to rows."""
        rows = [self.row(k) for k in range(start, start + n)] + [[]] * max(0, pad_to - n)
        b = collate(rows, self.examples, self.seq_len, self.pad_id)
        b["example_ids"] = [[self.examples[i]["id"] for i in r] for r in rows]
        return b

    def real_tokens(self, start, n):
        """Tokens that are not padding in the n rows starting at global row `start` (what tokens/s counts)."""
        return sum(min(self.lengths[i], self.seq_len) for k in range(start, start + n) for i in self.row(k))

    def supervised_tokens(self, start, n, key="loss_index"):
        """len(batch(start, n)[key]) for the n rows starting at global row `start`, counted without building
        the rows: the supervised targets ("loss_index") or the labelled response tokens ("label_index"). Each
        DDP rank learns the global batch's count from it, with no collective (and no host sync) per step."""
        total = 0
        for k in range(start, start + n):
            t = 0
            for i in self.row(k):
                m = min(self.lengths[i], self.seq_len - t)  # the tokens of example i that fit in the row
                mask = self.examples[i]["mask"]
                if key == "loss_index":
                    total += sum(mask[1:m])  # as collate: target j is token j+1
                elif "label" in self.examples[i]:
                    total += sum(mask[:m])
                t += m
        return total

    def stats(self):
        n_tok = sum(min(n, self.seq_len) for n in self.lengths)
        rows = self.rows_per_epoch(0)
        return {"examples": len(self.examples), "truncated": self.n_truncated, "rows_per_epoch": rows,
                "fill": n_tok / max(1, rows * self.seq_len), "supervised_tokens_cut": self.n_supervised_lost,
                "supervised_tokens": self.n_supervised, "examples_without_answer_tokens": self.n_no_answer}


def held_out(spec, seed, val_size):
    """The problems a mixture holds out: -> (parts, orders, held), per dataset its (name, weight, rows), its rows
    in a fixed-seed order, and the set of its problem texts held out. val_size distinct problems in all, drawn
    from each dataset's order in proportion to the problems it adds to the mixture (see build_datasets)."""
    parts = [(name, w, load_dataset(name, "train")) for name, w in parse_mixture(spec)]
    orders, new = [], []  # per dataset: its rows in a fixed-seed order; the problems it adds, in that order
    seen = set()
    for name, w, rows in parts:
        order = np.random.default_rng([seed, 7]).permutation(len(rows))
        orders.append(order)
        fresh = list(dict.fromkeys(rows[i]["prompt"] for i in order if rows[i]["prompt"] not in seen))
        new.append(fresh)
        seen.update(fresh)
    held = [set(fresh[:math.ceil(val_size * len(fresh) / max(1, len(seen))) if val_size else 0]) for fresh in new]
    return parts, orders, held


def split_problems(spec, seed=0, val_size=0, max_samples=0):
    """Problems to train on by sampling (rl.py) and problems held out to pick best.pt, each problem once:
    -> (train, val), lists of examples with their gold answers. The held-out problems are the ones
    build_datasets holds out with the same spec, seed and val_size, so an SFT run and an RL run on the same
    data select their checkpoints on the same problems. max_samples (if > 0) caps each dataset's problems."""
    parts, orders, held = held_out(spec, seed, val_size)
    train, val, seen = [], [], set().union(*held)
    for (name, w, rows), order, mine in zip(parts, orders, held):
        first = {}  # each held-out problem once, its first row in the order
        for i in order:
            if rows[i]["prompt"] in mine:
                first.setdefault(rows[i]["prompt"], rows[i])
        val += list(first.values())
        tr = []
        for i in order:
            if rows[i]["prompt"] not in seen:
                seen.add(rows[i]["prompt"])
                tr.append(rows[i])
        train += tr[:max_samples] if max_samples else tr
    missing = next((ex["id"] for ex in train + val if ex.get("answer") is None), None)
    if missing:
        raise ValueError(f"datasets='{spec}': problem {missing} has no gold answer to grade against")
    if not train:
        raise ValueError(f"datasets='{spec}': no problems left to train on after the {len(seen)} held out; "
                         f"lower val_size")
    return train, val


def build_datasets(spec, tok, seq_len, prompt_format, pack=True, seed=0, max_samples=0, val_size=0,
                   system_prompt=SYSTEM_PROMPT):
    """Train and validation Datasets from a mixture spec ('gsm8k:1,math:0.5'). val_size *problems*
    (distinct problem texts) are held out, drawn from each dataset's fixed-seed order in proportion to the
    problems it adds to the mixture. Problems, not rows: a dataset that repeats a problem (generated
    arithmetic; a file of 8 graded samples per problem; a file of the model's own solutions) would
    otherwise be drawn in proportion to its rows, and a file of rejection-sampled solutions holds only the
    problems the model could already solve, so its rows would make the held-out eval easier than the task.
    The validation rows are every distinct row of a held-out problem in the dataset it was drawn from (a
    verifier is judged on all samples of its held-out problems); every row of a held-out problem, in any
    dataset, leaves training, so the eval that picks best.pt never grades a trained-on problem. max_samples
    (if > 0) caps each dataset's training examples."""
    train, val, ranges = [], [], []
    parts, orders, mine = held_out(spec, seed, val_size)
    held = set().union(*mine)
    for (name, w, rows), order, m in zip(parts, orders, mine):
        val += list({(rows[i]["prompt"], rows[i]["response"]): rows[i] for i in order
                     if rows[i]["prompt"] in m}.values())
    for (name, w, rows), order in zip(parts, orders):
        tr = [rows[i] for i in order if rows[i]["prompt"] not in held]
        if max_samples:
            tr = tr[:max_samples]
        if tr and w > 0 and round(w * len(tr)) == 0:  # Dataset.epoch_order takes round(w * n) of them
            raise ValueError(f"datasets='{spec}': the weight {w:g} of '{name}' takes round({w:g} x {len(tr)}) = 0 "
                             f"of its {len(tr)} training examples an epoch; raise it, or 0 to leave it out")
        ranges.append((len(train), len(train) + len(tr), w))
        train += tr
    if not train:
        raise ValueError(f"datasets='{spec}': no training examples" + (
            f" left: the {len(held)} held-out problems are all the problems there are (every row of a held-out "
            f"problem leaves training); lower val_size" if held else ""))
    train_ds = Dataset(train, tok, seq_len, prompt_format, pack, seed, ranges, system_prompt)
    if train_ds.n_supervised == 0:
        raise ValueError(f"datasets='{spec}' with seq_len={seq_len}: no training example has an answer token within "
                         f"its first {seq_len} tokens, so there is nothing to learn; raise seq_len (the longest "
                         f"example has {max(train_ds.lengths)} tokens)")
    val_ds = Dataset(val, tok, seq_len, prompt_format, pack, seed, None, system_prompt) if val else None
    return train_ds, val_ds
