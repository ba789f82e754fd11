"""GGUF -> Hugging Face folder import.

Synthetic tests write tiny GGUFs with ``gguf.GGUFWriter`` the way llama.cpp's converter does (its
q/k row permutation included, with the formula copied here rather than imported) and check that the
import gives back the HF tensors and the HF model's logits. The real SmolLM2-135M-Instruct's import
is checked in test_smollm2.py.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

import gguf  # noqa: E402  (a hard dependency: a missing install fails, not skips)

from jaxalign.models import gguf_import
from jaxalign.models.gguf_import import (
    GGUFImportError,
    gguf_to_hf,
    permute_rope_rows,
    unpermute_rope_rows,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# HF suffix -> GGUF suffix, written out independently of the importer's table.
_HF_TO_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_HF_TO_GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _llamacpp_permute(w, n_head, n_head_kv=None):
    """llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_to_gguf_name(name):
    if name in _HF_TO_GGUF_GLOBAL:
        return _HF_TO_GGUF_GLOBAL[name]
    _, _, i, rest = name.split(".", 3)
    return f"blk.{i}.{_HF_TO_GGUF_LAYER[rest]}"


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
TOKENS = SPECIALS + _bytes_to_unicode() + ["Ġt", "he", "Ġthe", "in", "Ġa"]


def _tiny_config(arch="llama", *, tied=False, n_head=4, n_kv=2):
    return {
        "arch": arch,
        "vocab_size": len(TOKENS),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": 32 // n_head,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": tied,
    }


def _tiny_state(cfg, seed=0, *, qkv_bias=False):
    rng = np.random.default_rng(seed)
    h, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv, v = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["vocab_size"]

    def r(*shape):
        return rng.normal(0.0, 0.3, size=shape).astype(np.float32)

    sd = {"model.embed_tokens.weight": r(v, h), "model.norm.weight": 1.0 + r(h)}
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = r(v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd |= {
            p + "input_layernorm.weight": 1.0 + r(h),
            p + "self_attn.q_proj.weight": r(q, h),
            p + "self_attn.k_proj.weight": r(kv, h),
            p + "self_attn.v_proj.weight": r(kv, h),
            p + "self_attn.o_proj.weight": r(h, q),
            p + "post_attention_layernorm.weight": 1.0 + r(h),
            p + "mlp.gate_proj.weight": r(f, h),
            p + "mlp.up_proj.weight": r(f, h),
            p + "mlp.down_proj.weight": r(h, f),
        }
        if qkv_bias:
            sd |= {
                p + "self_attn.q_proj.bias": r(q),
                p + "self_attn.k_proj.bias": r(kv),
                p + "self_attn.v_proj.bias": r(kv),
            }
    return sd


def _write_gguf(
    path,
    cfg,
    state,
    *,
    arch=None,
    tokenizer=True,
    qtype=None,
    extra_tensors=None,
    skip=(),
):
    """Write ``state`` (HF names, numpy layout) as a GGUF, the way llama.cpp's converter lays it out."""
    arch = arch or cfg["arch"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["head_dim"])
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(TOKENS)
        w.add_token_types([3 if t in SPECIALS else 1 for t in TOKENS])
        w.add_token_merges(MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, t in state.items():
        if name in skip:
            continue
        if cfg["arch"] == "llama" and ".q_proj." in name:
            t = _llamacpp_permute(t, n_head, n_head)
        elif cfg["arch"] == "llama" and ".k_proj." in name:
            t = _llamacpp_permute(t, n_head, n_kv)
        gname = _hf_to_gguf_name(name)
        if qtype is not None and t.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(t, dtype=np.float32))
    for gname, t in (extra_tensors or {}).items():
        w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pathlib.Path(path)


def _load_safetensors(d):
    from safetensors.numpy import load_file

    return load_file(str(pathlib.Path(d) / "model.safetensors"))


# ------------------------------------------------------------------------------------------------
# Permutation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,n_head", [((576, 576), 9), ((192, 576), 3), ((64,), 4), ((24, 5), 3)])
def test_unpermute_inverts_llamacpp_permute(shape, n_head):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    p = _llamacpp_permute(w, n_head)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(permute_rope_rows(w, n_head), p)
    np.testing.assert_array_equal(unpermute_rope_rows(p, n_head), w)


def test_unpermute_refuses_bad_head_split():
    with pytest.raises(GGUFImportError, match="heads"):
        unpermute_rope_rows(np.zeros((10, 4)), 3)


# ------------------------------------------------------------------------------------------------
# Synthetic GGUFs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,tied,qkv_bias",
    [("llama", False, False), ("llama", True, False), ("qwen2", False, True)],
    ids=["llama", "llama-tied", "qwen2"],
)
def test_synthetic_roundtrip_tensors_equal(tmp_path, arch, tied, qkv_bias):
    cfg = _tiny_config(arch, tied=tied)
    state = _tiny_state(cfg, qkv_bias=qkv_bias)
    src = _write_gguf(tmp_path / "tiny.gguf", cfg, state)
    out = gguf_to_hf(src, tmp_path / "hf", require_tokenizer=False)

    got = _load_safetensors(out)
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v, err_msg=k)

    config = json.loads((out / "config.json").read_text())
    expected_arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    assert config["architectures"] == [expected_arch]
    assert config["model_type"] == arch
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "tie_word_embeddings",
        "rms_norm_eps",
        "rope_theta",
    ):
        assert config[key] == cfg[key], key
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert config["dtype"] == config["torch_dtype"] == "float32"
    assert gguf_import.gguf_hf_config(src) == config  # same config without converting
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_synthetic_quantised_tensors_dequantised(tmp_path):
    """Q8_0 storage: the import returns exactly gguf's dequantisation, unpermuted."""
    cfg = _tiny_config()
    state = _tiny_state(cfg)
    src = _write_gguf(tmp_path / "q8.gguf", cfg, state, qtype=gguf.GGMLQuantizationType.Q8_0)
    got = _load_safetensors(gguf_to_hf(src, tmp_path / "hf", require_tokenizer=False))
    q = gguf.GGMLQuantizationType.Q8_0
    for k, v in state.items():
        if v.ndim == 2:
            n = cfg["num_attention_heads"] if ".q_proj." in k else cfg["num_key_value_heads"]
            stored = _llamacpp_permute(v, n) if (".q_proj." in k or ".k_proj." in k) else v
            ref = gguf.quants.dequantize(gguf.quants.quantize(stored, q), q)
            if ".q_proj." in k or ".k_proj." in k:
                ref = unpermute_rope_rows(ref, n)
            np.testing.assert_array_equal(got[k], ref, err_msg=k)
            np.testing.assert_allclose(got[k], v, atol=0.02, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_synthetic_bfloat16(tmp_path):
    import ml_dtypes

    cfg = _tiny_config()
    state = _tiny_state(cfg)
    out = gguf_to_hf(
        _write_gguf(tmp_path / "t.gguf", cfg, state), tmp_path / "hf", dtype="bfloat16", require_tokenizer=False
    )
    got = _load_safetensors(out)
    for k, v in state.items():
        assert got[k].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got[k], v.astype(ml_dtypes.bfloat16), err_msg=k)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("arch,qkv_bias", [("llama", False), ("qwen2", True)])
def test_synthetic_logits_match_original_hf_model(tmp_path, arch, qkv_bias):
    """End to end: the imported folder in transformers == the HF model the GGUF was written from."""
    import torch
    import transformers

    cfg = _tiny_config(arch)
    state = _tiny_state(cfg, seed=1, qkv_bias=qkv_bias)
    out = gguf_to_hf(_write_gguf(tmp_path / "t.gguf", cfg, state), tmp_path / "hf")

    hf_cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
    model_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[arch]
    ref_cfg = hf_cfg_cls(**{k: v for k, v in cfg.items() if k != "arch"})
    ref = model_cls(ref_cfg).eval()
    missing, unexpected = ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}

    imported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(imported) is model_cls
    ids = torch.tensor([[5, 17, 200, 3, 99, 42, 7, 250]])
    with torch.no_grad():
        a, b = ref(ids).logits, imported(ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_synthetic_matches_transformers_gguf_loader(tmp_path):
    """transformers undoes the same permutation when it loads a GGUF itself."""
    import accelerate  # noqa: F401  (transformers needs it for gguf_file=)
    import torch
    from transformers import AutoModelForCausalLM

    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg, seed=2))
    out = gguf_to_hf(src, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=src.name, dtype=torch.float32).state_dict()
    ours = _load_safetensors(out)
    assert set(ours) <= set(theirs)
    for k, v in ours.items():
        np.testing.assert_array_equal(v, theirs[k].numpy(), err_msg=k)


def test_synthetic_tokenizer_folder(tmp_path):
    import transformers

    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg))
    out = gguf_to_hf(src, tmp_path / "hf")
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json", "model.safetensors"):
        assert (out / f).is_file(), f
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == CHAT_TEMPLATE
    assert "is_local" not in tcfg and "local_files_only" not in tcfg
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.model_max_length == cfg["max_position_embeddings"]
    ids = tok("the cat in the hat")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["t", "he", "Ġ", "c", "a", "t", "Ġ", "in", "Ġthe", "Ġ", "h", "a", "t"]
    assert tok.decode(ids) == "the cat in the hat"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    chat_ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    chat_ids = chat_ids["input_ids"] if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys") else chat_ids
    assert chat_ids[0] == 1 and chat_ids.count(2) == 1  # <|im_start|> / <|im_end|> stay whole
    assert oct(os.stat(out / "model.safetensors").st_mode & 0o777) == oct(0o644)


def test_tokenizer_required_by_default(tmp_path):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg), tokenizer=False)
    with pytest.raises(GGUFImportError, match="no tokenizer.*require_tokenizer=False"):
        gguf_to_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.warns(UserWarning, match="no tokenizer"):
        out = gguf_to_hf(src, tmp_path / "hf", require_tokenizer=False)
    assert (out / "model.safetensors").is_file() and not (out / "tokenizer.json").exists()


# ------------------------------------------------------------------------------------------------
# Output directory handling
# ------------------------------------------------------------------------------------------------


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg))
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        gguf_to_hf(src, out, require_tokenizer=False)
    assert (out / "stale.txt").exists()
    gguf_to_hf(src, out, require_tokenizer=False, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "t.gguf"]  # no temp/backup dirs left


def test_empty_existing_out_dir_is_fine(tmp_path):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg))
    (tmp_path / "hf").mkdir()
    assert (gguf_to_hf(src, tmp_path / "hf", require_tokenizer=False) / "config.json").is_file()


def test_interrupted_import_leaves_nothing(tmp_path, monkeypatch):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg))

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_import, "_write_json", boom)  # after model.safetensors was written
    with pytest.raises(KeyboardInterrupt):
        gguf_to_hf(src, tmp_path / "hf", require_tokenizer=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf"]

    # An existing folder survives a failed overwrite untouched.
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("x")
    with pytest.raises(KeyboardInterrupt):
        gguf_to_hf(src, tmp_path / "hf", require_tokenizer=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "t.gguf"]


def test_refuses_to_replace_folder_holding_the_source(tmp_path):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg))
    with pytest.raises(GGUFImportError, match="contains the source"):
        gguf_to_hf(src, tmp_path, overwrite=True)
    assert src.exists()


def test_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        gguf_to_hf(tmp_path / "x.gguf", tmp_path / "hf", dtype="int8")


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found.*nope.gguf"):
        gguf_to_hf(tmp_path / "nope.gguf", tmp_path / "hf")


def test_bad_magic(tmp_path):
    p = tmp_path / "model.safetensors.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFImportError, match=r"model.safetensors.gguf is not a GGUF file.*PK"):
        gguf_to_hf(p, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.02, 20, 2])
def test_truncated_file(tmp_path, keep):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg))
    data = src.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:n])
    with pytest.raises(GGUFImportError, match=r"cut.gguf is truncated"):
        gguf_to_hf(cut, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_unsupported_architecture(tmp_path):
    cfg = _tiny_config()
    src = _write_gguf(tmp_path / "t.gguf", cfg, _tiny_state(cfg), arch="falcon")
    with pytest.raises(GGUFImportError, match=r"t.gguf: GGUF architecture 'falcon' is not supported; supported architectures: .*llama, .*qwen2"):
        gguf_to_hf(src, tmp_path / "hf")


def test_unsupported_quantisation_type(tmp_path):
    cfg = _tiny_config()
    state = _tiny_state(cfg)
    q = gguf.GGMLQuantizationType.Q8_1
    block, size = gguf.GGML_QUANT_SIZES[q]
    v, h = state["model.embed_tokens.weight"].shape
    raw = np.zeros((v, h // block * size), dtype=np.uint8)
    src = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_tensor("token_embd.weight", raw, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFImportError, match=r"unsupported quantisation type.*token_embd.weight \(Q8_1\)"):
        gguf_to_hf(src, tmp_path / "hf")


def test_unknown_tensor_and_missing_tensor(tmp_path):
    cfg = _tiny_config()
    state = _tiny_state(cfg)
    src = _write_gguf(
        tmp_path / "a.gguf", cfg, state, extra_tensors={"blk.0.ffn_gate_exps.weight": np.zeros((2, 4), np.float32)}
    )
    with pytest.raises(GGUFImportError, match="'blk.0.ffn_gate_exps.weight' has no mapping"):
        gguf_to_hf(src, tmp_path / "hf")
    src = _write_gguf(tmp_path / "b.gguf", cfg, state, skip={"model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(GGUFImportError, match=r"missing.*model.layers.1.mlp.up_proj.weight"):
        gguf_to_hf(src, tmp_path / "hf")
    src = _write_gguf(tmp_path / "c.gguf", cfg, state, extra_tensors={"rope_freqs.weight": np.ones(4, np.float32)})
    with pytest.raises(GGUFImportError, match="rope_freqs"):
        gguf_to_hf(src, tmp_path / "hf")


def test_metadata_shape_mismatch(tmp_path):
    cfg = _tiny_config()
    state = _tiny_state(cfg)
    bad = dict(cfg, intermediate_size=96)
    src = _write_gguf(tmp_path / "t.gguf", bad, state)
    with pytest.raises(GGUFImportError, match="shapes disagree"):
        gguf_to_hf(src, tmp_path / "hf")
