"""Bad input and faults, as a new user meets them: every case ends with a non-zero exit (SystemExit, no other
exception: no traceback), one line naming the key, file or line at fault, and nothing written before is changed.
Damaged checkpoints are refused, held-out data steers training, leftovers are cleaned up."""
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint as C  # noqa: E402
import data  # noqa: E402
import grade as G  # noqa: E402
import sample as S  # noqa: E402
import train  # noqa: E402
from model import Transformer  # noqa: E402

TINY = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--seq_len=96", "--batch_size=4", "--max_samples=300",
        "--val_size=16", "--eval_samples=0", "--log_interval=1", "--eval_interval=1000", "--warmup_iters=2",
        "--lr=1e-3"]


def fails(fn, *args, match):
    """fn(*args) must stop with SystemExit (a one-line message matching `match`, non-zero) and nothing else."""
    with pytest.raises(SystemExit) as e:
        fn(*args)
    msg = str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in msg, msg
    assert match in msg, msg
    return msg


def run_train(tmp_path, *flags):
    return train.main(TINY + [f"--out_dir={tmp_path}", *flags])


def snapshot(folder):
    """{relative path: sha256} of every file under folder: to show nothing was changed."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run: ckpt-000004.pt, best.pt, tokenizer/, metrics.jsonl."""
    d = tmp_path_factory.mktemp("run")
    run_train(d, "--max_iters=4", "--save_interval=2", "--eval_interval=2", "--keep_last=5")
    return d

# ---------------------------------------------------------------- train.py: settings


def test_help_lists_every_field_with_default_and_comment(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["-h"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in train.dataclasses.fields(train.Config):
        assert f"--{f.name}=" in out, f.name
    assert "--batch_size=16" in out and "rows per micro-batch" in out


def test_flags_apply_after_the_config_file_whatever_their_order(tmp_path):
    p = tmp_path / "exp.py"
    p.write_text("lr = 2e-5\nbatch_size = 3\n")
    cfg = train.load_config(["--batch_size=5", str(p), "--pack=false"])
    assert cfg.batch_size == 5 and cfg.lr == 2e-5 and cfg.pack is False


@pytest.mark.parametrize("flag,key", [
    ("--batch_size=0", "batch_size"), ("--grad_accum=0", "grad_accum"), ("--lr=-1", "lr"), ("--lr=nan", "lr"),
    ("--log_interval=0", "log_interval"), ("--eval_interval=0", "eval_interval"), ("--save_interval=0", "save_interval"),
    ("--seq_len=1", "seq_len"), ("--max_iters=-5", "max_iters"), ("--schedule=cosin", "schedule"),
    ("--beta2=1", "beta2"), ("--n_embd=30", "n_embd"), ("--dtype=float64", "dtype"), ("--device=tpu", "device"),
    ("--prompt_format=chatml", "prompt_format"), ("--datasets=gsm8k:-1", "gsm8k:-1"), ("--eval_dataset=gsm8k", "eval_dataset"),
    ("--model_preset=big", "model_preset"), ("--resume=nope.pt", "resume"), ("--eval_max_new_tokens=0", "eval_max_new_tokens"),
    ("--seed=-1", "seed=-1"), ("--epochs=-1", "epochs=-1"), ("--epochs=nan", "epochs=nan"),
    ("--tokenizer=nope", "tokenizer="),
])
def test_bad_setting_is_one_line_naming_the_key_and_writes_nothing(tmp_path, flag, key):
    out = tmp_path / "out"
    fails(run_train, out, flag, match=key)
    assert not out.exists()  # checked before anything is written


def test_device_cuda_without_cuda_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(run_train, tmp_path / "o", "--device=cuda", match="CUDA is not available")
    fails(S.main, ["--ckpt", "x", "--prompt", "p", "--device", "cuda"], match="CUDA is not available")
    fails(S.main, ["--ckpt", "x", "--prompt", "p", "--dtype", "float16"], match="float16 needs CUDA")


def test_config_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "exp.py"
    p.write_text("lr = 1e-3\nbatch_size = = 4\n")
    fails(train.load_config, [str(p)], match="exp.py:2:")
    p.write_text("lr = 1e-3\nx = 1 / 0\n")
    fails(train.load_config, [str(p)], match="exp.py:2: ZeroDivisionError")
    fails(train.load_config, [str(tmp_path)], match="config file not found")


def test_run_that_learns_nothing_is_refused(tmp_path):
    # every example is longer than seq_len: no answer token survives truncation
    out = tmp_path / "out"
    fails(run_train, out, "--seq_len=8", match="seq_len")
    assert not out.exists()


@pytest.mark.parametrize("content,match", [
    (b'{"question": "q", oops}\n', "data.jsonl:1: invalid JSON"),
    (b"", "has no rows"),
    (b'{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q\xff", "answer": "#### 2"}\n', "data.jsonl:2: not UTF-8"),
    (b'{"question": null, "answer": "#### 1"}\n', "data.jsonl:1: 'question' must be a string, got null"),
    (b'{"question": "q", "answer": "no marker"}\n', "data.jsonl:1: no '#### <answer>' line"),
    (b'{"prompt": "p"}\n', "data.jsonl:1: cannot tell the layout"),
    (b'[1, 2]\n', "expected a JSON object"),
])
def test_bad_dataset_file_names_file_and_line(tmp_path, monkeypatch, content, match):
    f = tmp_path / "data.jsonl"
    f.write_bytes(content)
    out = tmp_path / "out"
    monkeypatch.setattr(train, "build_model", never_loaded)  # read with the config, before the model loads
    fails(run_train, out, f"--datasets={f}", match=match)
    assert not out.exists()


def test_eval_file_must_not_be_a_training_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(50)))
    fails(run_train, tmp_path / "o", f"--datasets={f}", f"--eval_dataset={f}", "--eval_samples=4",
          match="is also a training dataset")

# ---------------------------------------------------------------- train.py: runs


def test_eval_during_training_uses_held_out_training_problems(tmp_path):
    run_train(tmp_path, "--max_iters=2", "--eval_interval=2", "--eval_samples=5", "--eval_max_new_tokens=4")
    ids = {json.loads(line)["id"] for line in open(tmp_path / "samples.jsonl")}
    # arith2's training problems come from seed 0, its test problems from seed 1: only the former may be graded
    assert ids and all(i.startswith("arith2-0:") for i in ids), ids


def test_fresh_run_will_not_overwrite_a_run(run_dir):
    before = snapshot(run_dir)
    fails(run_train, run_dir, "--max_iters=4", match="already holds a run")
    assert snapshot(run_dir) == before


def test_resume_auto_says_what_it_found(tmp_path, capsys):
    run_train(tmp_path, "--max_iters=2", "--resume=auto")
    assert "no ckpt-*.pt" in capsys.readouterr().out
    run_train(tmp_path, "--max_iters=3", "--resume=auto")
    assert "found " + str(tmp_path / "ckpt-000002.pt") in capsys.readouterr().out


def test_resume_keeps_one_metrics_row_per_step_and_removes_leftover_tmp(tmp_path):
    run_train(tmp_path, "--max_iters=6", "--save_interval=3", "--keep_last=5")
    (tmp_path / "ckpt-000006.pt.a1b2c3d4.tmp").write_bytes(b"half a checkpoint")  # a kill during a save
    run_train(tmp_path, "--max_iters=8", f"--resume={tmp_path}/ckpt-000003.pt", "--save_interval=3", "--keep_last=5")
    steps = [r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in r]
    assert steps == list(range(1, 9))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("where", [0.5, 0.9])  # in the middle (model weights) and late (optimizer state)
def test_damaged_checkpoint_is_refused_and_left_alone(run_dir, tmp_path, where):
    src = run_dir / "ckpt-000004.pt"
    raw = bytearray(src.read_bytes())
    at = int(len(raw) * where)
    for i in range(at, at + 1000):
        raw[i] ^= 0x55
    bad = tmp_path / "ckpt-000004.pt"
    bad.write_bytes(bytes(raw))
    before = bad.read_bytes()
    with pytest.raises(ValueError, match="damaged|cannot be read"):
        C.load_checkpoint(str(bad))
    fails(run_train, tmp_path / "o", "--max_iters=6", f"--resume={bad}", match="ckpt-000004.pt")
    fails(S.main, ["--ckpt", str(bad), "--prompt", "x"], match="ckpt-000004.pt")
    assert bad.read_bytes() == before
    assert not (tmp_path / "o").exists()


def test_ctrl_c_saves_then_exits_130(tmp_path, monkeypatch):
    real, calls = Transformer.forward, {"n": 0}

    def interrupted(self, idx, targets=None, **kw):
        if kw.get("loss_fn") is not None and self.training:  # a training step's forward
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real(self, idx, targets, **kw)
    monkeypatch.setattr(Transformer, "forward", interrupted)
    with pytest.raises(SystemExit) as e:
        run_train(tmp_path, "--max_iters=10")
    assert e.value.code == 130
    assert (tmp_path / "ckpt-000002.pt").exists()
    C.load_checkpoint(str(tmp_path / "ckpt-000002.pt"))  # complete and verified


def test_ctrl_c_outside_the_loop_is_one_line_and_130(tmp_path, run_dir, monkeypatch, capsys):
    # while the model loads (train.py), or while sample.py generates: no traceback, exit 130, nothing written
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "build_model", interrupt)
    with pytest.raises(SystemExit) as e:
        run_train(tmp_path / "o")
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted outside the training loop")
    monkeypatch.setattr(S, "evaluate", interrupt)
    out = tmp_path / "eval.jsonl"
    with pytest.raises(SystemExit) as e:
        S.main(["--ckpt", str(run_dir), "--eval", "arith2", "--max-samples", "4", "--out", str(out)])
    assert e.value.code == 130 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted: no output written"


def test_init_from_missing_local_path_gets_no_download_hint(tmp_path, capsys):
    msg = fails(run_train, tmp_path / "o", f"--init_from={tmp_path}/nope", match="no such file or folder")
    assert "download" not in msg and msg.startswith("config: init_from=")
    assert capsys.readouterr().out == "" and not (tmp_path / "o").exists()  # refused with the config, first

# ---------------------------------------------------------------- sample.py


def test_sample_bad_options_are_one_line(run_dir):
    ck = str(run_dir)
    fails(S.main, ["--ckpt", ck, "--prompt", "x", "--max-new-tokens", "0"], match="--max-new-tokens must be >= 1")
    fails(S.main, ["--ckpt", ck, "--prompt", "x", "--max-new-tokens", "abc"], match="invalid int value")
    fails(S.main, ["--ckpt", ck, "--eval", "math500", "--split", "train"], match="only a test split")
    fails(S.main, ["--ckpt", ck, "--prompts", str(run_dir / "nope.txt")], match="nope.txt: file not found")
    fails(S.main, ["--ckpt", ck, "--prompts", str(run_dir / "tokenizer")], match="tokenizer: cannot be read")
    fails(S.main, ["--ckpt", ck, "--top-p", "0"], match="top_p")
    fails(S.main, ["--ckpt", ck, "--prompt", "x", "--rft-out", "r.jsonl"], match="go with --eval")
    fails(S.main, ["--ckpt", ck, "--eval", "arith2", "--rft-with", "a.jsonl"], match="--rft-with goes with --rft-out")
    fails(S.main, ["--ckpt", ck, "--eval", "arith2", "--rft-max-per-problem", "2"], match="goes with --rft-out")
    out = run_dir / "rft.jsonl"
    fails(S.main, ["--ckpt", ck, "--eval", "arith2", "--rft-out", str(out), "--rft-with", str(run_dir / "nope.jsonl")],
          match="nope.jsonl: file not found")
    assert not out.exists()  # checked before sampling; nothing written


def test_sample_empty_stdin_is_one_line(run_dir, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    fails(S.main, ["--ckpt", str(run_dir)], match="no prompts")


def test_partial_eval_does_not_overwrite_the_full_one(run_dir, capsys):
    args = ["--ckpt", str(run_dir / "best.pt"), "--eval", "arith2", "--max-new-tokens", "4"]
    S.main(args + ["--max-samples", "6"])
    full = run_dir / "eval-best-arith2-test-n6.jsonl"
    assert full.exists()
    S.main(args + ["--max-samples", "3"])
    assert (run_dir / "eval-best-arith2-test-n3.jsonl").exists() and len(full.read_text().splitlines()) == 6
    before = full.read_bytes()
    fails(S.main, args + ["--max-samples", "6"], match="exists: pass --overwrite")
    assert full.read_bytes() == before
    S.main(args + ["--max-samples", "6", "--overwrite"])
    assert full.read_bytes() == before  # the same eval again: the same records


def test_max_new_tokens_is_honoured(run_dir, capsys):
    outs = S.main(["--ckpt", str(run_dir), "--prompt", "What is 2 + 3?", "--prompt", "x", "--max-new-tokens", "3"])
    assert all(len(o) <= 3 for o in outs)

# ---------------------------------------------------------------- grader


def test_grader_takes_numbers_and_knows_truncation():
    assert G.grade("so the answer is \\boxed{72}", 72).correct
    assert G.grade("she pays 72 dollars", 72.0).correct and G.grade("x = 0.5", 0.5).correct
    assert not G.grade("anything", None).correct
    # cut off at the token limit with no stated answer: the incidental last number is not an answer
    cut = "First, 24 + 48 = 72, then we add the 12 apples from the second basket, which gives"
    assert G.grade(cut + " 72", "72").correct  # finished text: the last-number fallback applies
    g = G.grade(cut + " 72", "72", truncated=True)
    assert not g.correct and g.extracted is None
    assert G.grade("so \\boxed{72} and then", "72", truncated=True).correct  # a stated answer still counts
    with pytest.raises(TypeError, match="string or a number"):
        G.grade("x", ["72"])

# ---------------------------------------------------------------- checked before the work starts


def never_loaded(*a, **k):
    raise AssertionError("the model was loaded: the check must come first")


def test_readme_rft_commands_need_no_folder_made_by_hand(run_dir, tmp_path):
    # the README's rejection-sampling and verifier commands, with their outputs in a folder that does not exist
    rft = tmp_path / "out" / "rft"
    S.main(["--ckpt", str(run_dir), "--eval", "arith2", "--split", "train", "--max-samples", "6", "--num-samples", "2",
            "--temperature", "0.8", "--max-new-tokens", "6", "--out", str(rft / "samples.jsonl"),
            "--rft-out", str(rft / "rft.jsonl")])
    assert (rft / "samples.jsonl").exists() and (rft / "rft.jsonl").exists()
    assert (rft / "samples.summary.json").exists()


def test_sample_outputs_are_checked_before_the_model_loads(run_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(S, "load_model", never_loaded)
    base = ["--ckpt", str(run_dir), "--eval", "arith2", "--max-new-tokens", "4"]
    fails(S.main, base + ["--out", str(blocker / "e.jsonl")], match="a_file is a file, not a folder")
    fails(S.main, base + ["--out", str(tmp_path / "e.jsonl"), "--rft-out", str(blocker / "sub" / "r.jsonl")],
          match="cannot be made")
    fails(S.main, ["--ckpt", str(run_dir), "--export-hf", str(blocker)], match="is a file, not a folder")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    fails(S.main, ["--ckpt", str(run_dir), "--export-hf", str(tmp_path / "hf")], match="not empty")
    fails(S.main, ["--ckpt", str(tmp_path / "nope"), "--prompt", "x"], match="nope")
    fails(S.main, base + ["--verifier", str(tmp_path / "no_verifier")], match="no_verifier")
    fails(S.main, ["--ckpt", str(run_dir), "--prompts", str(tmp_path / "none.txt")], match="none.txt")
    fails(S.main, base + ["--out", str(tmp_path / "e.jsonl"), "--rft-out", str(tmp_path / "e.jsonl")],
          match="must be different files")
    fails(S.main, base + ["--out", str(tmp_path / "hf"), "--overwrite"], match="is a folder: name a file")
    assert not (tmp_path / "e.jsonl").exists() and sorted(os.listdir(tmp_path)) == ["a_file", "hf"]


def test_a_failed_later_output_leaves_no_earlier_one_behind(run_dir, tmp_path, monkeypatch):
    # the eval records are written, then the RFT file fails (a full disk, say): the records go too, so the re-run
    # is not refused with "exists: pass --overwrite"
    args = ["--ckpt", str(run_dir), "--eval", "arith2", "--max-samples", "3", "--max-new-tokens", "4",
            "--out", str(tmp_path / "e.jsonl"), "--rft-out", str(tmp_path / "r.jsonl")]
    real = S.write_text

    def full_disk(path, text):
        if str(path).endswith("r.jsonl"):
            raise OSError(28, "No space left on device")
        real(path, text)
    monkeypatch.setattr(S, "write_text", full_disk)
    fails(S.main, args, match="No space left")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(S, "write_text", real)
    S.main(args)
    assert (tmp_path / "e.jsonl").exists() and (tmp_path / "r.jsonl").exists()


def test_eval_dataset_that_cannot_be_read_is_refused_first(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, tmp_path / "o", f"--eval_dataset={run_dir}", "--eval_samples=4", match="eval_dataset=")


def test_out_dir_that_cannot_be_written_is_refused_first(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, blocker / "run", match="out_dir")
    fails(run_train, blocker, match="is a file, not a folder")


def test_out_dir_the_system_refuses_after_the_checks_is_one_line(run_dir, tmp_path, monkeypatch):
    # what access() cannot foresee (/proc, a read-only file system) still ends in one line naming out_dir
    import training

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(training.os, "makedirs", read_only)
    fails(training.make_out_dir, str(tmp_path / "o"), match="out_dir=")
    monkeypatch.setattr(S.os, "makedirs", read_only)
    fails(S.main, ["--ckpt", str(run_dir), "--eval", "arith2", "--out", str(tmp_path / "new" / "e.jsonl")],
          match="new cannot be made (Read-only file system)")


@pytest.mark.parametrize("spec,why", [
    ("arith2:-1", "must be >= 0"), ("arith2:nan", "must be a finite number"), ("arith2:inf", "must be a finite"),
    ("arith2:abc", "'abc', is not a number"), ("arith2:0", "every weight is 0"), ("arith2:1,math:0,x.jsonl:0",
                                                                                    "not a known name"),
    ("arith2:1,", "names no dataset"), ("arith2:1,arith2:2", "'arith2' is named twice"),
])
def test_every_bad_dataset_weight_is_named_with_its_reason(tmp_path, monkeypatch, spec, why):
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, tmp_path / "o", f"--datasets={spec}", match=why)
    assert not (tmp_path / "o").exists()


def test_verifier_on_samples_of_one_class_is_refused(run_dir, tmp_path):
    graded = tmp_path / "graded.jsonl"
    graded.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"{i}", "correct": False}) + "\n"
                              for i in range(40)))
    fails(run_train, tmp_path / "v", f"--datasets={graded}", "--objective=verifier", f"--init_from={run_dir}",
          "--val_size=4", match="all 36 training samples are incorrect")
    # both kinds in training, one in the held-out samples: choose the one wrong problem outside the held-out ones
    held = {e["prompt"] for e in data.build_datasets(str(graded), C.load_model(str(run_dir))[1], 96, "plain",
                                                     seed=0, val_size=4)[1].examples}
    wrong = next(i for i in range(40) if f"What is {i} + 1?" not in held)
    graded.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"{i}", "correct": i != wrong})
                              + "\n" for i in range(40)))
    msg = fails(run_train, tmp_path / "v", f"--datasets={graded}", "--objective=verifier", f"--init_from={run_dir}",
                "--val_size=4", "--seed=0", match="all 4 held-out samples are correct")
    assert "val_size" in msg and not (tmp_path / "v").exists()


def test_interrupted_save_leftovers_of_every_form_go_and_nothing_else(tmp_path):
    run_train(tmp_path, "--max_iters=2", "--save_interval=2")
    ours = ["ckpt-000002.pt.a1b2c3d4.tmp", "best.pt.tmp", "config.json.tmp", "metrics.jsonl.x_9.tmp",
            "eval-best-arith2-test.jsonl.k2j3h4g5.tmp", "tokenizer/math_tokenizer.json.q8w7e6r5.tmp"]
    theirs = ["notes.tmp", "mydata.abcdefgh.tmp", "best.pt.bak", "sub/best.pt.tmp"]
    for name in ours + theirs:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"half a file")
    run_train(tmp_path, "--max_iters=3", "--resume=auto")
    assert not any((tmp_path / name).exists() for name in ours)
    assert all((tmp_path / name).exists() for name in theirs)


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 is not a process of WORLD_SIZE=2"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=3"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR and MASTER_PORT not set"),
    ({"LOCAL_WORLD_SIZE": "abc"}, "LOCAL_WORLD_SIZE='abc' must be a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT='99999'"),
])
def test_torchrun_settings_are_checked_first(tmp_path, env, match):
    r = subprocess.run([sys.executable, "train.py", *TINY, f"--out_dir={tmp_path / 'o'}"], cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and match in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_rendezvous_that_never_completes_ends_with_a_message(tmp_path):
    # rank 1 of 2, its peer never started: no silent hang, a line naming the variables after dist_timeout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    t0 = time.time()
    r = subprocess.run([sys.executable, "train.py", *TINY, f"--out_dir={tmp_path / 'o'}", "--dist_timeout=3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and time.time() - t0 < 60
    assert "MASTER_ADDR:MASTER_PORT=127.0.0.1" in r.stderr and "dist_timeout" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- rl.py


def test_rl_inputs_are_refused_before_sampling(run_dir, tmp_path, monkeypatch, capsys):
    import rl
    base = ["--datasets=arith2", "--prompt_format=plain", "--seq_len=128", "--val_size=20", "--eval_samples=8",
            "--device=cpu", f"--init_from={run_dir}", f"--out_dir={tmp_path / 'o'}"]

    def refused(*flags, match):
        fails(rl.main, base + list(flags), match=match)
        assert not (tmp_path / "o").exists()
    with monkeypatch.context() as m:
        m.setattr(rl, "build_model", never_loaded)
        refused("--group_size=1", match="group_size=1: must be >= 2")
        refused("--prompts_per_step=0", match="prompts_per_step")
        refused("--temperature=0", match="temperature")
        refused(f"--init_from={tmp_path / 'nope.pt'}", match="init_from=")
        refused("--init_from=Org/not-cached", match="Download it first")
        no_answers = tmp_path / "p.jsonl"
        no_answers.write_text(json.dumps({"prompt": "What is 1 + 1?", "response": "2"}) + "\n")
        refused(f"--datasets={no_answers}", "--val_size=0", "--eval_samples=0", match="has no gold answer")
        refused("--seq_len=16", match="seq_len=16 cannot hold the longest prompt")
    # one new token: every sample is cut off and earns 0: nothing to learn, said before any update, the rate too
    refused("--max_new_tokens=1", "--eval_max_new_tokens=8", "--prompts_per_step=4", "--group_size=2",
            match="nothing to learn")
    assert "100% of the first batch's samples reached max_new_tokens=1" in capsys.readouterr().out


# ---------------------------------------------------------------- found by probing a clean clone


def test_a_weight_that_takes_no_example_or_too_many_copies_is_refused(tmp_path):
    # round(0.001 x 300) = 0 rows an epoch made the data loader loop forever; 1e308 overflowed after the model
    fails(run_train, tmp_path / "o", "--datasets=arith2:0.001", match="takes round(0.001 x 300) = 0 of its")
    fails(run_train, tmp_path / "o", "--datasets=arith2:1e308", match="at most 10000")
    assert not (tmp_path / "o").exists()


def test_a_preset_override_is_checked_against_the_presets_other_value(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, tmp_path / "o", "--n_embd=0", "--n_head=5", match="n_head=5: the width n_embd=256")
    fails(run_train, tmp_path / "o", "--n_embd=100", "--n_head=0", match="n_embd=100: the width")


def test_overwrite_replaces_the_old_runs_checkpoints_and_cannot_start_from_them(run_dir, tmp_path, monkeypatch):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    run_train(d, "--max_iters=2", "--save_interval=2", "--overwrite=true", "--lr=5e-4")
    assert not (d / "ckpt-000004.pt").exists()  # resume=auto would have continued the old run from it
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, d, "--max_iters=2", "--overwrite=true", f"--init_from={d / 'best.pt'}", "--lora_rank=4",
          match="is a checkpoint of the run in out_dir")


def test_resume_drops_a_torn_last_metrics_row(run_dir, tmp_path):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 8.1')  # a kill in the middle of an append
    run_train(d, "--max_iters=6", "--save_interval=2", "--eval_interval=2", "--resume=auto")
    steps = [r["step"] for r in data.read_jsonl(str(d / "metrics.jsonl")) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_an_output_folder_the_system_refuses_is_found_by_the_checks(tmp_path, monkeypatch):
    # as root, access() says yes to /proc: the checks make (and remove) a temporary entry instead
    def refuse(*a, **k):
        raise OSError(2, "No such file or directory")
    monkeypatch.setattr(C.tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(C.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, tmp_path / "new" / "run", match="refuses new folders")
    fails(run_train, tmp_path, match="cannot write in")
    fails(S.main, ["--ckpt", str(tmp_path), "--eval", "arith2", "--out", str(tmp_path / "e.jsonl")],
          match="cannot write in")


def test_sample_options_that_do_not_go_together_are_refused(run_dir):
    ck = str(run_dir)
    fails(S.main, ["--ckpt", ck, "--prompt", "x", "--temperature", "1", "--seed", "-1"], match="--seed must be")
    fails(S.main, ["--ckpt", ck, "--eval", "arith2", "--export-hf", ck + "/hf"], match="does not go with --eval")
    fails(S.main, ["--ckpt", ck, "--eval", "arith2", "--prompt", "x"], match="does not go with --prompt")
    fails(S.main, ["--ckpt", ck, "--eval", "data/gsm8k/test.jsonl", "--split", "train"], match="has no splits")
    fails(S.main, ["--ckpt", ck, "--prompt", "", "--format", "raw"], match="an empty prompt")
    assert not os.path.exists(ck + "/hf")


def test_adapters_whose_base_was_replaced_and_undecodable_math_files_are_one_line(run_dir, tmp_path):
    import shutil
    base = tmp_path / "base"
    shutil.copytree(run_dir, base)
    run_train(tmp_path / "lora", "--max_iters=1", f"--init_from={base / 'best.pt'}", "--lora_rank=4")
    run_train(base, "--max_iters=1", "--n_embd=64", "--overwrite=true")  # the base is now another model
    fails(S.main, ["--ckpt", str(tmp_path / "lora"), "--prompt", "hi"], match="do not fit their base model")
    (tmp_path / "math" / "a").mkdir(parents=True)
    (tmp_path / "math" / "a" / "1.json").write_bytes(b"\xff")
    fails(run_train, tmp_path / "o", f"--datasets={tmp_path / 'math'}", match="1.json: not UTF-8 text")


def test_train_data_checks_come_before_the_model_loads(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", never_loaded)
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"{i + 1}"}) + "\n"
                             for i in range(10)))
    fails(run_train, tmp_path / "o", f"--datasets={small}", "--val_size=200", match="no training examples left")
    fails(run_train, tmp_path / "o", "--seq_len=8", f"--init_from={run_dir}", match="no training example has an")
    fails(run_train, tmp_path / "o", "--max_iters=0", "--epochs=0.0001", "--batch_size=64", match="gives 0 rows")
    fails(run_train, tmp_path / "o", f"--datasets={small}", "--val_size=2", "--objective=verifier",
          f"--init_from={run_dir}", match="'correct'")
    fails(run_train, tmp_path / "o", f"--datasets={small}", "--val_size=4", "--eval_samples=4",
          match="no gold answers")
    assert not (tmp_path / "o").exists()


def test_a_malformed_hf_config_and_a_folder_that_is_not_a_run_are_one_line(run_dir, tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    S.main(["--ckpt", str(run_dir), "--export-hf", str(hf)])
    good = (hf / "config.json").read_text()
    for edit, match in ((lambda c: c.update(hidden_size="32"), "hidden_size='32' must be a whole number"),
                        (lambda c: (c.update(num_attention_heads=3), c.pop("head_dim", None)),
                         "num_attention_heads=3 is not a multiple of num_key_value_heads=2"),
                        (lambda c: (c.update(rope_theta="x"), c.pop("rope_parameters", None)),
                         "rope_theta='x' must be a number")):
        c = json.loads(good)
        edit(c)
        (hf / "config.json").write_text(json.dumps(c))
        fails(S.main, ["--ckpt", str(hf), "--prompt", "hi"], match=match)
    (hf / "config.json").write_text(good)
    before = snapshot(hf)
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, hf, "--max_iters=1", match="holds a config.json that is not a training run's")
    assert snapshot(hf) == before


def test_export_that_fails_leaves_nothing_behind(run_dir, tmp_path, monkeypatch):
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(C, "save_tokenizer", full_disk)
    fails(S.main, ["--ckpt", str(run_dir), "--export-hf", str(tmp_path / "hf")],
          match="writing the export")
    # no half-written export (which would block the re-run), no temporary folder; at most the empty folder
    left = os.listdir(tmp_path)
    assert left == [] or (left == ["hf"] and not os.listdir(tmp_path / "hf")), left


def test_rft_with_and_verifier_are_checked_before_the_model_loads(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "load_model", never_loaded)
    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps({"id": "x", "prompt": "p", "response": "r", "correct": True, "formatted": True,
                                 "truncated": False}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = ["--ckpt", str(run_dir), "--eval", "arith2", "--out", str(tmp_path / "e.jsonl")]
    fails(S.main, base + ["--rft-out", str(tmp_path / "r.jsonl"), "--rft-with", str(stray)],
          match="a sample of problem 'x', which --eval arith2 does not have")
    fails(S.main, base + ["--rft-out", str(tmp_path / "r.jsonl"), "--rft-with", str(empty)], match="holds no samples")
    fails(S.main, base + ["--verifier", str(run_dir)], match="not a verifier checkpoint")
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl", "stray.jsonl"]


def test_second_probe_cases_are_one_line_before_any_work(run_dir, tmp_path, monkeypatch):
    import shutil

    import rl
    monkeypatch.setattr(train, "build_model", never_loaded)
    monkeypatch.setattr(rl, "build_model", never_loaded)
    fails(run_train, tmp_path / "o", f"--init_from={run_dir}", "--lora_rank=4", "--lora_targets=q,q",
          match="each named once")
    fails(train.main, ["data/gsm8k/test.jsonl", *TINY, f"--out_dir={tmp_path / 'o'}"], match="is a .py file")
    fails(run_train, tmp_path / "o", "--datasets=data/gsm8k/test.jsonl", match="is a test split")
    fails(run_train, tmp_path / "o", "--eval_samples=2", "--eval_dataset=data/gsm8k/test.jsonl",
          match="judged on its test split")
    rl_base = [f"--init_from={run_dir}", "--prompt_format=plain", "--seq_len=128", "--val_size=20",
               "--eval_samples=0", f"--out_dir={tmp_path / 'o'}"]
    fails(rl.main, rl_base + ["--datasets=arith2:3"], match="weights are not used here")
    # a verifier is not a policy to start from
    ver = tmp_path / "ver"
    ver.mkdir()
    shutil.copytree(run_dir / "tokenizer", ver / "tokenizer")
    ck = C.load_checkpoint(str(run_dir / "best.pt"))
    ck["value_head"] = True
    C.save_checkpoint(ck, str(ver / "best.pt"))
    fails(run_train, tmp_path / "o", f"--init_from={ver / 'best.pt'}", match="is a verifier checkpoint")
    fails(rl.main, rl_base[1:] + [f"--init_from={ver / 'best.pt'}", "--datasets=arith2"],
          match="is a verifier checkpoint")
    assert not (tmp_path / "o").exists()
    # sample.py: an output that would replace an input, an export into a run's folder, no stdin at all
    before = snapshot(run_dir)
    fails(S.main, ["--ckpt", str(run_dir / "best.pt"), "--eval", "arith2", "--out", str(run_dir / "best.pt"),
                   "--overwrite"], match="is an input of this run")
    fails(S.main, ["--ckpt", str(run_dir / "best.pt"), "--export-hf", str(run_dir), "--overwrite"],
          match="holds a training run")
    assert snapshot(run_dir) == before
    monkeypatch.setattr(S.sys, "stdin", None)
    fails(S.main, ["--ckpt", str(run_dir)], match="no prompts")
    fails(S.main, ["--ckpt", str(run_dir), "--prompts", "-"], match="no standard input")


def test_eval_prompts_longer_than_the_context_are_refused_before_training(tmp_path):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "1+1 " * 100, "answer": "2"}) + "\n")
    fails(run_train, tmp_path / "o", "--eval_samples=1", f"--eval_dataset={long}", "--max_iters=3",
          "--eval_interval=3", match="leaves no room in the model's context")
    assert not (tmp_path / "o").exists()


def test_a_flag_with_a_space_names_the_flag_not_a_config_file():
    fails(train.load_config, ["--lr", "1e-3"], match="'--lr' must be --key=value")

# ---------------------------------------------------------------- issue 22: the second probe's leftovers


def test_a_slot_count_too_large_for_memory_is_refused_before_the_model_loads(run_dir, tmp_path, monkeypatch):
    # 10^8 slots were an allocation traceback after the model loaded; the cache is sized from the config alone
    import engine
    monkeypatch.setattr(S, "load_model", never_loaded)
    ck = str(run_dir)
    fails(S.main, ["--ckpt", ck, "--prompt", "x", "--num-samples", "100000000", "--temperature", "1"],
          match="--num-samples 100000000: 100000000 KV-cache slots of 96 positions need")
    monkeypatch.setattr(engine, "device_memory", lambda device: 2**30)  # 1 GiB, whatever this machine has
    out = tmp_path / "new" / "e.jsonl"
    msg = fails(S.main, ["--ckpt", ck, "--eval", "arith2", "--num-samples", "40", "--temperature", "1",
                         "--batch-size", "100000000", "--out", str(out)], match="--batch-size 100000000: 20000")
    assert "lower --batch-size" in msg and not (tmp_path / "new").exists()  # no folder made either


def test_the_default_slot_count_is_lowered_to_what_fits_with_a_note(run_dir, tmp_path, monkeypatch, capsys):
    import engine
    mc = C.model_config_of(str(run_dir))
    with torch.device("meta"):
        weights = Transformer(mc).num_params() * 4
    per_slot = engine.engine_bytes(mc, 1, 96, torch.float32, sampled=True)
    monkeypatch.setattr(engine, "device_memory", lambda device: weights + 20 * per_slot)
    outs = S.main(["--ckpt", str(run_dir), "--prompt", "x", "--prompt", "y", "--num-samples", "16",
                   "--temperature", "1", "--max-new-tokens", "3"])
    assert len(outs) == 32
    assert "note: 32 KV-cache slots (the default --batch-size) do not fit" in capsys.readouterr().err
    fails(S.main, ["--ckpt", str(run_dir), "--prompt", "x", "--batch-size", "32", "--num-samples", "32",
                   "--temperature", "1", "--max-new-tokens", "3"], match="lower --num-samples")


def test_max_new_tokens_past_the_context_is_refused_and_a_capped_one_noted(run_dir, monkeypatch, capsys):
    ck = str(run_dir)
    with monkeypatch.context() as m:
        m.setattr(S, "load_model", never_loaded)
        fails(S.main, ["--ckpt", ck, "--prompt", "x", "--max-new-tokens", "100000"],
              match="--max-new-tokens 100000: the model's context holds max_seq_len=96 tokens")
    S.main(["--ckpt", ck, "--prompt", "What is 2 + 3?", "--max-new-tokens", "90"])
    assert "--max-new-tokens 90 does not fit after 1 of the 1 prompts" in capsys.readouterr().err
    S.main(["--ckpt", ck, "--prompt", "What is 2 + 3?"])  # the default 256: capped, with a note
    assert "the default of 256 new tokens is capped by the model's context" in capsys.readouterr().err


def test_max_samples_above_the_dataset_names_the_real_file_and_count(run_dir, tmp_path, capsys):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    S.main(["--ckpt", str(d / "best.pt"), "--eval", "arith2", "--max-samples", "100000", "--max-new-tokens", "1"])
    assert "--max-samples 100000: arith2 has 500 problems in its test split" in capsys.readouterr().err
    assert len((d / "eval-best-arith2-test.jsonl").read_text().splitlines()) == 500  # the whole eval's name
    assert not list(d.glob("*-n100000*"))


def test_standard_input_that_is_not_utf8_is_one_line(run_dir, monkeypatch):
    monkeypatch.setattr(S, "load_model", never_loaded)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"What is 1 + 1?\n\xff\xfe\n"),
                                                      errors="surrogateescape"))
    fails(S.main, ["--ckpt", str(run_dir)], match="standard input: not UTF-8 text (invalid start byte at byte 15)")


RL_BASE = ["--datasets=arith2", "--prompt_format=plain", "--seq_len=128", "--val_size=20", "--eval_samples=0",
           "--device=cpu", "--max_new_tokens=8"]


def test_rl_settings_that_need_the_models_shape_are_refused_before_it_loads(run_dir, tmp_path, monkeypatch):
    import rl
    monkeypatch.setattr(rl, "build_model", never_loaded)
    monkeypatch.setattr(train, "build_model", never_loaded)
    base = RL_BASE + [f"--init_from={run_dir}", f"--out_dir={tmp_path / 'o'}"]
    fails(rl.main, base + ["--slots=1000000000"], match="slots=1000000000: 1000000000 KV-cache slots of 64 positions")
    fails(rl.main, base + ["--prompts_per_step=4", "--group_size=2", "--batch_size=100"],
          match="batch_size=100: a step packs at most prompts_per_step / processes x group_size = 8 samples")
    fails(rl.main, base + ["--grad_checkpointing=5"], match="grad_checkpointing=5: the model has 1 block(s)")
    fails(rl.main, base + ["--eval_samples=4", "--eval_max_new_tokens=90"], match="and eval_max_new_tokens=90")
    fails(run_train, tmp_path / "o", "--grad_checkpointing=5", match="grad_checkpointing=5: the model has 1 block")
    fails(run_train, tmp_path / "o", f"--init_from={run_dir}", "--grad_checkpointing=2", match="has 1 block(s)")
    fails(run_train, tmp_path / "o", "--fsdp=true", match="fsdp=True: shards the model across the processes")
    assert not (tmp_path / "o").exists()


def test_rl_overwrite_refused_by_its_first_batch_leaves_the_old_run_whole(run_dir, tmp_path):
    # the old run's checkpoints went before the first batch's check, which then refused the run
    import shutil

    import rl
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    before = snapshot(d)
    fails(rl.main, RL_BASE + [f"--init_from={run_dir}", f"--out_dir={d}", "--overwrite=true", "--max_new_tokens=1",
                              "--prompts_per_step=4", "--group_size=2"], match="nothing to learn")
    assert snapshot(d) == before


def test_rl_resume_with_the_same_batch_in_other_factors_is_refused(run_dir, tmp_path, monkeypatch):
    # 4 problems x 2 samples and 2 x 4 are both 8 samples a step, but other problems and other draws
    import rl
    out = tmp_path / "o"
    out.mkdir()
    ck = C.load_checkpoint(str(run_dir / "ckpt-000004.pt"))
    cfg = rl.load_config(RL_BASE + [f"--init_from={run_dir}", f"--out_dir={out}", "--prompts_per_step=4",
                                    "--group_size=2"])
    ck.update(config=train.dataclasses.asdict(cfg), global_batch=8, data_position=4)
    C.save_checkpoint(ck, str(out / "ckpt-000004.pt"))
    before = snapshot(out)
    monkeypatch.setattr(rl, "build_model", never_loaded)
    fails(rl.main, RL_BASE + [f"--init_from={run_dir}", f"--out_dir={out}", "--prompts_per_step=2", "--group_size=4",
                              "--resume=auto"], match="prompts_per_step: checkpoint 4, now 2; group_size: checkpoint 2, now 4")
    assert snapshot(out) == before

# ---------------------------------------------------------------- issue 22: a third probe


def test_an_empty_path_or_a_folder_named_as_a_file_is_refused_first(run_dir, tmp_path, monkeypatch):
    # an empty --rft-out / --verifier / --out read as the option left out (a silent success without it); an
    # --out ending in '/' sampled everything, then could not write
    monkeypatch.setattr(S, "load_model", never_loaded)
    base = ["--ckpt", str(run_dir), "--eval", "arith2", "--out", str(tmp_path / "e.jsonl")]
    for flag in ("--rft-out", "--verifier", "--rft-with"):
        extra = ["--rft-out", str(tmp_path / "r.jsonl")] if flag == "--rft-with" else []
        fails(S.main, base + extra + [flag, ""], match=f"{flag}: an empty path")
    fails(S.main, ["--ckpt", "", "--prompt", "x"], match="--ckpt: an empty path")
    fails(S.main, base[:4] + ["--out", str(tmp_path / "new") + "/"], match="new/ is a folder: name a file")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,make,match", [
    ("tokenizer", lambda p: p.write_text("x"), "holds tokenizer as a file, where the run writes a folder"),
    ("metrics.jsonl", lambda p: p.mkdir(), "holds metrics.jsonl as a folder"),
])
def test_an_out_dir_whose_names_have_the_wrong_kind_is_refused_first(run_dir, tmp_path, monkeypatch, name, make,
                                                                     match):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    shutil.rmtree(d / name) if (d / name).is_dir() else (d / name).unlink()
    make(d / name)
    before = snapshot(d)
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, d, "--max_iters=6", "--resume=auto", match=match)
    fails(run_train, d, "--max_iters=6", "--overwrite=true", match=match)
    assert snapshot(d) == before


def test_a_torn_metrics_row_before_the_last_is_found_before_the_model_loads(run_dir, tmp_path, monkeypatch):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    rows = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text("\n".join([rows[0], rows[1][:10], *rows[2:]]) + "\n")
    before = snapshot(d)
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, d, "--max_iters=6", "--resume=auto", match="metrics.jsonl:2: a row is not valid JSON")
    assert snapshot(d) == before  # config.json was rewritten before the refusal


def test_resuming_another_scripts_checkpoint_says_so(run_dir, tmp_path, monkeypatch):
    import rl
    monkeypatch.setattr(rl, "build_model", never_loaded)
    fails(rl.main, RL_BASE + [f"--init_from={run_dir}", f"--out_dir={tmp_path / 'o'}",
                              f"--resume={run_dir / 'ckpt-000004.pt'}"], match="another script's checkpoint")
    assert not (tmp_path / "o").exists()


def test_a_step_larger_than_an_epoch_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    # 10^8 rows a step built its batch for minutes after the model had loaded (every row repeated)
    monkeypatch.setattr(train, "build_model", never_loaded)
    fails(run_train, tmp_path / "o", "--batch_size=100000000", match="is more than the 150 rows of an epoch")
    fails(run_train, tmp_path / "o", "--batch_size=100", "--grad_accum=2", match="100 x 2 x 1 rows")
    assert not (tmp_path / "o").exists()


def test_a_system_prompt_the_format_does_not_use_is_refused_or_noted(run_dir, monkeypatch, capsys):
    with monkeypatch.context() as m:
        m.setattr(S, "load_model", never_loaded)
        for fmt in ("raw", "plain"):
            fails(S.main, ["--ckpt", str(run_dir), "--prompt", "x", "--format", fmt, "--system-prompt", "Be brief."],
                  match=f"--system-prompt goes with the chat format: --format {fmt}")
    S.main(["--ckpt", str(run_dir), "--prompt", "x", "--system-prompt", "Be brief.", "--max-new-tokens", "2"])
    assert "--system-prompt is not used: this checkpoint's prompt format is plain" in capsys.readouterr().err


def test_test_problems_never_become_training_data(run_dir, tmp_path, monkeypatch):
    # samples of GSM8K *test* problems (sample.py --eval gsm8k without --split train) are refused as training
    # data, as the data that picks best.pt, and as rejection sampling's output, by their problems' texts, before
    # any model is loaded; training problems pass
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(S, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    test_q = data.load_dataset("gsm8k", "test")[5]
    train_q = data.load_dataset("gsm8k", "train")[5]
    graded = tmp_path / "graded.jsonl"
    graded.write_text("".join(json.dumps({"id": q["id"], "prompt": q["prompt"], "response": "It is 3.",
                                          "gold": q["answer"], "correct": c}) + "\n"
                              for q in (train_q, test_q) for c in (True, False)))
    msg = fails(run_train, tmp_path / "v", "--objective=verifier", f"--datasets={graded}", "--eval_samples=0",
                match="is a problem of gsm8k's test split")
    assert "graded.jsonl:3" in msg  # the first row of the test problem
    fails(run_train, tmp_path / "e", f"--eval_dataset={graded}", match="one of gsm8k's test split")
    ck = str(run_dir / "best.pt")
    for ev in (["--eval", "gsm8k"], ["--eval", str(graded)]):
        fails(S.main, ["--ckpt", ck, *ev, "--rft-out", str(tmp_path / "r.jsonl")], match="gsm8k's test problems")
    assert not (tmp_path / "v").exists() and not (tmp_path / "e").exists() and not (tmp_path / "r.jsonl").exists()
    assert data.test_problem(data.load_dataset("gsm8k", "train")) is None
    assert data.test_problem(data.load_dataset("math", "train")) is None
