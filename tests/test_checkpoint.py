"""checkpoint.py: HF config mapping, saving and loading HF folders (round trip through transformers, bit-exact
bf16, sharded, .bin fallback), rejected corrupt / mismatched files with their messages, hub-id resolution."""
import json

import pytest
import torch
import transformers

import checkpoint as C
from conftest import PROMPTS


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]  # (T, V)


# -----------------------------------------------------------------------------
# config


def test_config_from_hf_layouts():
    base = dict(model_type="qwen2", vocab_size=10, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, hidden_size=8, intermediate_size=16, tie_word_embeddings=True)
    v4 = C.config_from_hf({**base, "rope_theta": 12345.0, "rope_scaling": None})
    v5 = C.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 12345.0}})
    assert v4 == v5 and v4.rope_theta == 12345.0 and v4.qkv_bias and v4.tie_embeddings and v4.head_dim == 4
    llama = C.config_from_hf({**base, "model_type": "llama", "attention_bias": False, "tie_word_embeddings": False})
    assert not llama.qkv_bias and not llama.tie_embeddings and llama.rope_theta == 10000.0
    for cfg in (v4, llama):
        assert C.config_from_hf(C.config_to_hf(cfg)) == cfg
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        C.config_from_hf({**base, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        C.config_from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="attention_bias"):
        C.config_from_hf({**base, "model_type": "llama", "attention_bias": True})
    with pytest.raises(ValueError, match="'hidden_size'"):
        C.config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})


# -----------------------------------------------------------------------------
# saving and loading


@pytest.mark.parametrize("fam,shard", [("qwen", False), ("llama", True)])
def test_save_pretrained_roundtrip_loads_in_transformers(ckpts, tmp_path, fam, shard):
    ours = C.from_pretrained(ckpts[f"{fam}-fp32"])
    out = tmp_path / "saved"
    C.save_pretrained(ours, out, max_shard_bytes=30_000 if shard else 2**31)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    if shard:
        assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) > 1
    keys = set()
    for f in out.glob("*.safetensors"):
        keys |= set(C.read_safetensors(f))
    assert ("lm_head.weight" in keys) == (fam == "llama")  # tied weights are written once, as HF does
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = PROMPTS[0]
    assert (_hf_logits(hf, ids) - _hf_logits(ckpts[fam], ids)).abs().max() <= 1e-4
    back = C.from_pretrained(out)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # saving again unsharded into the same folder removes the shards of the earlier layout
    C.save_pretrained(back, out)
    assert not list(out.glob("model-*")) and not (out / "model.safetensors.index.json").exists()
    assert torch.equal(C.from_pretrained(out).lm_head.weight, ours.lm_head.weight)


def test_bf16_save_roundtrip_bit_exact_and_bin_fallback(ckpts, tmp_path):
    ours = C.from_pretrained(ckpts["qwen-bf16"], dtype=torch.bfloat16)
    C.save_pretrained(ours, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = C.from_pretrained(tmp_path / "a", dtype=torch.bfloat16)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())
    # pytorch_model.bin fallback (older checkpoints)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    torch.save(C.read_safetensors(tmp_path / "a" / "model.safetensors"), tmp_path / "b" / "pytorch_model.bin")
    binm = C.from_pretrained(tmp_path / "b", dtype=torch.bfloat16)
    assert all(torch.equal(v, binm.state_dict()[k]) for k, v in ours.state_dict().items())


def _copy_ckpt(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_and_mismatched_checkpoints(ckpts, tmp_path):
    from safetensors.torch import save_file  # test-only: writes the files our reader must reject

    src = ckpts["qwen-fp32"]
    sd = C.read_safetensors(src / "model.safetensors")
    data = (src / "model.safetensors").read_bytes()

    d = _copy_ckpt(src, tmp_path / "trunc")
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated: the tensors cover"):
        C.from_pretrained(d)
    (d / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + data[8:100])
    with pytest.raises(ValueError, match="header length 1000000000000"):
        C.from_pretrained(d)
    (d / "model.safetensors").write_bytes(data[:8] + b"\x00not json" + data[17:])
    with pytest.raises(ValueError, match="not JSON"):
        C.from_pretrained(d)

    h = b'{"model.norm.weight":{"dtype":"F32"}}'
    (d / "model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h)
    with pytest.raises(ValueError, match="corrupt safetensors header entry for 'model.norm.weight'"):
        C.from_pretrained(d)
    # malformed entries the reference package also rejects: a list dtype, string offsets, a negative shape
    for entry in ('{"dtype":["F32"],"shape":[2],"data_offsets":[0,8]}', '{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}',
                  '{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}', '{"dtype":"F32","shape":[2],"data_offsets":[0]}'):
        h = ('{"x":' + entry + '}').encode()
        (d / "model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h + bytes(8))
        with pytest.raises(ValueError, match="corrupt safetensors header entry for 'x'"):
            C.read_safetensors(d / "model.safetensors")

    d = _copy_ckpt(src, tmp_path / "int")
    save_file({**{k: v.clone() for k, v in sd.items()}, "model.extra": torch.zeros(3, dtype=torch.int64)},
              d / "model.safetensors")
    with pytest.raises(ValueError, match="'model.extra' has dtype I64, not supported"):
        C.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "missing")
    save_file({k: v.clone() for k, v in sd.items() if "layers.1.mlp.up_proj" not in k}, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors \['layers.1.mlp.up_proj.weight'\]"):
        C.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "unexpected")
    save_file({**{k: v.clone() for k, v in sd.items()}, "model.bogus.weight": torch.zeros(2)}, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensors \['bogus.weight'\]"):
        C.from_pretrained(d)

    d = _copy_ckpt(src, tmp_path / "shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"layers.0.mlp.gate_proj.weight: expected \(100, 64\), found \(96, 64\)"):
        C.from_pretrained(d)

    with pytest.raises(ValueError, match="only float32, float16, bfloat16"):
        C.write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2, dtype=torch.int32)})


def _shift_offsets(raw, by, which=None):
    """A safetensors file whose data offsets are shifted by `by` bytes (all tensors, or the one named)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for name, info in header.items():
        if name != "__metadata__" and which in (None, name):
            info["data_offsets"] = [o + by for o in info["data_offsets"]]
    hb = json.dumps(header).encode()
    return len(hb).to_bytes(8, "little") + hb + raw[8 + n:]


def test_safetensors_offsets_must_tile_the_data_section(ckpts, tmp_path):
    raw = (ckpts["qwen-fp32"] / "model.safetensors").read_bytes()
    f = tmp_path / "m.safetensors"
    f.write_bytes(_shift_offsets(raw, 1))  # every tensor one byte late: it would load as garbage
    with pytest.raises(ValueError, match="do not follow the previous tensor's end 0"):
        C.read_safetensors(f)
    f.write_bytes(_shift_offsets(raw, 4, which="model.norm.weight"))  # one tensor overlaps the next
    with pytest.raises(ValueError, match="'model.norm.weight'.*do not follow|do not follow"):
        C.read_safetensors(f)
    f.write_bytes(raw + b"\0" * 8)  # bytes after the last tensor
    with pytest.raises(ValueError, match="corrupt: the tensors cover .* but the data section has"):
        C.read_safetensors(f)
    f.write_bytes(raw)
    assert len(C.read_safetensors(f)) == len(C.read_safetensors(ckpts["qwen-fp32"] / "model.safetensors"))


def test_config_json_must_be_an_object(ckpts, tmp_path):
    d = _copy_ckpt(ckpts["qwen-fp32"], tmp_path / "c")
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON object, got list"):
        C.from_pretrained(d)
    (d / "config.json").write_bytes(b'{"model_type": "qwen2\xff"}')
    with pytest.raises(ValueError, match="invalid JSON"):
        C.from_pretrained(d)


def test_missing_paths_get_no_download_hint(tmp_path):
    for p in (tmp_path / "nope", "out/best.pt", "./runs/x", "a/b/c"):
        with pytest.raises(FileNotFoundError) as e:
            C.load_model(str(p))
        assert "no such file or folder" in str(e.value) and "download" not in str(e.value)


def test_hub_id_resolution(ckpts, tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--Qwen--Tiny-Test"
    _copy_ckpt(ckpts["qwen-fp32"], (repo / "snapshots").mkdir(parents=True) or repo / "snapshots" / "abc123")
    _copy_ckpt(ckpts["llama-fp32"], repo / "snapshots" / "old999")  # another revision: refs/main decides
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    assert C.resolve_checkpoint_dir("Qwen/Tiny-Test") == repo / "snapshots" / "abc123"
    m = C.from_pretrained("Qwen/Tiny-Test")
    assert m.config.qkv_bias and m.source_dir == str(repo / "snapshots" / "abc123")
    # HF_HUB_CACHE takes precedence over HF_HOME
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError) as e:
        C.resolve_checkpoint_dir("Qwen/Tiny-Test")
    msg = str(e.value)
    assert str(tmp_path / "elsewhere" / "models--Qwen--Tiny-Test") in msg
    assert "huggingface-cli download Qwen/Tiny-Test" in msg
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        C.from_pretrained(tmp_path / "no-such-dir")




# -----------------------------------------------------------------------------
# training checkpoints written in the background


def test_background_save_keeps_the_state_of_its_call(tmp_path):
    # the run goes on changing its tensors while the file is written: the file holds them as they were
    w = torch.arange(1_000_000, dtype=torch.float32)
    state = {"model": {"w": w}, "model_config": {}, "step": 3}
    C.save_checkpoint(state, str(tmp_path / "ckpt-000003.pt"), background=True)
    w.add_(1.0)
    C.wait_for_saves()
    got = C.load_checkpoint(str(tmp_path / "ckpt-000003.pt"))
    assert got["step"] == 3 and got["model"]["w"].equal(torch.arange(1_000_000, dtype=torch.float32))


def test_background_save_prunes_after_writing_and_reraises_its_error(tmp_path):
    kw = dict(model_config={}, config={}, best=None, global_batch=1, optimizer={}, keep_last=2, background=True)
    for step in (1, 2, 3):
        C.save_training_checkpoint(str(tmp_path / f"ckpt-{step:06d}.pt"), {"w": torch.ones(4) * step}, step=step,
                                   **kw)
    C.wait_for_saves()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002.pt", "ckpt-000003.pt"]
    # a write that fails in its thread: the next wait raises its error, and the files before it are intact
    C.save_checkpoint({"w": torch.ones(4)}, str(tmp_path / "gone" / "ckpt-000004.pt"), background=True)
    with pytest.raises(FileNotFoundError):
        C.wait_for_saves()
    C.wait_for_saves()  # raised once
    assert C.load_checkpoint(str(tmp_path / "ckpt-000003.pt"))["model"]["w"].equal(torch.ones(4) * 3)
