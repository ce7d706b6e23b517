"""LoRA: a fresh adapter changes nothing, merged equals unmerged, only adapters learn, adapters off is the base,
adapters save and load bit-exactly, and a LoRA run's checkpoint (adapters only) loads, samples and exports as a
plain model."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint as C  # noqa: E402
import lora  # noqa: E402
import model as M  # noqa: E402
import sample as S  # noqa: E402
import train  # noqa: E402

TINY = ["--n_layer=2", "--n_embd=32", "--n_head=2", "--seq_len=96", "--batch_size=4", "--max_samples=300",
        "--val_size=16", "--eval_samples=0", "--log_interval=1", "--eval_interval=1000", "--warmup_iters=2",
        "--lr=1e-3"]


def _tiny():
    torch.manual_seed(0)
    return M.Transformer(M.ModelConfig(vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                       intermediate_size=48)).eval()


def _randomise_adapters(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lora.lora_layers(model):
            m.lora_B.copy_(0.1 * torch.randn(m.lora_B.shape, generator=g))


def test_fresh_adapter_is_a_no_op_and_off_is_the_base():
    m = _tiny()
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        base = m(idx)
        lora.apply_lora(m, rank=4, alpha=8, targets=tuple(lora.LORA_TARGETS))
        assert torch.equal(m(idx), base)  # lora_B = 0
        _randomise_adapters(m)
        adapted = m(idx)
        assert (adapted - base).abs().max() > 1e-3
        lora.set_lora_enabled(m, False)
        assert torch.equal(m(idx), base)
        lora.set_lora_enabled(m, True)
        assert torch.equal(m(idx), adapted)


def test_merged_equals_unmerged_and_names_are_kept():
    m = lora.apply_lora(_tiny(), rank=4, alpha=16, targets=("q", "v", "down"))
    _randomise_adapters(m)
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        unmerged = m(idx)
        base_names = {k for k in m.state_dict() if "lora_" not in k}
        lora.merge_lora(m)
        assert not lora.lora_layers(m) and set(m.state_dict()) == base_names == set(_tiny().state_dict())
        torch.testing.assert_close(m(idx), unmerged, rtol=1e-5, atol=1e-5)


def test_only_adapters_learn():
    m = lora.apply_lora(_tiny(), rank=2, alpha=4, dropout=0.1)
    m.train()
    idx, tgt = torch.randint(0, 96, (2, 10)), torch.randint(0, 96, (2, 10))
    m(idx, tgt).backward()
    for name, p in m.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
        assert (p.grad is not None) == ("lora_" in name), name
    assert all(m.lora_A.dtype == torch.float32 for m in lora.lora_layers(m))
    # lora_B starts at zero, so the first step's gradient reaches B (A's gradient is B^T ... = 0)
    assert all(layer.lora_B.grad.abs().sum() > 0 for layer in lora.lora_layers(m))


def test_lora_run_saves_adapters_only_and_loads_as_a_plain_model(tmp_path):
    base = tmp_path / "base"
    train.train(train.load_config(TINY + [f"--out_dir={base}", "--max_iters=2"]))
    run = tmp_path / "lora"
    cfg = train.load_config(TINY + [f"--out_dir={run}", f"--init_from={base}/ckpt-000002.pt", "--lora_rank=4",
                                    "--lora_alpha=8", "--lora_targets=q,v,up", "--max_iters=4", "--save_interval=2",
                                    "--keep_last=5", "--lr=1e-2"])
    train.train(cfg)
    ck = C.load_checkpoint(str(run / "ckpt-000004.pt"))
    assert set(ck["model"]) and all("lora_" in k for k in ck["model"]) and ck["lora"]["rank"] == 4
    assert os.path.getsize(run / "ckpt-000004.pt") < os.path.getsize(base / "ckpt-000002.pt") / 3
    # the training-time model (base + adapters) and the loaded, merged one give the same logits
    model, _, _ = train.build_model(cfg, "cpu")
    model.load_state_dict(ck["model"], strict=False)
    merged, tok, info = C.load_model(str(run / "ckpt-000004.pt"))
    assert not lora.lora_layers(merged) and info["kind"] == "nanomath"
    idx = torch.randint(0, 200, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), model.eval()(idx), rtol=1e-4, atol=1e-5)
    # adapters really moved, and saved/loaded bit-exactly
    assert any(v.abs().sum() > 0 for k, v in ck["model"].items() if "lora_B" in k)
    again = C.load_checkpoint(str(run / "ckpt-000004.pt"))
    assert all(torch.equal(again["model"][k], v) for k, v in ck["model"].items())
    # resume continues the adapters; sample.py and --export-hf take the LoRA checkpoint like any other
    s = train.train(train.load_config(TINY + [f"--out_dir={run}", f"--init_from={base}/ckpt-000002.pt",
                                              "--lora_rank=4", "--lora_alpha=8", "--lora_targets=q,v,up",
                                              "--max_iters=5", "--resume=auto", "--lr=1e-2"]))
    assert s["step"] == 5
    outs = S.main(["--ckpt", str(run / "ckpt-000004.pt"), "--prompt", "What is 2 + 3?", "--prompt", "x",
                   "--max-new-tokens", "4"])
    assert len(outs) == 2
    S.main(["--ckpt", str(run / "ckpt-000004.pt"), "--export-hf", str(tmp_path / "hf")])
    exported, _, _ = C.load_model(str(tmp_path / "hf"))
    with torch.no_grad():
        torch.testing.assert_close(exported(idx), merged(idx), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 2


def test_lora_settings_are_checked(tmp_path):
    with pytest.raises(SystemExit, match="lora_rank.*set init_from"):
        train.train(train.load_config(TINY + [f"--out_dir={tmp_path}", "--lora_rank=4"]))
    with pytest.raises(SystemExit, match="lora_targets"):
        train.train(train.load_config(TINY + [f"--out_dir={tmp_path}", "--init_from=x", "--lora_rank=4",
                                              "--lora_targets=q,wq"]))
