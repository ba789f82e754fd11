"""Import a GGUF checkpoint (llama.cpp's format) as a Hugging Face model folder.

``gguf_to_hf(gguf_path, out_dir)`` writes a folder that ``transformers`` and
jaxalign's own model layer load like any HF checkpoint:

- ``config.json``            built from the GGUF metadata (``LlamaForCausalLM`` / ``Qwen2ForCausalLM``)
- ``model.safetensors``      every tensor dequantised (Q4_1, Q8_0, K-quants, F16, BF16, ...) and
                              cast to ``dtype``; HF names and HF orientation
- ``generation_config.json`` bos / eos / pad ids
- ``tokenizer.json``, ``tokenizer_config.json`` (+ ``chat_template.jinja``) from the GGUF vocabulary,
  merges, special tokens and ``tokenizer.chat_template``

Orientation: GGUF lists a tensor's dimensions innermost first (``ne[0]`` is the
contiguous one), i.e. reversed relative to numpy. A linear layer ``y = x W^T``
is stored with ``ne = [in, out]``, so in numpy order it is ``(out, in)`` — the
``torch.nn.Linear`` layout HF uses. No transpose is needed; only the reversal of
the dimension list.

Rotary layout: llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows of the
Llama ``q_proj`` / ``k_proj`` weights (and biases) from HF's "rotate half"
layout to the interleaved pair layout of its kernels::

    w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)

with ``n_head`` = the query head count for q and the KV head count for k. The
import applies the inverse (:func:`unpermute_rope_rows`). Qwen2 GGUFs are not
permuted (llama.cpp runs them with NeoX-style rotary), so nothing is undone there.

The folder is built in a hidden temporary sibling directory and renamed into
place at the end, so an interrupted import never leaves a half-written
``out_dir``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxalign.io.atomic import atomic_folder, check_destination

__all__ = [
    "supported_architectures",
    "SUPPORTED_DTYPES",
    "TENSOR_NAME_TABLE",
    "GGUFImportError",
    "gguf_hf_config",
    "gguf_to_hf",
    "permute_rope_rows",
    "unpermute_rope_rows",
]

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


class GGUFImportError(ValueError):
    """The GGUF file cannot be imported (corrupt, truncated, unsupported architecture or type, ...)."""


# --------------------------------------------------------------------------------------------
# Declarative tables
# --------------------------------------------------------------------------------------------

# (GGUF tensor name, HF tensor name, transform). ``{i}`` is the decoder block index.
# transform "rope_q" / "rope_k": rows permuted by llama.cpp for its rotary layout; undone
# only for architectures whose spec has ``permute_qk`` (with the query / KV head count).
TENSOR_NAME_TABLE: tuple[tuple[str, str, str | None], ...] = (
    ("token_embd.weight", "model.embed_tokens.weight", None),
    ("output_norm.weight", "model.norm.weight", None),
    ("output.weight", "lm_head.weight", None),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", None),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "rope_q"),
    ("blk.{i}.attn_q.bias", "model.layers.{i}.self_attn.q_proj.bias", "rope_q"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "rope_k"),
    ("blk.{i}.attn_k.bias", "model.layers.{i}.self_attn.k_proj.bias", "rope_k"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", None),
    ("blk.{i}.attn_v.bias", "model.layers.{i}.self_attn.v_proj.bias", None),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", None),
    ("blk.{i}.attn_output.bias", "model.layers.{i}.self_attn.o_proj.bias", None),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", None),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", None),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", None),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", None),
)

# Tensors that some GGUFs carry and that this importer knowingly refuses, with the reason.
_REFUSED_TENSORS = {
    "rope_freqs.weight": "Llama-3.1-style RoPE frequency scaling (rope_freqs) is not supported",
}


@functools.lru_cache(maxsize=None)
def _compile_table(table):
    compiled = []
    for gguf_pat, hf_pat, transform in table:
        regex = re.compile("^" + re.escape(gguf_pat).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")
        compiled.append((regex, hf_pat, transform))
    return tuple(compiled)


def _map_tensor_name(gguf_name: str, extra: tuple = ()) -> tuple[str, str | None, int | None] | None:
    """GGUF tensor name -> (HF name, transform, block index), or None if the table (a family's `extra`
    (GGUF name, HF name) rows, which win, then the common one) has no entry. Phi-3's `ffn_up` is the
    fused gate_up, not the common `up_proj`."""
    table = tuple((g, h, None) for g, h in extra) + TENSOR_NAME_TABLE
    for regex, hf_pat, transform in _compile_table(table):
        m = regex.match(gguf_name)
        if m is not None:
            idx = m.groupdict().get("i")
            if idx is None:
                return hf_pat, transform, None
            return hf_pat.replace("{i}", idx), transform, int(idx)
    return None


@dataclass(frozen=True)
class _ArchSpec:
    """A family's llama.cpp naming (``Family.gguf``) with the HF names it maps to."""

    gguf_arch: str  # general.architecture, also the metadata key prefix
    model_type: str
    hf_architecture: str
    permute_qk: bool  # llama.cpp permuted q/k rows for its rotary layout
    qkv_bias: str  # "never" | "always" | "optional" (llama: all of q/k/v/o biases or none)
    extra_config: dict = field(default_factory=dict)
    extra_tensors: tuple = ()


def _arch_specs() -> dict[str, _ArchSpec]:
    """GGUF ``general.architecture`` -> spec, from every registered family that has a GGUF mapping."""
    from jaxalign.models.families import families

    return {
        f.gguf.arch: _ArchSpec(f.gguf.arch, f.model_type, f.causal_lm, f.gguf.permute_qk, f.gguf.qkv_bias,
                               dict(f.gguf.extra_config), f.gguf.extra_tensors)
        for f in families().values() if f.gguf is not None
    }


def supported_architectures() -> tuple[str, ...]:
    """The GGUF architectures that import (one per family with a llama.cpp mapping)."""
    return tuple(sorted(_arch_specs()))


# --------------------------------------------------------------------------------------------
# Rotary row permutation (llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``)
# --------------------------------------------------------------------------------------------


def _check_rope_rows(w: np.ndarray, n_head: int) -> int:
    rows = w.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise GGUFImportError(
            f"cannot undo the rotary permutation: {rows} rows do not split into {n_head} heads of even size"
        )
    return rows // n_head // 2


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (HF rotate-half rows -> interleaved pairs), for writing GGUFs / tests."""
    half = _check_rope_rows(w, n_head)
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rope_rows`: GGUF (llama.cpp) q/k rows -> HF layout."""
    half = _check_rope_rows(w, n_head)
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _open_reader(path: pathlib.Path):
    """Open ``path`` with gguf.GGUFReader after checking it exists, is a GGUF and is complete."""
    if not path.exists():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise GGUFImportError(f"{path} is not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        if len(magic) < len(GGUF_MAGIC) and GGUF_MAGIC.startswith(magic):
            raise GGUFImportError(f"{path} is truncated: {size} bytes, shorter than a GGUF header")
        raise GGUFImportError(f"{path} is not a GGUF file: it starts with {magic!r}, expected the magic {GGUF_MAGIC!r}")
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is a core dependency
        raise ImportError("importing GGUF files needs the 'gguf' package: pip install gguf") from e
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError/IndexError/KeyError on damage
        raise GGUFImportError(
            f"{path} is truncated or corrupt: the GGUF reader failed on its {size} bytes ({type(e).__name__}: {e})"
        ) from e
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise GGUFImportError(
                f"{path} is truncated: tensor {t.name!r} needs bytes up to offset {end} but the file has {size} bytes"
            )
    return reader


def _meta(reader, key: str, default: Any = _MISSING, *, path: pathlib.Path | None = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is _MISSING:
            raise GGUFImportError(f"{path}: required GGUF metadata key {key!r} is missing")
        return default
    value = f.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _f32_decimal(x: float) -> float:
    """Shortest decimal that round-trips to the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _tensor_numpy_shape(t) -> tuple[int, ...]:
    # GGUF lists dims innermost-first; numpy wants outermost-first.
    return tuple(int(d) for d in reversed(list(t.shape)))


def _supported_qtypes():
    import gguf

    types = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    traits = getattr(gguf.quants, "_type_traits", None)
    if traits is None:  # pragma: no cover - older/newer gguf: rely on dequantize raising instead
        return None
    return types | set(traits)


def _dequantize(t, path: pathlib.Path) -> np.ndarray:
    import gguf

    try:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
        raise GGUFImportError(
            f"{path}: tensor {t.name!r} has unsupported quantisation type {t.tensor_type.name}"
        ) from e
    w = np.asarray(w, dtype=np.float32).reshape(_tensor_numpy_shape(t))
    return w


@dataclass
class _Plan:
    """Everything decided from the metadata and tensor table, before any tensor is dequantised."""

    path: pathlib.Path
    spec: _ArchSpec
    config: dict
    n_head: int
    n_kv_head: int
    tensors: list  # (ReaderTensor, hf_name, transform)
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    generation_eos: Any
    has_tokenizer: bool
    chat_template: str | None
    tensor_types: dict


def _expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for this config.json, from the family's own name table and parameter specs."""
    from jaxalign.models.checkpoint_names import rules_for
    from jaxalign.models.config import ModelConfig

    config = ModelConfig.from_hf_dict(cfg, source="GGUF metadata")
    specs = config.family.layer_params(config)
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size), "model.norm.weight": (config.hidden_size,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    for rule in rules_for(config, "lm"):
        if rule.per_layer:
            shape = specs[rule.param.split(".", 1)[1]].shape
            shape = tuple(reversed(shape)) if rule.transpose else shape
            for name in rule.names(config.num_layers):
                if rule.rows is None:
                    shapes[name] = shape
                else:  # a slice of a fused tensor, which spans every slice's rows
                    shapes[name] = (max(rule.rows[1], shapes.get(name, (0,))[0]), *shape[1:])
    return shapes


def _plan(path: pathlib.Path, reader, *, dtype: str) -> _Plan:
    arch = _meta(reader, "general.architecture", path=path)
    specs = _arch_specs()
    if arch not in specs:
        raise GGUFImportError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported architectures: "
            + ", ".join(sorted(specs))
        )
    spec = specs[arch]
    p = arch + "."

    def m(key, default=_MISSING):
        return _meta(reader, p + key, default, path=path)

    # -- quantisation types (fail before doing any work)
    supported = _supported_qtypes()
    types = Counter(t.tensor_type.name for t in reader.tensors)
    if supported is not None:
        bad = sorted({f"{t.name} ({t.tensor_type.name})" for t in reader.tensors if t.tensor_type not in supported})
        if bad:
            raise GGUFImportError(
                f"{path}: unsupported quantisation type for {len(bad)} tensor(s): "
                + ", ".join(bad[:5])
                + (" ..." if len(bad) > 5 else "")
            )

    # -- tensor names
    by_gguf = {t.name: t for t in reader.tensors}
    mapped = []
    for t in reader.tensors:
        if t.name in _REFUSED_TENSORS:
            raise GGUFImportError(f"{path}: {_REFUSED_TENSORS[t.name]} (tensor {t.name!r})")
        hit = _map_tensor_name(t.name, spec.extra_tensors)
        if hit is None:
            raise GGUFImportError(
                f"{path}: tensor {t.name!r} has no mapping to a Hugging Face {spec.hf_architecture} weight"
            )
        mapped.append((t, hit[0], hit[1]))
    if "token_embd.weight" not in by_gguf:
        raise GGUFImportError(f"{path}: tensor 'token_embd.weight' is missing")

    # -- hyper-parameters
    n_layer = int(m("block_count"))
    hidden = int(m("embedding_length"))
    ffn = int(m("feed_forward_length"))
    n_head = m("attention.head_count")
    n_kv = m("attention.head_count_kv", n_head)
    if isinstance(n_head, list) or isinstance(n_kv, list):
        raise GGUFImportError(f"{path}: per-layer head counts are not supported")
    n_head, n_kv = int(n_head), int(n_kv)
    head_dim = int(m("attention.key_length", hidden // n_head))
    v_dim = int(m("attention.value_length", head_dim))
    rope_dim = int(m("rope.dimension_count", head_dim))
    if v_dim != head_dim:
        raise GGUFImportError(f"{path}: key length {head_dim} != value length {v_dim} is not supported")
    if rope_dim != head_dim:
        raise GGUFImportError(
            f"{path}: partial rotary embeddings (rope dim {rope_dim} < head dim {head_dim}) are not supported"
        )
    rope_theta = _f32_decimal(m("rope.freq_base", 10000.0))
    eps = _f32_decimal(m("attention.layer_norm_rms_epsilon"))
    context = int(m("context_length", 2048))
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    rope_scaling = None
    scaling_type = m("rope.scaling.type", "none")
    if scaling_type == "linear":
        factor = _f32_decimal(m("rope.scaling.factor"))
        rope_scaling = {"rope_type": "linear", "type": "linear", "factor": factor}
        rope_parameters = {"rope_type": "linear", "rope_theta": rope_theta, "factor": factor}
    elif scaling_type not in ("none", None):
        raise GGUFImportError(f"{path}: RoPE scaling type {scaling_type!r} is not supported (only none, linear)")

    emb_shape = _tensor_numpy_shape(by_gguf["token_embd.weight"])
    vocab = emb_shape[0]
    tok_field = reader.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tok_field.data) if tok_field is not None else None
    if n_tokens is not None and n_tokens != vocab:
        warnings.warn(
            f"{path}: the tokenizer has {n_tokens} tokens but the embedding has {vocab} rows; "
            f"config.vocab_size = {vocab} (the embedding's)",
            stacklevel=3,
        )

    def tok_id(key):
        v = _meta(reader, "tokenizer.ggml." + key, None)
        return None if v is None else int(v)

    bos, eos, pad, unk = (
        tok_id("bos_token_id"),
        tok_id("eos_token_id"),
        tok_id("padding_token_id"),
        tok_id("unknown_token_id"),
    )
    stop_ids = [i for i in (eos, tok_id("eot_token_id"), tok_id("eom_token_id")) if i is not None]
    stop_ids = list(dict.fromkeys(stop_ids))
    generation_eos = None if not stop_ids else (stop_ids[0] if len(stop_ids) == 1 else stop_ids)

    tied = "output.weight" not in by_gguf
    bias_names = {f"attn_{x}.bias" for x in ("q", "k", "v")}
    has_qkv_bias = any(t.name.split(".", 2)[-1] in bias_names for t in reader.tensors if t.name.startswith("blk."))
    if spec.qkv_bias == "always":
        attn_bias = True
    elif spec.qkv_bias == "optional":
        attn_bias = has_qkv_bias
    else:  # pragma: no cover - no such arch yet
        attn_bias = False

    torch_dtype = dtype
    config: dict[str, Any] = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "dtype": torch_dtype,
        "torch_dtype": torch_dtype,
    }
    if unk is not None:
        config["unk_token_id"] = unk
    if spec.qkv_bias == "optional":
        config["attention_bias"] = attn_bias
    config.update(spec.extra_config)
    config["gguf_import"] = {
        "file": path.name,
        "architecture": arch,
        "name": _meta(reader, "general.name", None),
        "tensor_types": dict(sorted(types.items())),
    }

    # -- every expected weight present, nothing unexpected, shapes right
    expected = _expected_shapes(config)
    got = {hf: _tensor_numpy_shape(t) for t, hf, _ in mapped}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        raise GGUFImportError(
            f"{path}: {len(missing)} weight(s) missing for {spec.hf_architecture}: {', '.join(missing[:5])}"
        )
    if unexpected:
        raise GGUFImportError(
            f"{path}: {len(unexpected)} tensor(s) unexpected for {spec.hf_architecture} with this config: {', '.join(unexpected[:5])}"
        )
    wrong = [f"{k}: file {got[k]} vs config {expected[k]}" for k in expected if got[k] != expected[k]]
    if wrong:
        raise GGUFImportError(f"{path}: tensor shapes disagree with the metadata: " + "; ".join(wrong[:5]))

    has_tokenizer = "tokenizer.ggml.model" in reader.fields
    chat_template = _meta(reader, "tokenizer.chat_template", None)
    return _Plan(
        path=path,
        spec=spec,
        config=config,
        n_head=n_head,
        n_kv_head=n_kv,
        tensors=mapped,
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        generation_eos=generation_eos,
        has_tokenizer=has_tokenizer,
        chat_template=chat_template,
        tensor_types=dict(types),
    )


def gguf_hf_config(gguf_path: str | os.PathLike, *, dtype: str = "float32") -> dict:
    """The ``config.json`` dict :func:`gguf_to_hf` would write, without converting any tensor."""
    path = pathlib.Path(gguf_path)
    return _plan(path, _open_reader(path), dtype=_check_dtype(dtype)).config


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _check_dtype(dtype: str) -> str:
    dtype = str(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}, got {dtype!r}")
    return dtype


def _numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def _convert_tensors(plan: _Plan, dtype: str) -> dict[str, np.ndarray]:
    target = _numpy_dtype(dtype)
    out: dict[str, np.ndarray] = {}
    for t, hf_name, transform in plan.tensors:
        w = _dequantize(t, plan.path)
        if plan.spec.permute_qk and transform == "rope_q":
            w = unpermute_rope_rows(w, plan.n_head)
        elif plan.spec.permute_qk and transform == "rope_k":
            w = unpermute_rope_rows(w, plan.n_kv_head)
        out[hf_name] = np.ascontiguousarray(w.astype(target, copy=True))
    return out


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _save_tokenizer(plan: _Plan, dest: pathlib.Path) -> None:
    """Build the fast tokenizer from the GGUF with transformers and save it into ``dest``."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:  # pragma: no cover
        raise ImportError("converting the GGUF tokenizer needs 'transformers'") from e

    # Load from a directory holding nothing but (a link to) the GGUF, so that stray tokenizer files
    # next to the user's GGUF (tokenizer_config.json, chat_template.jinja, ...) cannot leak in.
    with tempfile.TemporaryDirectory(prefix="jaxalign-gguf-tok-") as iso:
        src_dir, name = plan.path.parent, plan.path.name
        try:
            os.symlink(plan.path.resolve(), pathlib.Path(iso) / name)
            src_dir = pathlib.Path(iso)
        except OSError:  # pragma: no cover - no symlinks on this filesystem
            pass
        try:
            tok = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=name, local_files_only=True)
        except ImportError as e:
            raise ImportError(
                f"transformers could not build the tokenizer of {plan.path} ({e}). transformers' GGUF reader "
                "imports torch, so converting the tokenizer needs torch installed (the CPU build is enough); "
                "or pass require_tokenizer=False to import the weights only"
            ) from e
        except Exception as e:
            raise GGUFImportError(
                f"{plan.path}: transformers could not build the tokenizer: {type(e).__name__}: {e}"
            ) from e

    tok.model_max_length = plan.config["max_position_embeddings"]
    if plan.chat_template is not None:
        if getattr(tok, "chat_template", None) != plan.chat_template:
            tok.chat_template = plan.chat_template
    else:
        warnings.warn(
            f"{plan.path} has no tokenizer.chat_template: the imported tokenizer has no chat template", stacklevel=3
        )
    tok.save_pretrained(str(dest))

    # Tidy tokenizer_config.json: drop loader state that transformers saves along, and keep the chat
    # template in it too (transformers 5 writes chat_template.jinja; older tools read the json key).
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for k in ("is_local", "local_files_only", "name_or_path", "vocab_file"):
        cfg.pop(k, None)
    if plan.chat_template is not None:
        cfg["chat_template"] = plan.chat_template
    _write_json(cfg_path, cfg)


def gguf_to_hf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    require_tokenizer: bool = True,
) -> pathlib.Path:
    """Convert a GGUF checkpoint into a Hugging Face model folder.

    Args:
        gguf_path: the ``.gguf`` file (architectures: see :func:`supported_architectures`).
        out_dir: folder to create. It must not exist or be empty, unless ``overwrite=True``.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"`` for ``model.safetensors``.
            Dequantisation itself is always done in float32.
        overwrite: replace an existing non-empty ``out_dir`` (atomically, at the end).
        require_tokenizer: if the GGUF has no tokenizer, raise (default) or only warn and write
            the weights and config without tokenizer files.

    Returns:
        ``out_dir`` as a :class:`pathlib.Path`.

    Raises:
        FileNotFoundError: ``gguf_path`` does not exist.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        GGUFImportError: not a GGUF file, truncated/corrupt, unsupported architecture,
            quantisation type or layout, or missing tokenizer with ``require_tokenizer``.
    """
    dtype = _check_dtype(dtype)
    path = pathlib.Path(gguf_path)
    out_dir = pathlib.Path(out_dir)

    check_destination(out_dir, overwrite)
    if out_dir.exists() and path.exists() and out_dir.resolve() in path.resolve().parents:
        raise GGUFImportError(f"refusing to replace {out_dir}: it contains the source file {path}")

    reader = _open_reader(path)
    plan = _plan(path, reader, dtype=dtype)
    if not plan.has_tokenizer:
        if require_tokenizer:
            raise GGUFImportError(
                f"{path} has no tokenizer (no 'tokenizer.ggml.model' metadata); "
                "pass require_tokenizer=False to import the weights and config only"
            )
        warnings.warn(f"{path} has no tokenizer: writing weights and config only", stacklevel=2)

    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        from safetensors.numpy import save_file

        logger.info("dequantising %d tensors from %s", len(plan.tensors), path)
        tensors = _convert_tensors(plan, dtype)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        _write_json(tmp / "config.json", plan.config)
        generation = {"bos_token_id": plan.bos_id, "eos_token_id": plan.generation_eos, "pad_token_id": plan.pad_id}
        _write_json(tmp / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
        if plan.has_tokenizer:
            logger.info("converting the tokenizer of %s", path)
            _save_tokenizer(plan, tmp)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return out_dir
