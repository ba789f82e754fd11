"""Compiled temp memory of the chunked ops vs naive full logits (compiled only, never run).

Shapes of a real step: batch 8, seq 1024, hidden 576, vocab 49152 (SmolLM2),
float32. The chunked versions must need under a quarter of the naive temp
memory, forward and forward+backward. ``benchmarks/logprob_memory.py`` prints
the full table.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxalign.ops import token_distill_loss, token_logprobs

pytestmark = pytest.mark.optimized_xla  # measures compiled memory

B, T, D, V = 8, 1024, 576, 49152
CHUNK = 128  # [8, 128, 49152] f32 = 192 MiB per live chunk buffer
sds = jax.ShapeDtypeStruct


def _full_logits(h, w):
    return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)


def naive_logprobs(h, w, t):
    logp = jax.nn.log_softmax(_full_logits(h, w))
    return jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0].sum()


def naive_distill(hs, ws, ht, wt, mask, return_logits=False):
    s, t = _full_logits(hs, ws), jax.lax.stop_gradient(_full_logits(ht, wt))
    logq, logp = jax.nn.log_softmax(s), jax.nn.log_softmax(t)
    loss = jnp.sum(jnp.sum(jnp.exp(logp) * (logp - logq), -1) * mask) / jnp.sum(mask)
    # XLA:CPU fuses the forward-only version into one loop fusion that recomputes the matmul per element
    # (~0 temp bytes); accelerators materialise both logits, so the forward baseline returns and counts them.
    return (loss, (s, t)) if return_logits else loss


def _bytes(fn, *args, count_outputs=False):
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes + (stats.output_size_in_bytes if count_outputs else 0)


CASES = {
    "token_logprobs": (
        (sds((B, T, D), jnp.float32), sds((D, V), jnp.float32), sds((B, T), jnp.int32)),
        naive_logprobs,
        lambda h, w, t: token_logprobs(h, w, t, chunk_size=CHUNK).sum(),
    ),
    "token_distill_loss": (
        (sds((B, T, D), jnp.float32), sds((D, V), jnp.float32)) * 2 + (sds((B, T), jnp.float32),),
        naive_distill,
        lambda hs, ws, ht, wt, m: token_distill_loss(hs, ws, ht, wt, m, chunk_size=CHUNK),
    ),
}


@pytest.mark.parametrize("op", list(CASES))
def test_chunked_temp_memory_below_quarter_of_naive(op):
    args, naive, chunked = CASES[op]
    if op == "token_distill_loss":
        naive_fwd = _bytes(lambda *a: naive(*a, return_logits=True), *args, count_outputs=True)
    else:
        naive_fwd = _bytes(naive, *args)
    chunked_fwd = _bytes(chunked, *args)
    naive_bwd = _bytes(jax.value_and_grad(naive, argnums=(0, 1)), *args)
    chunked_bwd = _bytes(jax.value_and_grad(chunked, argnums=(0, 1)), *args)
    logits_bytes = B * T * V * 4
    assert naive_fwd >= logits_bytes  # the baseline really holds [B, T, V] float32
    assert chunked_fwd < naive_fwd / 4, (chunked_fwd, naive_fwd)
    assert chunked_bwd < naive_bwd / 4, (chunked_bwd, naive_bwd)
