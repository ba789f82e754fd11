"""Batched sampling with a preallocated KV cache, compiled once per shape bucket.

Prefill and the whole decode loop (`lax.while_loop`) are one jitted function:
there is no per-token dispatch and no recompilation per token or per
`max_new_tokens` value (it is a traced argument; only the cache size, rounded
up to a bucket, is static).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.data.tokenize import with_bos
from jaxalign.models.decoder import Decoder


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


def sample_tokens(logits: jax.Array, key: jax.Array, params: SamplingParams) -> jax.Array:
    """Next tokens `[B]` from float32 logits `[B,V]`."""
    if params.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / params.temperature
    if params.top_k:
        kth = jax.lax.top_k(logits, params.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if params.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep = before < params.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("graphdef", "cache_size", "sampling", "eos_ids", "pad_id"))
def _generate(graphdef, state, prompt_ids, prompt_mask, max_new_tokens, key, *, cache_size, sampling, eos_ids, pad_id):
    model: Decoder = nnx.merge(graphdef, state)
    B, P = prompt_ids.shape
    capacity = cache_size - P
    head = model.lm_head_weight()
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    kv_valid = jnp.zeros((B, cache_size), bool).at[:, :P].set(prompt_mask.astype(bool))
    hidden, cache = model.prefill(prompt_ids, prompt_mask, cache_size)
    layers = model.unstacked_layers()

    def logits_of(h):
        return jnp.einsum("bd,dv->bv", h, head.astype(h.dtype), preferred_element_type=jnp.float32)

    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    init = dict(
        step=jnp.int32(0),
        logits=logits_of(hidden[:, -1]),
        cache=cache,
        kv_valid=kv_valid,
        pos=positions[:, -1] + 1,
        done=jnp.zeros((B,), bool),
        tokens=jnp.full((B, capacity), pad_id, jnp.int32),
        lengths=jnp.zeros((B,), jnp.int32),
    )

    def cond(s):
        return (s["step"] < jnp.minimum(max_new_tokens, capacity)) & ~jnp.all(s["done"])

    def body(s):
        step = s["step"]
        tok = sample_tokens(s["logits"], jax.random.fold_in(key, step), sampling)
        tok = jnp.where(s["done"], pad_id, tok)
        lengths = s["lengths"] + (~s["done"]).astype(jnp.int32)
        done = s["done"] | jnp.isin(tok, eos)
        slot = P + step
        kv_valid = s["kv_valid"].at[:, slot].set(True)
        h, cache = model.forward_cached(tok[:, None], s["pos"][:, None], kv_valid, s["cache"], slot, layers)
        return dict(
            step=step + 1,
            logits=logits_of(h[:, 0]),
            cache=cache,
            kv_valid=kv_valid,
            pos=s["pos"] + 1,
            done=done,
            tokens=s["tokens"].at[:, step].set(tok),
            lengths=lengths,
        )

    out = jax.lax.while_loop(cond, body, init)
    return out["tokens"], out["lengths"]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def encode_prompts(tokenizer, prompts: Sequence, *, chat_template: bool | None = None,
                   add_bos: bool | None = None) -> list[list[int]]:
    """Token ids per prompt, laid out as training lays out a prompt (``jaxalign.data.tokenize.Encoder``).

    Message lists (and strings when ``chat_template=True``) go through the chat template, which
    places BOS itself; plain text is ``[BOS] + tok(text)`` with BOS per ``add_bos`` (None: when the
    tokenizer has one), never doubled.
    """
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str) and not chat_template:
            ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            ids = with_bos(ids, tokenizer.bos_token_id, add_bos) if ids else ids
        else:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"prompts[{i}] is a message list but the tokenizer has no chat template")
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"prompts[{i}] is empty after tokenisation")
        encoded.append(list(ids))
    return encoded


def left_pad(sequences: list[list[int]], pad_id: int, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """ids, mask `[B, P]` with P rounded up to `multiple`, prompts aligned to the right."""
    P = _round_up(max(len(s) for s in sequences), multiple)
    ids = np.full((len(sequences), P), pad_id, np.int32)
    mask = np.zeros((len(sequences), P), np.int32)
    for i, s in enumerate(sequences):
        ids[i, P - len(s):] = s
        mask[i, P - len(s):] = 1
    return ids, mask


def generate_ids(
    model: Decoder,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingParams = SamplingParams(),
    seed: int = 0,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    bucket: int = 64,
) -> list[list[int]]:
    """New token ids per prompt (EOS included when generated)."""
    if not prompt_ids:
        raise ValueError("prompts is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    limit = model.config.max_position_embeddings
    for i, p in enumerate(prompt_ids):
        if len(p) + max_new_tokens > limit:
            raise ValueError(
                f"prompts[{i}] has {len(p)} tokens; with max_new_tokens={max_new_tokens} it exceeds the model's "
                f"context of {limit} tokens"
            )
    ids, mask = left_pad([list(p) for p in prompt_ids], pad_token_id)
    tokens, lengths = generate_arrays(model, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=max_new_tokens,
                                      sampling=sampling, seed=seed, eos_token_ids=eos_token_ids,
                                      pad_token_id=pad_token_id, bucket=bucket)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(len(prompt_ids))]


def generate_arrays(model: Decoder, ids: jax.Array, mask: jax.Array, *, max_new_tokens: int,
                    sampling: SamplingParams = SamplingParams(), seed: int = 0, eos_token_ids: Sequence[int] = (),
                    pad_token_id: int = 0, bucket: int = 64) -> tuple[jax.Array, jax.Array]:
    """New tokens ``[B, C]`` (``pad_token_id`` after each row's end) and their counts ``[B]`` for left-padded
    prompts ``ids``/``mask`` ``[B, P]`` (see ``left_pad``), unchecked. The inputs may be global arrays
    sharded over processes (multi-host ``generate``); each process then reads its own rows of the outputs."""
    cache_size = _round_up(ids.shape[1] + max_new_tokens, bucket)
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef, state, ids, mask, jnp.int32(max_new_tokens), jax.random.key(seed),
        cache_size=cache_size, sampling=sampling, eos_ids=tuple(int(e) for e in eos_token_ids), pad_id=int(pad_token_id),
    )


def generate(
    model: Decoder,
    tokenizer,
    prompts: Sequence,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    *,
    chat_template: bool | None = None,
    stop_at_eos: bool = True,
    skip_special_tokens: bool = True,
) -> list[str]:
    """Sample a completion per prompt (string, or message list through the chat template).

    Greedy when temperature is 0; deterministic for a given seed and batch.
    """
    encoded = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    eos = model.config.eos_token_ids or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    new = generate_ids(
        model, encoded, max_new_tokens=max_new_tokens, sampling=SamplingParams(temperature, top_k, top_p),
        seed=seed, eos_token_ids=eos if stop_at_eos else (), pad_token_id=pad,
    )
    return [tokenizer.decode([t for t in toks if t not in eos], skip_special_tokens=skip_special_tokens) for toks in new]
