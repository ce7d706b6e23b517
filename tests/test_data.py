"""data.py: loaders and their errors, the GSM8K answer form, loss masks, packing, mixing, determinism."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "qwen2.5")


class ByteTok:
    """A stand-in tokenizer (bytes + one end token) for the tests that are about layout, not vocabulary."""
    name, n_vocab, eot_id, pad_id = "bytes", 257, 256, 256

    def encode(self, text, allow_special=True):
        return list(text.encode())

    def render_chat(self, messages, add_generation_prompt=False, allow_special=True):
        ids, mask = [], []
        for m in messages:
            head = list(f"<{m['role']}>".encode())
            body = list(m["content"].encode()) + [self.eot_id]
            ids += head + body
            mask += [0] * len(head) + [int(m["role"] == "assistant")] * len(body)
        if add_generation_prompt:
            ids += list(b"<assistant>")
            mask += [0] * 11
        return ids, mask


def examples(n, seed=0):
    return data.make_arith(n, seed)


def test_gsm8k_solution_drops_calculator_and_boxes_answer():
    sol, final = data.gsm8k_solution("Natalia sold 48/2 = <<48/2=24>>24 clips.\nSo 1,000 total.\n#### 1,000")
    assert "<<" not in sol and "24 clips" in sol
    assert final == "1000" and sol.endswith("$\\boxed{1000}$.")
    with pytest.raises(ValueError, match="####"):
        data.gsm8k_solution("no final line")


def test_vendored_gsm8k_answers_grade_correct():
    from grade import grade
    rows = data.load_dataset("gsm8k", "test")
    assert len(rows) == 1319
    bad = [r["id"] for r in rows if not grade(r["response"], r["answer"]).correct]
    assert not bad, bad[:5]


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q2", oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        data.load_gsm8k(str(p))
    p.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: missing key"):
        data.load_gsm8k(str(p))
    p.write_text('{"question": "q", "answer": "no hashes"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        data.load_gsm8k(str(p))


def test_math_directory_tree_equals_jsonl(tmp_path):
    rows = data.read_jsonl(os.path.join(data.DATA_DIR, "math", "test.jsonl"))[:30]
    for i, r in enumerate(rows):
        d = tmp_path / "test" / r["type"].lower().replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.json").write_text(json.dumps({k: r[k] for k in ("problem", "solution", "level", "type")}))
    tree = data.load_dataset(str(tmp_path))
    flat = data.load_math(os.path.join(data.DATA_DIR, "math", "test.jsonl"))[:30]
    assert sorted((e["prompt"], e["response"], e["answer"]) for e in tree) == \
           sorted((e["prompt"], e["response"], e["answer"]) for e in flat)


def test_unknown_dataset_is_clear():
    with pytest.raises(FileNotFoundError, match="not a known name"):
        data.load_dataset("gsm9k")


def test_parse_mixture():
    assert data.parse_mixture("gsm8k:1,math:0.5") == [("gsm8k", 1.0), ("math", 0.5)]
    assert data.parse_mixture("gsm8k") == [("gsm8k", 1.0)]
    with pytest.raises(ValueError):
        data.parse_mixture("gsm8k:-1")


def test_plain_mask_covers_response_and_end_token_only():
    tok = ByteTok()
    ex = examples(1)[0]
    ids, mask = data.render_example(tok, ex, "plain")
    prompt = data.render_prompt(tok, ex["prompt"], "plain")
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
    sup = bytes(i for i, m in zip(ids, mask) if m and i < 256).decode()
    assert sup == " " + ex["response"] and ids[-1] == tok.eot_id and mask[-1] == 1


def test_chat_mask_with_real_qwen_template():
    from tokenizer import load_tokenizer
    tok = load_tokenizer(FIXTURE)
    ex = {"id": "x", "prompt": "What is 2+2? <|im_end|>", "response": "2+2 = 4. The final answer is $\\boxed{4}$.", "answer": "4"}
    ids, mask = data.render_example(tok, ex, "chat")
    prompt = data.render_prompt(tok, ex["prompt"], "chat")
    assert ids[:len(prompt)] == prompt, "training prompt prefix must equal the generation prompt"
    sup = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(sup) == ex["response"] + "<|im_end|>"
    assert "You are Qwen" not in tok.decode(ids)  # our system prompt replaces the default one
    # the stray '<|im_end|>' in the problem is text, not a turn end: exactly 3 real <|im_end|> (system, user, assistant)
    assert ids.count(tok.special["<|im_end|>"]) == 3 and "<|im_end|>" in tok.decode(prompt)


def test_collate_targets_positions_docs():
    tok = ByteTok()
    exs = examples(3)
    for e in exs:
        e["ids"], e["mask"] = data.render_example(tok, e, "plain")
    T = sum(len(e["ids"]) for e in exs[:2]) + 5
    b = data.collate([[0, 1]], exs, T, tok.pad_id)
    n0, n1 = len(exs[0]["ids"]), len(exs[1]["ids"])
    assert b["idx"][0, :n0].tolist() == exs[0]["ids"]
    assert b["pos"][0, n0:n0 + n1].tolist() == list(range(n1))                 # positions restart per example
    assert b["doc"][0].tolist() == [0] * n0 + [1] * n1 + [2] * 5               # pads are a document of their own
    assert b["targets"][0, n0 - 1] == -100                                    # never predict across a boundary
    assert (b["targets"][0, n0 + n1:] == -100).all()
    for j in range(n0 - 1):                                                    # target = next token iff supervised
        want = exs[0]["ids"][j + 1] if exs[0]["mask"][j + 1] else -100
        assert b["targets"][0, j] == want


def test_packing_keeps_every_example_once_and_fits():
    tok = ByteTok()
    ds = data.Dataset(examples(500), tok, seq_len=512, prompt_format="plain", seed=3)
    rows = ds.plan(0)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(500))
    assert all(sum(ds.lengths[i] for i in r) <= 512 for r in rows)
    assert ds.stats()["fill"] > 0.9
    assert ds.plan(1) != ds.plan(0)                                           # reshuffled each epoch
    again = data.Dataset(examples(500), tok, seq_len=512, prompt_format="plain", seed=3)
    assert again.plan(1) == ds.plan(1)                                        # ... deterministically
    b = ds.batch(5, 4)
    assert b["idx"].shape == (4, 512) and len(b["example_ids"]) == 4


def test_truncation_is_counted():
    tok = ByteTok()
    ds = data.Dataset(examples(50), tok, seq_len=40, prompt_format="plain")
    long = sum(n > 40 for n in ds.lengths)
    assert long > 0 and ds.stats()["truncated"] == long
    b = ds.batch(0, ds.rows_per_epoch(0))
    assert b["idx"].shape[1] == 40


def test_padding_mode_one_example_per_row():
    tok = ByteTok()
    ds = data.Dataset(examples(20), tok, seq_len=64, prompt_format="plain", pack=False)
    assert ds.rows_per_epoch(0) == 20 and all(len(r) == 1 for r in ds.plan(0))


def test_real_tokens_count_what_is_not_padding():
    # tokens/s in the training log and bench.py: a padded position (its own document, after the row's examples)
    # is not a token; truncated examples count up to seq_len; rows run on across the epoch boundary
    tok = ByteTok()
    for pack, seq_len in ((True, 512), (False, 64), (False, 40)):
        ds = data.Dataset(examples(50), tok, seq_len=seq_len, prompt_format="plain", pack=pack)
        for start, n in ((0, 4), (3, 7), (ds.rows_per_epoch(0) - 2, 5)):
            b = ds.batch(start, n)
            n_docs = torch.tensor([len(ds.row(k)) for k in range(start, start + n)])[:, None]
            assert ds.real_tokens(start, n) == int((b["doc"] < n_docs).sum()) > 0


def test_supervised_tokens_count_the_loss_index_without_building_rows():
    # DDP ranks normalise the loss by the global batch's count from this; it must equal what collate supervises,
    # with truncated examples (seq_len 80), unpacked rows, the epoch boundary, and a verifier's value targets
    tok = ByteTok()
    for pack, seq_len, value in ((True, 512, False), (False, 64, False), (True, 80, False), (True, 64, True)):
        exs = examples(50)
        for j, ex in enumerate(exs):
            ex["label"] = j % 2
        ds = data.Dataset(exs, tok, seq_len=seq_len, prompt_format="plain", pack=pack)
        key = "label_index" if value else "loss_index"
        spans = ((0, 4), (3, 7), (ds.rows_per_epoch(0) - 2, 5))
        counts = [ds.supervised_tokens(start, n, key) for start, n in spans]
        assert counts == [len(ds.batch(start, n)[key]) for start, n in spans]
        assert sum(counts) > 0


def test_mixture_weights_set_examples_per_epoch():
    tok = ByteTok()
    a, b = examples(100, seed=1), examples(40, seed=2)
    ds = data.Dataset(a + b, tok, 64, "plain", pack=False, seed=0, weights=[(0, 100, 0.5), (100, 140, 2.0)])
    order = ds.epoch_order(0)
    assert sum(i < 100 for i in order) == 50 and sum(i >= 100 for i in order) == 80
    assert len(set(i for i in order if i < 100)) == 50                          # subsampled without replacement


def test_build_datasets_val_is_held_out_and_max_samples():
    tok = ByteTok()
    tr, va = data.build_datasets("arith", tok, 64, "plain", max_samples=300, val_size=50)
    assert len(tr.examples) == 300 and len(va.examples) == 50
    assert not {e["id"] for e in tr.examples} & {e["id"] for e in va.examples}
    # generated arithmetic repeats problems: no validation problem may also be a training problem
    tr, va = data.build_datasets("arith2", tok, 64, "plain", val_size=200)
    rows = data.load_dataset("arith2", "train")
    held = {e["prompt"] for e in va.examples}
    assert len(va.examples) == 200 and len(held) == 200 and not held & {e["prompt"] for e in tr.examples}
    assert len(tr.examples) < len(rows) - 200  # the repeats of held-out problems really were dropped


def test_held_out_problems_are_drawn_by_problem_not_by_row(tmp_path):
    """A file of the model's own solutions (several rows per problem, only the problems it solved) must not pull
    the held-out eval towards its easy problems, and a file of k graded samples per problem is held out whole."""
    tok = ByteTok()
    ref, own, graded = tmp_path / "ref.jsonl", tmp_path / "own.jsonl", tmp_path / "graded.jsonl"
    ref.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"step {i}\n#### {i}"}) + "\n" for i in range(40)))
    own.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"way {j}: {i}", "answer": str(i)}) + "\n"
                           for i in range(10) for j in range(3)))  # 3 solutions each of the 10 easy problems
    tr, va = data.build_datasets(f"{ref}:1,{own}:1", tok, 64, "plain", val_size=8)
    held = {e["prompt"] for e in va.examples}
    assert len(held) == 8 and len(va.examples) == 8  # 8 problems, drawn from all 40 (the reference file's rows)
    assert all("ref.jsonl:" in e["id"] for e in va.examples)
    assert not held & {e["prompt"] for e in tr.examples}  # in neither file's training rows
    assert len(tr.examples) == 40 + 30 - 8 - 3 * len(held & {f"q{i}" for i in range(10)})
    # with a row-proportional draw, 30 of the 70 rows would have put ~3.4 of the 8 in the 10 easy problems
    graded.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"try {j}", "correct": j % 2 == 0}) + "\n"
                              for i in range(10) for j in range(4)))
    tr, va = data.build_datasets(str(graded), tok, 64, "plain", val_size=2)
    assert len({e["prompt"] for e in va.examples}) == 2 and len(va.examples) == 8 and len(tr.examples) == 32
