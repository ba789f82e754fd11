"""jaxalign.ops.logprobs: chunked token log-probs and masked sequence / segment reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops import segment_logprobs, sequence_logprobs, token_logprobs

B, T, D, V = 2, 13, 8, 11


def _inputs(seed=0, dtype=np.float32):
    """NumPy inputs (no eager JAX ops: every JAX computation in these tests is one jit)."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, T, D)).astype(dtype)
    head = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(dtype)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    return hidden, head, targets


def numpy_token_logprobs(hidden, head, targets, cotangent=None):
    """Naive full-logits log-probs in float64; with ``cotangent`` also the grads of Σ c·logp w.r.t. (hidden, head)."""
    h = np.asarray(hidden, np.float64)
    w = np.asarray(head, np.float64)
    logits = h @ w
    m = logits.max(-1, keepdims=True)
    probs = np.exp(logits - m)
    probs /= probs.sum(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    if cotangent is None:
        return picked - lse
    c = np.asarray(cotangent, np.float64)[..., None]
    dlogits = c * (np.eye(w.shape[1])[np.asarray(targets)] - probs)
    return picked - lse, (dlogits @ w.T, np.einsum("btd,btv->dv", h, dlogits))


@jax.jit(static_argnames="chunk_size")
def logps_value_and_grads(hidden, head, targets, cotangent, chunk_size):
    """((Σ c·logp, logp), (d/d hidden, d/d head)) — one compile per shape/dtype/chunk, shared by tests."""

    def f(h, w):
        out = token_logprobs(h, w, targets, chunk_size=chunk_size)
        return jnp.sum(cotangent * out), out

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(hidden, head)


@jax.jit
def masked_objective_value_and_grads(hidden, head, targets, mask):
    """Sum of every masked reduction of chunked log-probs, and its grads (chunk 5)."""

    def f(h, w):
        lp = token_logprobs(h, w, targets, chunk_size=5)
        seg = jnp.where(mask, 1, 0)
        total = (
            sequence_logprobs(lp, mask).sum()
            + sequence_logprobs(lp, mask, average=True).sum()
            + segment_logprobs(lp, mask, seg, 2, average=True).sum()
        )
        return total, lp

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(hidden, head)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 64])
def test_token_logprobs_matches_naive_values_and_grads(chunk_size):
    hidden, head, targets = _inputs()
    cot = np.random.default_rng(1).normal(size=(B, T)).astype(np.float32)
    (_, out), grads = logps_value_and_grads(hidden, head, targets, cot, chunk_size=chunk_size)
    ref, ref_grads = numpy_token_logprobs(hidden, head, targets, cot)
    assert out.shape == (B, T) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_token_logprobs_soft_cap_matches_naive():
    hidden, head, targets = _inputs(2)
    hidden = hidden * 10
    out = jax.jit(lambda h, w: token_logprobs(h, w, targets, chunk_size=4, logit_soft_cap=5.0))(hidden, head)
    logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    logits = 5.0 * np.tanh(logits / 5.0)
    lse = np.log(np.exp(logits).sum(-1))
    ref = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0] - lse
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_token_logprobs_bf16_inputs_accumulate_in_float32():
    hidden, head, targets = _inputs(3, jnp.bfloat16)
    (_, out), g = logps_value_and_grads(hidden, head, targets, np.ones((B, T), np.float32), chunk_size=5)
    assert out.dtype == jnp.float32
    # Same bf16 values, exact float64 arithmetic: only float32 accumulation error remains.
    ref = numpy_token_logprobs(hidden.astype(np.float32), head.astype(np.float32), targets)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert g[0].dtype == jnp.bfloat16 and g[1].dtype == jnp.bfloat16


def test_bf16_head_gradient_accumulates_over_chunks_in_float32():
    """64 chunks of a bf16 head: its gradient is summed in float32 and rounded to bf16 once."""
    rng = np.random.default_rng(10)
    hidden = rng.normal(size=(2, 64, 16)).astype(jnp.bfloat16)
    head = (rng.normal(size=(16, 32)) / 4).astype(jnp.bfloat16)
    targets = rng.integers(0, 32, size=(2, 64)).astype(np.int32)
    cot = np.ones((2, 64), np.float32)
    _, (_, g_head) = logps_value_and_grads(hidden, head, targets, cot, chunk_size=1)
    _, ref = numpy_token_logprobs(hidden.astype(np.float32), head.astype(np.float32), targets, cot)[1]
    err = np.abs(np.asarray(g_head, np.float64) - ref).max() / np.abs(ref).max()
    assert err < 2**-8, err  # one bf16 rounding; bf16 accumulation over 64 chunks is ~4x worse


def test_token_logprobs_out_of_range_targets_give_zero_and_no_gradient():
    hidden, head, targets = _inputs(4)
    targets[0, :3] = -100
    targets[1, 5] = V

    (_, out), (g, _) = logps_value_and_grads(hidden, head, targets, np.ones((B, T), np.float32), chunk_size=4)
    out, g = np.asarray(out), np.asarray(g)
    assert np.all(out[0, :3] == 0.0) and out[1, 5] == 0.0
    assert np.all(g[0, :3] == 0.0) and np.all(g[1, 5] == 0.0)


def test_sequence_logprobs_sum_and_mean_match_numpy():
    rng = np.random.default_rng(5)
    logps = rng.normal(size=(3, 7)).astype(np.float32)
    mask = rng.random((3, 7)) < 0.6
    mask[2] = False
    total, mean = jax.jit(lambda lp, m: (sequence_logprobs(lp, m), sequence_logprobs(lp, m, average=True)))(logps, mask)
    ref_total = (logps.astype(np.float64) * mask).sum(-1)
    ref_mean = ref_total / np.maximum(mask.sum(-1), 1)
    np.testing.assert_allclose(total, ref_total, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
    assert np.asarray(mean)[2] == 0.0


def test_segment_logprobs_sums_each_packed_example():
    rng = np.random.default_rng(6)
    logps = rng.normal(size=(2, 10)).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0, 0], [1, 1, 2, 2, 3, 3, 3, 3, 3, 0]], np.int32)
    mask = (seg > 0) & (rng.random((2, 10)) < 0.8)
    out, out_mean = jax.jit(
        lambda lp, m, s: (segment_logprobs(lp, m, s, 3), segment_logprobs(lp, m, s, 3, average=True))
    )(logps, mask, seg)
    ref = np.zeros((2, 3))
    cnt = np.zeros((2, 3))
    for b in range(2):
        for t in range(10):
            if seg[b, t] and mask[b, t]:
                ref[b, seg[b, t] - 1] += logps[b, t]
                cnt[b, seg[b, t] - 1] += 1
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_mean, ref / np.maximum(cnt, 1), rtol=1e-6, atol=1e-6)
    assert np.asarray(out)[0, 2] == 0.0  # row 0 has no third example


def test_fully_masked_rows_are_finite_with_finite_gradients():
    hidden, head, targets = _inputs(7)
    mask = np.zeros((B, T), bool)
    mask[1, 2:6] = True  # row 0 fully masked
    (val, _), grads = masked_objective_value_and_grads(hidden, head, targets, mask)
    assert np.isfinite(val)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert np.all(np.asarray(grads[0])[0] == 0.0)


def test_neg_inf_logits_are_finite_with_finite_gradients():
    # Positive hidden and a head column of -3e38: its logit overflows to -inf (a masked-out vocab entry).
    rng = np.random.default_rng(8)
    hidden = (rng.random((B, T, D)) + 0.1).astype(np.float32)
    head = rng.normal(size=(D, V)).astype(np.float32)
    head[:, 3] = -3e38
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    targets[targets == 3] = 4
    targets[0, 0] = 3  # the masked position targets the -inf entry
    mask = np.ones((B, T), bool)
    mask[0, 0] = False
    with np.errstate(over="ignore"):
        assert np.all(np.isneginf(hidden @ head[:, 3]))

    (val, lp), grads = masked_objective_value_and_grads(hidden, head, targets, mask)
    assert np.isfinite(val)
    assert all(np.all(np.isfinite(g)) for g in grads)
    # The -inf entry must simply drop out of the softmax: compare against the V-1 other entries.
    logits64 = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    rest = np.delete(logits64, 3, axis=-1)
    lse = rest.max(-1) + np.log(np.exp(rest - rest.max(-1, keepdims=True)).sum(-1))
    ref = np.take_along_axis(logits64, np.asarray(targets)[..., None], -1)[..., 0] - lse
    np.testing.assert_allclose(lp[mask], ref[mask], rtol=1e-6, atol=1e-6)


def test_bf16_large_magnitude_inputs_are_finite():
    rng = np.random.default_rng(9)
    hidden = (rng.normal(size=(B, T, D)) * 1e3).astype(jnp.bfloat16)
    head = rng.normal(size=(D, V)).astype(jnp.bfloat16)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    (val, lp), grads = logps_value_and_grads(hidden, head, targets, np.ones((B, T), np.float32), chunk_size=5)
    assert np.isfinite(float(val)) and np.all(np.isfinite(lp))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden=jnp.zeros((B, T))), "hidden"),
        (dict(lm_head=jnp.zeros((D + 1, V))), "lm_head"),
        (dict(targets=jnp.zeros((B, T + 1), jnp.int32)), "targets"),
        (dict(targets=jnp.zeros((B, T), jnp.float32)), "targets"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_token_logprobs_invalid_arguments_raise(kwargs, match):
    hidden, head, targets = _inputs()
    args = dict(hidden=hidden, lm_head=head, targets=targets, chunk_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        token_logprobs(args["hidden"], args["lm_head"], args["targets"], chunk_size=args["chunk_size"])
