"""Calibration pass: how much each attention head, MLP channel, hidden channel and layer matters, measured
on data (the statistics structured width and depth pruning keep or drop by).

One jitted walk over the layers (the family's own `layer` function on the stacked weights, scanned
over the repeating period of layer kinds like the decoder) watches every projection's input through
the `INPUT_TAP` hook of `jaxalign.models.layers.linear`, and which projection a tapped weight is comes
from `param_roles.axis_roles` (no per-family table). Per layer, summed over the real tokens:

- heads `[L,H]`: L2 norm of each query head's attention output (the input of the projection whose
  input axis is the heads axis, o_proj) — Minitron's head importance;
- mlp `[L,F]`: |act(gate)·up| of each MLP channel (the input of down_proj);
- hidden `[L,D]`: |x| of each channel of the normed layer inputs (the inputs of q/k/v and gate/up);
- cosine `[L]`: 1 − cos(layer input, layer output) per token (ShortGPT's block influence);
- skip_kl `[L]`: KL(full model ‖ model without this layer) per next-token distribution: the layer's
  input is carried past it and the later layers run as usual (they run only after the skipped one:
  `lax.cond`, so the cost is L(L−1)/2 layer passes per batch, plus L LM heads).

Batches are sharded over the mesh's batch axes (`data × fsdp`) as `score` shards them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models.decoder import layer_period
from jaxalign.models.layers import linear as linear_module
from jaxalign.models.param_roles import HIDDEN, MLP, Q, axis_roles

IMPORTANCE_FILE = "importance.json"


@dataclasses.dataclass
class Importance:
    """Mean statistics per real token (see the module docstring); `prompts`/`tokens`: what they average."""

    heads: np.ndarray  # [L, H]
    mlp: np.ndarray  # [L, F]; all zero when the family has no dense MLP (mixture of experts)
    hidden: np.ndarray  # [L, D]
    cosine: np.ndarray  # [L]
    skip_kl: np.ndarray  # [L]; NaN where not measured
    prompts: int
    tokens: int
    seconds: float = 0.0

    def kv_groups(self, num_kv_heads: int) -> np.ndarray:
        """`[L, K]`: summed importance of the query heads sharing each KV head (HF order: head h uses KV head
        h // (H / K))."""
        L, H = self.heads.shape
        return self.heads.reshape(L, num_kv_heads, H // num_kv_heads).sum(-1)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: (np.asarray(v, np.float64).round(8).tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}

    @classmethod
    def from_json(cls, record: dict) -> "Importance":
        arrays = {"heads", "mlp", "hidden", "cosine", "skip_kl"}
        return cls(**{k: (np.asarray(v, np.float64) if k in arrays else v) for k, v in record.items()})

    def save(self, folder: str | Path) -> Path:
        """`folder/importance.json`, written atomically."""
        from jaxalign.io.atomic import write_json_atomic

        return write_json_atomic(Path(folder) / IMPORTANCE_FILE, self.to_json(), indent=1, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- batches


def calibration_batches(token_ids: Sequence[Sequence[int]], batch_size: int, *, shards: int = 1,
                        multiple: int = 16) -> list[dict[str, np.ndarray]]:
    """Right-padded batches `{input_ids, positions, segment_ids}` `[B, T]` (segment 0 = padding; T rounded
    up to `multiple`, B up to a multiple of `shards`, missing rows all padding)."""
    if not token_ids:
        raise ValueError("calibration needs at least one prompt")
    size = -(-batch_size // shards) * shards
    batches = []
    for lo in range(0, len(token_ids), size):
        chunk = token_ids[lo:lo + size]
        T = -(-max(len(s) for s in chunk) // multiple) * multiple
        ids = np.zeros((size, T), np.int32)
        seg = np.zeros((size, T), np.int32)
        for r, s in enumerate(chunk):
            ids[r, :len(s)] = s
            seg[r, :len(s)] = 1
        pos = np.broadcast_to(np.arange(T, dtype=np.int32), (size, T)).copy()
        batches.append({"input_ids": ids, "positions": pos, "segment_ids": seg})
    return batches


def encode_calibration_prompts(tokenizer, path: str, limit: int, *, max_tokens: int = 256,
                               chat_template: bool | None = None) -> list[list[int]]:
    """Token ids of the first `limit` prompts of `path` (any `generate.prompts` file, `asset:NAME` for a
    shipped one), laid out as generation lays them out (chat template when the tokenizer has one), cut
    to their last `max_tokens` tokens."""
    from jaxalign.generation.sampler import encode_prompts
    from jaxalign.pipeline.generate import uses_chat_template
    from jaxalign.pipeline.rows import load_prompts

    rows = load_prompts(path, limit=limit)
    out = []
    for row in rows:
        chat = uses_chat_template(tokenizer, chat_template, row["prompt"])
        out.append(encode_prompts(tokenizer, [row["prompt"]], chat_template=chat)[0][-max_tokens:])
    return out


# ----------------------------------------------------------------------------- the layer walk


@contextlib.contextmanager
def _tapping(fn):
    linear_module.INPUT_TAP = fn
    try:
        yield
    finally:
        linear_module.INPUT_TAP = None


def _scan_layers(model, body, x, extra=None):
    """Run `body(x, kind, p, index, extra) -> (x, out)` over every layer, scanned over the repeating
    period of layer kinds (as the decoder does); returns (x, outs stacked `[L, ...]`)."""
    kinds = model.config.layer_kinds
    L, period = len(kinds), layer_period(kinds)
    stacked = model.layers.arrays()
    index = jnp.arange(L)

    def block(block_kinds):
        def fn(x, blk):
            p_blk, idx = blk
            outs = []
            for j, kind in enumerate(block_kinds):
                x, out = body(x, kind, {k: v[j] for k, v in p_blk.items()}, idx[j], extra)
                outs.append(out)
            return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)
        return fn

    n_blocks, rest = divmod(L, period)
    parts = []
    if n_blocks:
        blocks = ({k: v[:n_blocks * period].reshape(n_blocks, period, *v.shape[1:]) for k, v in stacked.items()},
                  index[:n_blocks * period].reshape(n_blocks, period))
        x, out = jax.lax.scan(block(kinds[:period]), x, blocks)
        parts.append(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out))
    if rest:
        x, out = block(kinds[n_blocks * period:])(x, ({k: v[n_blocks * period:] for k, v in stacked.items()},
                                                      index[n_blocks * period:]))
        parts.append(out)
    return x, jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _masked_sum(v, mask):
    """Sum over the real tokens of `v` `[B,T,...]` (padding may hold NaN: selected away, not multiplied)."""
    m = mask.reshape(mask.shape + (1,) * (v.ndim - 2))
    return jnp.sum(jnp.where(m, v, 0.0), axis=(0, 1))


@functools.lru_cache(maxsize=8)
def _make_stats_fn(graphdef):
    """`(state, batch) -> dict`: summed per-layer statistics, the layer inputs `[L,B,T,D]` and the final-norm
    hidden states `[B,T,D]` of one batch."""

    @jax.jit
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        config, family = model.config, model.family
        roles = axis_roles(config)
        seg, pos = batch["segment_ids"], batch["positions"]
        mask = seg > 0
        ctx = model._context(seg, pos)
        H, F, D = config.num_heads, config.intermediate_size, config.hidden_size

        def body(x, kind, p, index, extra):
            names = {id(v): k for k, v in p.items()}
            acc = {"heads": jnp.zeros(H), "mlp": jnp.zeros(F), "hidden": jnp.zeros(D)}
            seen: set[int] = set()

            def tap(inp, w):
                name = names.get(id(w))
                if name is None or len(roles[name]) != 2:
                    return
                role, v = roles[name][0], inp.astype(jnp.float32)
                if role == Q:
                    B, T, _ = v.shape
                    acc["heads"] = acc["heads"] + _masked_sum(jnp.linalg.norm(v.reshape(B, T, H, -1), axis=-1), mask)
                elif role == MLP:
                    acc["mlp"] = acc["mlp"] + _masked_sum(jnp.abs(v), mask)
                elif role == HIDDEN and id(inp) not in seen:
                    seen.add(id(inp))
                    acc["hidden"] = acc["hidden"] + _masked_sum(jnp.abs(v), mask)

            with _tapping(tap):
                y, _, _ = family.layer(config, kind, p, x, ctx)
            a, b = x.astype(jnp.float32), y.astype(jnp.float32)
            cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-12)
            return y, {**acc, "cosine": _masked_sum(1.0 - cos, mask), "inputs": x}

        x, outs = _scan_layers(model, body, model.embed_tokens(batch["input_ids"]))
        h = family.final_norm(x, model.final_norm[...], config.rms_norm_eps)
        return {**outs, "final": h, "tokens": jnp.sum(mask)}

    return fn


def _log_probs(model, h):
    logits = jnp.einsum("btd,dv->btv", h, model.lm_head_weight().astype(h.dtype), preferred_element_type=jnp.float32)
    cap = model.logit_softcap
    logits = logits if cap is None else cap * jnp.tanh(logits / cap)
    return jax.nn.log_softmax(logits, axis=-1)


@functools.lru_cache(maxsize=8)
def _make_log_probs_fn(graphdef):
    """`(state, final-norm hidden [B,T,D]) -> float32 log-probs [B,T,V]` (the unpruned model's, once per batch)."""
    return jax.jit(lambda state, h: _log_probs(nnx.merge(graphdef, state), h))


@functools.lru_cache(maxsize=8)
def _make_skip_fn(graphdef):
    """`(state, inputs [L,B,T,D], full log-probs [B,T,V], batch, i) -> summed KL(full ‖ without layer i)` over
    real tokens; layers after i run from layer i's input (`lax.cond`: the earlier ones cost nothing)."""

    @jax.jit
    def fn(state, inputs, full, batch, i):
        model = nnx.merge(graphdef, state)
        config, family = model.config, model.family
        seg = batch["segment_ids"]
        ctx = model._context(seg, batch["positions"])

        def body(x, kind, p, index, extra):
            run = lambda x: family.layer(config, kind, p, x, ctx)[0]  # noqa: E731
            return jax.lax.cond(index > i, run, lambda x: x, x), None

        x, _ = _scan_layers(model, body, inputs[i])
        h = family.final_norm(x, model.final_norm[...], config.rms_norm_eps)
        kl = jnp.sum(jnp.exp(full) * (full - _log_probs(model, h)), axis=-1)
        return jnp.sum(jnp.where(seg > 0, kl, 0.0))

    return fn


def on_mesh(state, mesh):
    """An NNX state placed on `mesh` by its partition annotations (a model loaded elsewhere, or sliced on host)."""
    from jaxalign.parallel.sharding import state_shardings

    return jax.device_put(state, state_shardings(state, mesh))


def calibrate(model, batches: Sequence[dict[str, np.ndarray]], *, mesh=None, skip_kl: bool = True,
              show_progress: bool = True) -> Importance:
    """Importance statistics of `model` (a `Decoder`) over `batches` (`calibration_batches`), averaged per
    real token. `skip_kl=False` leaves out the per-layer skip pass (skip_kl is then NaN)."""
    from jaxalign.parallel import distributed
    from jaxalign.parallel.mesh import make_mesh
    from jaxalign.pipeline.progress import progress

    mesh = mesh if mesh is not None else make_mesh()
    graphdef, state = nnx.split(model)
    state = on_mesh(state, mesh)
    stats_fn, skip_fn, log_probs_fn = _make_stats_fn(graphdef), _make_skip_fn(graphdef), _make_log_probs_fn(graphdef)
    L = model.config.num_layers
    sums: dict[str, np.ndarray] = {}
    skip = np.zeros(L)
    tokens = 0
    prompts = sum(int(np.any(b["segment_ids"][r] > 0)) for b in batches for r in range(len(b["segment_ids"])))
    start = time.perf_counter()
    bar = progress(total=len(batches) * (1 + (L if skip_kl else 0)), desc="calibration", unit="pass",
                   enabled=show_progress)
    with jax.set_mesh(mesh):
        for host in batches:
            batch = distributed.global_batch(host, mesh)
            out = stats_fn(state, batch)
            bar.update()
            for k in ("heads", "mlp", "hidden", "cosine"):
                sums[k] = sums.get(k, 0.0) + np.asarray(jax.device_get(out[k]), np.float64)
            tokens += int(out["tokens"])
            if skip_kl:
                full = log_probs_fn(state, out["final"])
                for i in range(L):
                    skip[i] += float(skip_fn(state, out["inputs"], full, batch, jnp.int32(i)))
                    bar.update()
    bar.close()
    n = max(tokens, 1)
    return Importance(heads=sums["heads"] / n, mlp=sums["mlp"] / n, hidden=sums["hidden"] / n,
                      cosine=sums["cosine"] / n, skip_kl=skip / n if skip_kl else np.full(L, np.nan),
                      prompts=prompts, tokens=tokens, seconds=time.perf_counter() - start)
