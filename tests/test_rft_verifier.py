"""Beyond SFT on CPU with tiny models: rejection-sampling data (filtering and de-duplication on hand-made cases,
then sample -> grade -> JSONL -> train end to end), and the verifier (a value head: its loss falls on a separable
task, it saves and loads bit-exactly with its checkpoint, and best-of-N picks the sample it scores highest)."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint as C  # noqa: E402
import data  # noqa: E402
import engine as E  # noqa: E402
import sample as S  # noqa: E402
import train  # noqa: E402

TINY = ["--n_layer=2", "--n_embd=64", "--n_head=2", "--seq_len=64", "--batch_size=8", "--val_size=8",
        "--eval_samples=0", "--log_interval=5", "--eval_interval=1000", "--warmup_iters=2"]


def rec(pid, response, correct=True, formatted=True, truncated=False):
    return {"id": pid, "prompt": f"problem {pid}", "response": response, "gold": "42", "correct": correct,
            "formatted": formatted, "truncated": truncated}


def test_rft_rows_keep_correct_finished_distinct_solutions():
    records = [
        rec("a", "6 * 7 = 42. The answer is \\boxed{42}."),
        rec("a", "Six times seven: 6*7=42, so \\boxed{42}"),          # the same calculation reworded: a duplicate
        rec("a", "40 + 2 = 42. \\boxed{42}"),                          # another route: kept
        rec("a", "6 * 7 = 43 ... \\boxed{42}", correct=False),         # wrong: dropped
        rec("a", "84 / 2 = 42, then", truncated=True),                 # cut off: dropped
        rec("a", "it is 42", formatted=False),                         # no stated answer: dropped
        rec("b", "6 * 7 = 42. The answer is \\boxed{42}."),            # the same text for another problem: kept
        rec("b", "1,000 - 958 = 42 \\boxed{42}"),
        rec("b", "1000 - 958.0 = 42 \\boxed{42}"),                     # 1,000 == 1000 and 958.0 == 958: duplicate
    ]
    rows = data.rft_rows(records)
    assert [(r["id"], r["response"]) for r in rows] == [
        ("a", records[0]["response"]), ("a", records[2]["response"]), ("b", records[6]["response"]),
        ("b", records[7]["response"])]
    assert rows[0] == {"id": "a", "prompt": "problem a", "response": records[0]["response"], "answer": "42"}
    assert [r["id"] for r in data.rft_rows(records, max_per_problem=1)] == ["a", "b"]
    assert data.solution_signature("no numbers here") == data.solution_signature("No  numbers, here!")


def test_verifier_metrics():
    m = E.verifier_metrics([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert m["auroc"] == 1.0 and m["n"] == 4
    assert m["mse"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.01) / 4) and m["mae"] == pytest.approx(0.175)
    assert m["r2"] == pytest.approx(1 - m["mse"] / 0.25)
    assert E.verifier_metrics([0.5, 0.5], [1, 0])["auroc"] == 0.5  # ties count half
    assert E.verifier_metrics([0.2, 0.9], [1, 0])["auroc"] == 0.0
    assert E.verifier_metrics([0.95] * 10, [1] * 5 + [0] * 5)["ece"] == pytest.approx(0.45)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny model that has learned 30 problems by heart, then the two-command loop on its own samples."""
    d = tmp_path_factory.mktemp("rft")
    probs = d / "problems.jsonl"
    qs = [(a, b) for a in range(1, 7) for b in range(1, 6)]  # 30 problems, each 8 times
    probs.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
                             + "\n" for a, b in qs * 8))
    train.train(train.load_config(TINY + [f"--out_dir={d}/sft", f"--datasets={probs}", "--max_iters=120", "--lr=3e-3",
                                          "--val_size=0"]))
    # command 1: sample k per problem, grade, keep the correct distinct ones
    S.main(["--ckpt", f"{d}/sft/ckpt-000120.pt", "--eval", str(probs), "--max-samples", "6", "--num-samples", "6",
            "--temperature", "1.0", "--max-new-tokens", "24", "--out", f"{d}/graded.jsonl", "--rft-out", f"{d}/rft.jsonl"])
    return d, probs


def test_sample_grade_jsonl_train_end_to_end(pipeline):
    d, probs = pipeline
    graded = [json.loads(line) for line in open(d / "graded.jsonl")]
    rows = [json.loads(line) for line in open(d / "rft.jsonl")]
    assert len(graded) == 36 and 0 < len(rows) <= sum(r["correct"] for r in graded)
    assert all(r["correct"] and not r["truncated"] for r in graded if r["response"] in {x["response"] for x in rows})
    # command 2: train on the model's own solutions mixed with the references
    s = train.train(train.load_config(TINY + [f"--out_dir={d}/rft_run", f"--datasets={probs}:1,{d}/rft.jsonl:2",
                                              f"--init_from={d}/sft/ckpt-000120.pt", "--max_iters=3"]))
    assert s["step"] == 3 and s["loss"] > 0


def test_a_second_round_adds_only_new_distinct_solutions(pipeline, tmp_path):
    # expert iteration: round 2 (another seed) merged with round 1's graded samples
    d, probs = pipeline
    args = ["--ckpt", f"{d}/sft/ckpt-000120.pt", "--eval", str(probs), "--max-samples", "6", "--num-samples", "6",
            "--temperature", "1.0", "--max-new-tokens", "24", "--seed", "7", "--out", f"{tmp_path}/r2.jsonl"]
    S.main(args + ["--rft-out", f"{tmp_path}/r2_alone.jsonl"])
    S.main(args + ["--overwrite", "--rft-out", f"{tmp_path}/both.jsonl", "--rft-with", f"{d}/graded.jsonl"])
    r1, r2, both = ([json.loads(line) for line in open(f)] for f in (d / "rft.jsonl", tmp_path / "r2_alone.jsonl",
                                                                    tmp_path / "both.jsonl"))
    r1_graded = [json.loads(line) for line in open(d / "graded.jsonl")]
    r2_graded = [json.loads(line) for line in open(tmp_path / "r2.jsonl")]
    assert both == data.rft_rows(r1_graded + r2_graded) and both[:len(r1)] == r1  # round 1 first, then what is new
    assert max(len(r1), len(r2)) <= len(both) <= len(r1) + len(r2)
    keys = [(r["id"], data.solution_signature(r["response"])) for r in both]
    assert len(keys) == len(set(keys))  # distinct across rounds
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**r1_graded[0], "correct": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'correct' must be true or false"):
        S._graded_samples(str(bad))


def test_verifier_trains_saves_and_picks_best_of_n(pipeline):
    d, probs = pipeline
    graded = [json.loads(line) for line in open(d / "graded.jsonl")]
    assert 0 < sum(r["correct"] for r in graded) < len(graded)  # both kinds to learn from
    out = d / "verifier"
    train.train(train.load_config(TINY + [f"--out_dir={out}", f"--datasets={d}/graded.jsonl", "--objective=verifier",
                                          f"--init_from={d}/sft/ckpt-000120.pt", "--max_iters=20", "--lr=3e-3",
                                          "--eval_interval=10", "--save_interval=10", "--val_size=2"]))
    m = [json.loads(line) for line in open(out / "metrics.jsonl") if "verifier_auroc" in line]
    assert [r["step"] for r in m] == [10, 20] and all(0 <= r["verifier_auroc"] <= 1 for r in m)
    ck = C.load_checkpoint(str(out / "ckpt-000020.pt"))
    assert ck["value_head"] and set(ck["model"]) == {k for k in ck["model"] if k.startswith("value_head.")}
    model, _, _ = C.load_model(str(out / "ckpt-000020.pt"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ck["model"].items())  # bit-exact
    summary = S.main(["--ckpt", f"{d}/sft/ckpt-000120.pt", "--eval", str(probs), "--max-samples", "4",
                      "--num-samples", "4", "--temperature", "1.0", "--max-new-tokens", "24", "--verifier",
                      str(out / "ckpt-000020.pt"), "--out", f"{d}/bon.jsonl"])
    recs = [json.loads(line) for line in open(d / "bon.jsonl")]
    assert all(0 <= r["score"] <= 1 for r in recs)
    per = [recs[i:i + 4] for i in range(0, 16, 4)]
    top = [max(rs, key=lambda r: r["score"]) for rs in per]
    assert summary["verifier@4"] == sum(r["correct"] for r in top) / 4  # the top-scored sample of each problem
    assert "weighted_maj@4" in summary


def test_value_head_loss_falls_on_a_separable_task(tmp_path):
    # solutions that say "yes" are correct, those that say "no" are not: the head must learn it
    f = tmp_path / "labelled.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "response": ("yes " if i % 2 else "no ") + "x" * (i % 5),
                                     "correct": bool(i % 2)}) + "\n" for i in range(120)))
    base = tmp_path / "base"
    train.train(train.load_config(TINY + [f"--out_dir={base}", "--max_iters=2"]))
    train.train(train.load_config(TINY + [f"--out_dir={tmp_path}/v", f"--datasets={f}", "--objective=verifier",
                                          "--verifier_backbone=full", f"--init_from={base}/ckpt-000002.pt",
                                          "--max_iters=40", "--lr=3e-3", "--eval_interval=40", "--val_size=20"]))
    rows = [json.loads(line) for line in open(tmp_path / "v" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.3 * losses[0]
    assert [r for r in rows if "verifier_auroc" in r][-1]["verifier_auroc"] > 0.95


def test_verifier_settings_are_checked(tmp_path):
    for flags, match in ((["--objective=verifier"], "set init_from"),
                         (["--objective=verifier", "--init_from=x", "--eval_samples=5"], "eval_samples"),
                         (["--objective=verifier", "--init_from=x", "--verifier_backbone=lora"], "verifier_backbone"),
                         (["--objective=rl"], "objective")):
        with pytest.raises(SystemExit, match=match):
            train.train(train.load_config(TINY + [f"--out_dir={tmp_path}/o", *flags]))



def test_verifier_needs_labelled_data(pipeline, tmp_path):
    d, probs = pipeline
    with pytest.raises(ValueError, match="no 'correct' label"):
        train.train(train.load_config(TINY + [f"--out_dir={tmp_path}/o", "--objective=verifier",
                                              f"--init_from={d}/sft/ckpt-000120.pt", f"--datasets={probs}"]))
    assert not (tmp_path / "o").exists()
