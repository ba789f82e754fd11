"""The decoder every family shares, as a Flax NNX module with layer-stacked parameters.

A family (``jaxalign.models.families``) declares its per-layer parameters and its layer function;
this module owns everything around them: embedding, the scan over layers, the final norm, the LM
or scalar head, the KV cache. All layers share one set of stacked parameters `[L, ...]` and run
under `jax.lax.scan`, so a 30-layer model compiles like a 1-layer one and pruning a layer is an
index deletion. Families whose layers differ by kind (Gemma's local/global attention) scan over
the repeating period of kinds, each kind static inside the body, so every attention kernel sees a
static window. Parameters carry `out_sharding` names for the mesh axes; `jaxalign.parallel` turns
them into shardings.

Shapes: B batch, T query length, S key length (T, or the KV-cache size), D hidden, K kv heads,
Dh head dim, V vocab, L layers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.config import ModelConfig
from jaxalign.models.layers.context import LayerContext
from jaxalign.models.layers.params import EMBEDDING, IN_OUT, SCALAR_HEAD, VECTOR, ParamSpec, make_param
from jaxalign.models.layers.rope import rope_cos_sin
from jaxalign.ops.attention import IMPLEMENTATIONS

# Remat policies for the per-layer scan body, selected by name from configs.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_all": jax.checkpoint_policies.everything_saveable,
}
# How the layer loop is compiled: one `lax.scan` over stacked layers (compiles like one layer), or
# unrolled with static slices (longer compiles; on CPU it avoids the scan's per-layer weight slices).
LAYER_LOOPS = ("scan", "unroll")


class DecoderLayers(nnx.Module):
    """Stacked parameters of all decoder layers (leading axis L), as the family declares them."""

    def __init__(self, specs: dict[str, ParamSpec], num_layers: int, *, param_dtype, rngs: nnx.Rngs):
        self.names = tuple(specs)
        for name, spec in specs.items():
            setattr(self, name, make_param(rngs, spec, param_dtype, leading=(num_layers,)))

    def arrays(self) -> dict[str, jax.Array]:
        return {n: getattr(self, n)[...] for n in self.names}


def default_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions restarting at 0 in each segment `[B,T]` (plain arange for one segment)."""
    T = segment_ids.shape[1]
    idx = jnp.arange(T)[None, :]
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return (idx - start_idx).astype(jnp.int32)


def constrain_rows(x: jax.Array) -> jax.Array:
    """Pin activations `[B, ...]` to rows sharded over the context mesh's batch axes (`data`, `fsdp`).

    Without it, GSPMD may keep the weights sharded and all-gather the activations inside the layer
    scan (every device then computes on the whole batch); with it, FSDP gathers weights, as it should.
    A no-op outside `jax.set_mesh`, or when the rows do not divide over those axes.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    if not axes or x.shape[0] % shards:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes))


def layer_period(kinds: tuple[str, ...]) -> int:
    """Smallest p with kinds[i] == kinds[i % p] for every layer (1 for uniform models, 2 for Gemma 2's
    alternation, 6 for Gemma 3's 5:1; len(kinds) when there is no repetition, e.g. after pruning)."""
    n = len(kinds)
    return next(p for p in range(1, n + 1) if all(kinds[i] == kinds[i % p] for i in range(n)))


class Decoder(nnx.Module):
    """Causal LM of any registered family.

    `hidden_states(ids)` -> `[B,T,D]` after the final norm (what the chunked log-prob ops
    consume); `lm_head_weight()` -> `[D,V]`; `logit_softcap` -> the final soft-cap (or None) the
    log-prob ops apply; `model(ids)` -> float32 logits `[B,T,V]` for evaluation and parity checks.
    `attention`: a `jaxalign.ops.attention` implementation; `layer_loop`: one of `LAYER_LOOPS`.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, remat: str = "none", lm_head: bool = True,
                 attention: str = "auto", layer_loop: str = "scan"):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        if attention not in IMPLEMENTATIONS:
            raise ValueError(f"attention={attention!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        if layer_loop not in LAYER_LOOPS:
            raise ValueError(f"layer_loop={layer_loop!r} is not one of {', '.join(LAYER_LOOPS)}")
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.attention = attention
        self.layer_loop = layer_loop
        D, V = config.hidden_size, config.vocab_size
        self.embed = make_param(rngs, ParamSpec((V, D), EMBEDDING), param_dtype)
        self.layers = DecoderLayers(config.family.layer_params(config), config.num_layers, param_dtype=param_dtype, rngs=rngs)
        self.final_norm = make_param(rngs, ParamSpec((D,), VECTOR, _norm_init(config)), param_dtype)
        untied = lm_head and not config.tie_word_embeddings
        self.lm_head = make_param(rngs, ParamSpec((D, V), IN_OUT), param_dtype) if untied else None
        self.lora = nnx.data(None)  # LoRA adapters (`jaxalign.models.lora.add_lora`), or None

    def layer_arrays(self) -> dict:
        """The stacked per-layer weights `{name: [L, ...]}`; with enabled LoRA adapters the adapted
        projections are `LoraWeight`s (base weight and adapter pair, each with the layer axis first)."""
        stacked = self.layers.arrays()
        if self.lora is None or not self.lora.enabled:
            return stacked
        return self.lora.wrap(stacked)

    @property
    def family(self):
        return self.config.family

    @property
    def logit_softcap(self) -> float | None:
        return self.config.final_logit_softcap

    def lm_head_weight(self) -> jax.Array:
        """The output projection `[D, V]` (the transposed embedding when tied)."""
        if self.lm_head is not None:
            return self.lm_head[...]
        return self.embed[...].T

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
        scale = self.family.embed_scale(self.config)
        return x if scale is None else x * jnp.asarray(scale, self.dtype)

    def _final_norm(self, x):
        return self.family.final_norm(x, self.final_norm[...], self.config.rms_norm_eps)

    def _rope(self, positions) -> dict[str, tuple[jax.Array, jax.Array]]:
        dtype = jnp.promote_types(self.dtype, jnp.float32)
        return {name: rope_cos_sin(positions, inv, dtype) for name, inv in self.family.rope_tables(self.config).items()}

    def _run_layers(self, x, ctx: LayerContext, return_kv: bool = False):
        """All layers over the stacked parameters (training, scoring, prefill).

        Returns (final-norm hidden states, summed auxiliary loss), plus with `return_kv` the keys and
        values of every layer, stacked `[L,B,T,K,Dh]` each.
        """
        config, family = self.config, self.family
        kinds = config.layer_kinds
        period = layer_period(kinds)

        def run_block(carry, p, block_kinds):
            x, aux = carry
            kvs = []
            for j, kind in enumerate(block_kinds):
                x = constrain_rows(x)
                x, kv, a = family.layer(config, kind, jax.tree.map(lambda v: v[j], p), x, ctx)
                aux = aux + a
                kvs.append(kv if return_kv else None)
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *kvs) if return_kv else None
            return (constrain_rows(x), aux), stacked

        def checkpointed(block_kinds):
            fn = lambda carry, p: run_block(carry, p, block_kinds)  # noqa: E731
            if self.remat != "none":
                fn = jax.checkpoint(fn, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
            return fn

        stacked = self.layer_arrays()
        carry = (x, family.aux_zeros(config))
        kv_parts = []
        if self.layer_loop == "unroll":
            for i in range(config.num_layers):
                body = checkpointed((kinds[i],))
                carry, kv = body(carry, jax.tree.map(lambda v: v[i:i + 1], stacked))
                kv_parts.append(kv)
        else:
            n_blocks, rest = divmod(config.num_layers, period)
            if n_blocks:
                blocks = jax.tree.map(lambda v: v[: n_blocks * period].reshape(n_blocks, period, *v.shape[1:]), stacked)
                carry, kv = jax.lax.scan(checkpointed(kinds[:period]), carry, blocks)
                kv_parts.append(None if kv is None else jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), kv))
            if rest:
                carry, kv = checkpointed(kinds[n_blocks * period:])(carry, jax.tree.map(lambda v: v[n_blocks * period:], stacked))
                kv_parts.append(kv)
        x, aux = carry
        aux = family.aux_loss(config, aux)
        x = self._final_norm(x)
        if not return_kv:
            return x, aux
        kv = jax.tree.map(lambda *xs: jnp.concatenate(xs), *kv_parts)
        return x, aux, kv

    def _context(self, segment_ids, positions, kv_segment_ids=None, q_order=None, kv_order=None) -> LayerContext:
        B, T = segment_ids.shape
        q_order = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)) if q_order is None else q_order
        return LayerContext(
            segment_ids=segment_ids,
            kv_segment_ids=segment_ids if kv_segment_ids is None else kv_segment_ids,
            q_positions=q_order,
            kv_positions=q_order if kv_order is None else kv_order,
            rope=self._rope(positions),
            attention_impl=self.attention,
            custom_grad=self.remat != "dots",  # the "dots" policy must see the projections' dot_general
        )

    def hidden_states(self, input_ids, positions=None, segment_ids=None, *, with_aux: bool = False):
        """Final-norm hidden states `[B,T,D]` in the compute dtype (and, `with_aux`, the summed
        auxiliary loss of the layers, e.g. MoE router load balancing; 0 for dense families).

        segment_ids `[B,T]` (0 = padding) restrict attention to each packed example; positions
        default to 0.. within each segment.
        """
        if segment_ids is None:
            segment_ids = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = default_positions(segment_ids)
        x, aux = self._run_layers(self.embed_tokens(input_ids), self._context(segment_ids, positions))
        return (x, aux) if with_aux else x

    def __call__(self, input_ids, positions=None, segment_ids=None) -> jax.Array:
        """Float32 logits `[B,T,V]` (float64 for a float64 model; materialised: for evaluation and tests,
        not training)."""
        h = self.hidden_states(input_ids, positions, segment_ids)
        logits = jnp.einsum("btd,dv->btv", h, self.lm_head_weight().astype(h.dtype),
                            preferred_element_type=jnp.promote_types(h.dtype, jnp.float32))
        cap = self.logit_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    # ----------------------------------------------------------------- KV cache
    def unstacked_layers(self) -> list[dict[str, jax.Array]]:
        """Per-layer parameter dicts. Decoding slices them once, outside its loop: on CPU a
        dynamic slice of the stacked weights is copied at every use, tripling per-token cost."""
        stacked = self.layer_arrays()
        return [jax.tree.map(lambda v: v[i], stacked) for i in range(self.config.num_layers)]

    def init_cache(self, batch_size: int, cache_size: int, dtype=None) -> list[tuple[jax.Array, jax.Array]]:
        """Zeroed KV cache: one (k, v) pair `[B, S, K, Dh]` per layer."""
        c = self.config
        shape = (batch_size, cache_size, c.num_kv_heads, c.head_dim)
        dtype = dtype or self.dtype
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(c.num_layers)]

    def prefill(self, input_ids, prompt_mask, cache_size: int):
        """Run left-padded prompts `[B,P]` (mask 1 on real tokens) through the stacked layers
        and return (hidden `[B,P,D]`, a KV cache of `cache_size` slots holding them)."""
        P = input_ids.shape[1]
        positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
        ctx = self._context(prompt_mask.astype(jnp.int32), positions)
        hidden, _, (k, v) = self._run_layers(self.embed_tokens(input_ids), ctx, return_kv=True)
        cache = self.init_cache(input_ids.shape[0], cache_size)
        cache = [(ck.at[:, :P].set(k[i].astype(ck.dtype)), cv.at[:, :P].set(v[i].astype(cv.dtype)))
                 for i, (ck, cv) in enumerate(cache)]
        return hidden, cache

    def forward_cached(self, input_ids, positions, kv_valid, cache, cache_index, layers=None):
        """Run T new tokens against the cache; their keys land at `cache_index`.

        input_ids/positions `[B,T]`; kv_valid bool `[B,S]` marks filled, non-padding cache slots
        *including* the T new ones; layers: `unstacked_layers()` (pass it in from outside a decode
        loop). Causality and sliding windows compare cache slots, which differ from positions by a
        per-row constant. Returns (hidden `[B,T,D]`, cache).
        """
        B, T = input_ids.shape
        S = cache[0][0].shape[1]
        ctx = self._context(
            jnp.ones((B, T), jnp.int32), positions, kv_segment_ids=kv_valid.astype(jnp.int32),
            q_order=jnp.broadcast_to(cache_index + jnp.arange(T, dtype=jnp.int32), (B, T)),
            kv_order=jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S)),
        )
        x = self.embed_tokens(input_ids)
        new_cache = []
        kinds = self.config.layer_kinds
        for kind, p, kv in zip(kinds, layers if layers is not None else self.unstacked_layers(), cache):
            x, kv, _ = self.family.layer(self.config, kind, p, x, ctx, kv, cache_index)
            new_cache.append(kv)
        return self._final_norm(x), new_cache


def _norm_init(config: ModelConfig) -> str:
    """Gemma-style norms scale by (1 + w): their identity weight is 0."""
    from jaxalign.models.layers.norms import rms_norm_plus_one

    return "zeros" if config.family.final_norm is rms_norm_plus_one else "ones"


class ScalarHeadModel(nnx.Module):
    """Decoder + linear head on the last non-padding token: reward or pairwise difference model.

    Saved as HF `*ForSequenceClassification` with `num_labels=1` (`score.weight`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat="none", attention: str = "auto", layer_loop: str = "scan"):
        self.config = config
        self.decoder = Decoder(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, remat=remat, lm_head=False,
                               attention=attention, layer_loop=layer_loop)
        self.score = make_param(rngs, ParamSpec((config.hidden_size, 1), SCALAR_HEAD), param_dtype)

    def __call__(self, input_ids, positions=None, segment_ids=None, last_index=None) -> jax.Array:
        """Scores `[B]` float32 read at `last_index` `[B]` (default: last non-padding token)."""
        if segment_ids is None:
            segment_ids = jnp.ones(input_ids.shape, jnp.int32)
        if last_index is None:
            T = input_ids.shape[1]
            last_index = T - 1 - jnp.argmax((segment_ids != 0)[:, ::-1], axis=1)
        h = self.decoder.hidden_states(input_ids, positions, segment_ids)
        last = jnp.take_along_axis(h, last_index[:, None, None].astype(jnp.int32), axis=1)[:, 0]
        return jnp.einsum("bd,do->bo", last, self.score[...].astype(last.dtype), preferred_element_type=jnp.float32)[:, 0]
