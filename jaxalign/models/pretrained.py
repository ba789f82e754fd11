"""`load_pretrained` / `save_pretrained`: HF folders (or hub ids, or GGUF files) <-> NNX models.

Loading builds the model abstractly (no memory), then fills each parameter with
`jax.make_array_from_callback`: every device reads only its own slice straight
from the memory-mapped safetensors file, so the host never holds a second copy.
Saving writes to a temporary sibling folder and renames it into place, so an
interrupted save leaves no half-written checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors.numpy import save_file

from jaxalign.io.atomic import atomic_folder
from jaxalign.models.checkpoint_names import TensorRule, module_param_path, rules_for
from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.decoder import Decoder, ScalarHeadModel
from jaxalign.models.families import head_of
from jaxalign.models.resolve import resolve_model_path
from jaxalign.models.safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointError, SafetensorsReader
from jaxalign.parallel.sharding import param_sharding, state_shardings

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def resolve_dtype(dtype: Any) -> jnp.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        return jnp.dtype(DTYPES[dtype])
    return jnp.dtype(dtype)


def _get(module: nnx.Module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _stack_axes(rule: TensorRule) -> int:
    """Leading parameter axes that index HF tensors: layer, then expert."""
    return int(rule.per_layer) + int(rule.per_expert)


def _swap_last(seq) -> list:
    """HF `[..., out, in]` <-> jaxalign `[..., in, out]` (of a shape or an index)."""
    seq = list(seq)
    seq[-2:] = seq[-2:][::-1]
    return seq


def _rows_axis(ndim: int) -> int:
    """The axis `TensorRule.rows` slices in an HF tensor of rank `ndim`: its out axis."""
    return max(ndim - 2, 0)


def _hf_shape(rule: TensorRule, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = param_shape[_stack_axes(rule):]
    return tuple(_swap_last(shape)) if rule.transpose else tuple(shape)


def _check_shapes(reader: SafetensorsReader, rule: TensorRule, names: list[str], expected: tuple[int, ...]):
    for name in names:
        found = reader.shape(name)
        ok = found == expected
        if rule.rows is not None:  # a slice of a fused tensor: the rest of its shape must match
            r = _rows_axis(len(expected))
            rest = lambda s: s[:r] + s[r + 1:]  # noqa: E731
            ok = len(found) == len(expected) and found[r] >= rule.rows[1] and rest(found) == rest(tuple(expected))
            expected = (*expected[:r], f">={rule.rows[1]}", *expected[r + 1:])
        if not ok:
            raise CheckpointError(
                f"{reader.location[name]}: tensor {name!r} has shape {list(found)}, expected {list(expected)} "
                "from config.json"
            )


def _read_param(reader: SafetensorsReader, rule: TensorRule, shape, dtype, sharding) -> jax.Array:
    """Fill one (possibly layer- and expert-stacked) parameter; each device reads only its slice."""
    np_dtype = np.dtype(dtype)
    lead = _stack_axes(rule)
    experts = shape[1] if rule.per_expert else 0
    names = rule.names(shape[0] if rule.per_layer else 0, experts)
    _check_shapes(reader, rule, names, _hf_shape(rule, shape))

    def read_one(name, index):
        hf_index = _swap_last(index) if rule.transpose else list(index)
        if rule.rows is not None:
            r = _rows_axis(len(hf_index))
            part = range(rule.rows[1] - rule.rows[0])[hf_index[r]]
            hf_index[r] = slice(rule.rows[0] + part.start, rule.rows[0] + part.stop)
        block = reader.read(name, tuple(hf_index))
        return (np.swapaxes(block, -1, -2) if rule.transpose else block).astype(np_dtype)

    def callback(index):
        if lead == 0:
            return read_one(names[0], index)
        layers = range(shape[0])[index[0]]
        if lead == 1:
            return np.stack([read_one(names[i], index[1:]) for i in layers])
        picked = range(experts)[index[1]]
        return np.stack([np.stack([read_one(names[i * experts + j], index[2:]) for j in picked]) for i in layers])

    return jax.make_array_from_callback(tuple(shape), sharding, callback)


def _layout_in(reader: SafetensorsReader, rule: TensorRule, shape) -> TensorRule:
    """`rule`, or its `alt` (the same parameter in another layout) when the checkpoint holds that one."""
    while rule.alt is not None and rule.names(shape[0] if rule.per_layer else 0, shape[1] if rule.per_expert else 0)[0] not in reader:
        rule = rule.alt
    return rule


def model_class(head: str):
    return ScalarHeadModel if head == "score" else Decoder


def load_model(
    folder: str | Path,
    *,
    dtype: Any = "float32",
    param_dtype: Any = None,
    mesh: Mesh | None = None,
    remat: str = "none",
    head: str | None = None,
    attention: str = "auto",
    layer_loop: str = "scan",
) -> Decoder | ScalarHeadModel:
    """Model weights from an HF folder; `head` defaults to what config.json says."""
    folder = Path(folder)
    config = ModelConfig.from_pretrained(folder)
    hf = json.loads((folder / "config.json").read_text())
    head = head or head_of(hf.get("architectures"))
    reader = SafetensorsReader(folder)
    compute, storage = resolve_dtype(dtype), resolve_dtype(param_dtype or dtype)
    cls = model_class(head)
    model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), dtype=compute, param_dtype=storage, remat=remat,
                                       attention=attention, layer_loop=layer_loop))
    known = set()
    for rule in rules_for(config, head):
        variable = _get(model, module_param_path(rule, head))
        rule = _layout_in(reader, rule, tuple(variable.shape))
        sharding = param_sharding(variable, mesh, name=module_param_path(rule, head))
        if rule.param == "score" and rule.hf not in reader:
            # A causal-LM checkpoint becoming a reward / difference model: fresh scalar head.
            log.info("%s: no %s in the checkpoint; initialising the scalar head", folder, rule.hf)
            value = 0.02 * jax.random.normal(jax.random.key(0), variable.shape, jnp.float32)
            variable.set_value(jax.device_put(value.astype(storage), sharding))
            continue
        variable.set_value(_read_param(reader, rule, tuple(variable.shape), storage, sharding))
        shape = tuple(variable.shape)
        known.update(rule.names(shape[0] if rule.per_layer else 0, shape[1] if rule.per_expert else 0))
    unused = [n for n in reader.names() if n not in known and not n.endswith("rotary_emb.inv_freq")]
    if unused:
        log.warning("%s: %d checkpoint tensors are not used, e.g. %s", folder, len(unused), unused[:3])
    reader.close()
    return model


def load_tokenizer(folder: str | Path):
    """The HF tokenizer saved beside the weights; a clear error when there is none."""
    folder = Path(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer beside the weights"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_pretrained(
    path_or_hub_id: str | os.PathLike,
    dtype: Any = "float32",
    mesh: Mesh | None = None,
    *,
    param_dtype: Any = None,
    remat: str = "none",
    head: str | None = None,
    tokenizer: bool = True,
    attention: str = "auto",
    layer_loop: str = "scan",
):
    """`(model, tokenizer)` from a local HF folder, a `.gguf` file or a hub id.

    dtype: compute dtype ("float32" | "bfloat16"); param_dtype: storage dtype
    (defaults to dtype; use "float32" master weights with bfloat16 compute).
    mesh: place each parameter by its partition annotation on this mesh.
    """
    folder = resolve_model_path(path_or_hub_id)
    model = load_model(folder, dtype=dtype, param_dtype=param_dtype, mesh=mesh, remat=remat, head=head,
                       attention=attention, layer_loop=layer_loop)
    return model, (load_tokenizer(folder) if tokenizer else None)


# ---------------------------------------------------------------------- saving
def _host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def model_tensors(model: Decoder | ScalarHeadModel, dtype: Any = None):
    """Yield (HF name, numpy array) for every checkpoint tensor of `model`, in table order; the
    slices of a fused tensor (`TensorRule.rows`) are concatenated back into one."""
    head = "score" if isinstance(model, ScalarHeadModel) else "lm"
    config = model.config
    fused: dict[str, list[TensorRule]] = {}
    for rule in rules_for(config, head):
        fused.setdefault(rule.hf, []).append(rule)
    for pattern, rules in fused.items():
        values = []
        for rule in sorted(rules, key=lambda r: r.rows or (0, 0)):
            value = _get(model, module_param_path(rule, head))[...]
            values.append(value if dtype is None else value.astype(resolve_dtype(dtype)))
        rule = rules[0]
        layers = value.shape[0] if rule.per_layer else 0
        experts = value.shape[1] if rule.per_expert else 0
        for k, name in enumerate(rule.names(layers, experts)):
            index = (k // experts, k % experts) if rule.per_expert else ((k,) if rule.per_layer else ())
            parts = [_host(v[index]) for v in values]
            parts = [np.swapaxes(p, -1, -2) if rule.transpose else p for p in parts]
            yield name, np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, _rows_axis(parts[0].ndim)))


def _write_weights(tensors, folder: Path, max_shard_bytes: int):
    shards, current, size = [], {}, 0
    for name, arr in tensors:
        if current and size + arr.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_FILE), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, arr in shard.items():
            weight_map[name] = fname
            total += arr.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))


def save_pretrained(
    model: Decoder | ScalarHeadModel,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    dtype: Any = None,
    max_shard_size: int = 5 * 1024**3,
    overwrite: bool = False,
) -> Path:
    """Write an HF folder (config.json, safetensors, tokenizer) that `transformers` loads.

    dtype: storage dtype of the written tensors (default: the parameters' own).
    Shards above `max_shard_size` bytes with a `model.safetensors.index.json`.
    Only process 0 writes on multi-host runs.
    """
    out_dir = Path(out_dir)
    head = "score" if isinstance(model, ScalarHeadModel) else "lm"
    config = model.config
    stored = resolve_dtype(dtype) if dtype is not None else jnp.dtype(_get(model, module_param_path(rules_for(config, head)[0], head))[...].dtype)
    tensors = model_tensors(model, dtype)  # generator: gathers every process's part
    if jax.process_index() != 0:
        for _ in tensors:
            pass
        return out_dir
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        hf = config.to_hf_dict(head=head, dtype=str(stored))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        _write_weights(tensors, tmp, max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir


def init_model(config: ModelConfig, *, seed: int = 0, dtype: Any = "float32", param_dtype: Any = None,
               mesh: Mesh | None = None, remat: str = "none", head: str = "lm", attention: str = "auto",
               layer_loop: str = "scan"):
    """A randomly initialised model, each parameter placed by its annotation on `mesh`."""
    cls = model_class(head)
    compute, storage = resolve_dtype(dtype), resolve_dtype(param_dtype or dtype)

    def make():
        return cls(config, rngs=nnx.Rngs(seed), dtype=compute, param_dtype=storage, remat=remat, attention=attention,
                   layer_loop=layer_loop)

    if mesh is None:
        return make()
    abstract = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract)
    shardings = state_shardings(state, mesh)
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


__all__ = ["load_pretrained", "save_pretrained", "load_model", "load_tokenizer", "init_model", "ConfigError", "CheckpointError"]
