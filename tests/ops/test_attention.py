"""ops.attention: blockwise vs a float64 NumPy reference and vs xla's gradients, decode shapes,
the splash kernel in Pallas interpret mode, cuDNN's segment offsets, dispatch errors, and the
compiled temp memory of blockwise vs xla at T=8192 (compile only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops import attention
from jaxalign.ops._attention_blockwise import blockwise_attention
from jaxalign.ops._attention_cudnn import segment_offsets
from jaxalign.ops._attention_splash import splash_attention
from jaxalign.ops import _attention_splash
from jaxalign.ops.attention import AUTO_BLOCKWISE_MIN_LENGTH, index_ordered, resolve_impl

pytestmark = pytest.mark.optimized_xla  # measures compiled memory

B, T, H, K, D = 2, 37, 4, 2, 8  # T not a multiple of the test blocks (8 queries, 16 keys)
BQ, BK = 8, 16


def _inputs(seed=0, t=T, s=None):
    s = s or t
    kq, kk, kv, kc = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(kq, (B, t, H, D), jnp.float32)
    k = jax.random.normal(kk, (B, s, K, D), jnp.float32)
    v = jax.random.normal(kv, (B, s, K, D), jnp.float32)
    ct = jax.random.normal(kc, (B, t, H, D), jnp.float32)
    return q, k, v, ct


def _packed_ids():
    """Row 0: segments 1, 2 then padding; row 1: segments 1, 3 filling the row."""
    seg = np.zeros((B, T), np.int32)
    seg[0, :10], seg[0, 10:30] = 1, 2
    seg[1, :20], seg[1, 20:] = 1, 3
    return jnp.asarray(seg)


def reference(q, k, v, qseg, kseg, qpos, kpos, *, causal=True, window=None, softcap=None):
    """float64 NumPy attention by the module's masking rule; rows with no key give 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    qseg, kseg, qpos, kpos = (np.asarray(x) for x in (qseg, kseg, qpos, kpos))
    G = q.shape[2] // k.shape[2]
    kr, vr = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, kr) / np.sqrt(q.shape[-1])
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    mask = (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
    dist = qpos[:, :, None] - kpos[:, None, :]
    if causal:
        mask &= dist >= 0
    if window is not None:
        mask &= dist < window
    s = np.where(mask[:, None], s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    denom = p.sum(-1, keepdims=True)
    p = np.where(denom > 0, p / np.where(denom > 0, denom, 1), 0)
    return np.einsum("bhts,bshd->bthd", p, vr)


def _arange(b, n):
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))


CASES = [dict(), dict(sliding_window=5), dict(logit_softcap=2.0, causal=False)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "causal")
def test_blockwise_matches_float64_reference_and_xla_gradients(kw):
    q, k, v, ct = _inputs()
    seg, pos = _packed_ids(), _arange(B, T)
    bw = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, seg, seg, pos, pos, block_q=BQ, block_k=BK, **kw))
    xla = jax.jit(lambda q, k, v: attention(q, k, v, seg, impl="xla", **kw))
    real = np.asarray(seg != 0)[..., None, None]
    want = reference(q, k, v, seg, seg, pos, pos, causal=kw.get("causal", True), window=kw.get("sliding_window"),
                     softcap=kw.get("logit_softcap"))
    np.testing.assert_allclose(np.asarray(bw(q, k, v)) * real, want * real, atol=1e-5, rtol=0)
    # padding queries' outputs are ignored by callers, so their cotangent is 0
    ct = ct * real
    g_bw = jax.grad(lambda *a: jnp.sum(bw(*a) * ct), argnums=(0, 1, 2))(q, k, v)
    g_xla = jax.grad(lambda *a: jnp.sum(xla(*a) * ct), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g_bw, g_xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=0, err_msg=f"d{name}")


def test_public_entry_blockwise_equals_xla_with_default_ids():
    q, k, v, _ = _inputs(1)
    got = attention(q, k, v, impl="blockwise")
    np.testing.assert_allclose(np.asarray(got), np.asarray(attention(q, k, v, impl="xla")), atol=1e-5)


def test_decode_shapes_single_query_against_a_cache():
    """T=1 against a 40-slot cache of which 23 are filled (unfilled slots: segment 0), explicit positions."""
    S, filled = 40, 23
    q, k, v, _ = _inputs(2, t=1, s=S)
    kseg = jnp.broadcast_to((jnp.arange(S) < filled).astype(jnp.int32), (B, S))
    qpos, kpos = jnp.full((B, 1), filled - 1, jnp.int32), _arange(B, S)
    qseg = jnp.ones((B, 1), jnp.int32)
    for kw in (dict(), dict(sliding_window=6)):
        run = jax.jit(lambda q, k, v: attention(q, k, v, qseg, kv_segment_ids=kseg, q_positions=qpos,  # noqa: B023
                                                kv_positions=kpos, impl="blockwise", **kw))  # noqa: B023
        got = run(q, k, v)
        want = reference(q, k, v, qseg, kseg, qpos, kpos, window=kw.get("sliding_window"))
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_splash_kernel_interpret_mode_matches_xla_values_and_gradients():
    q, k, v, ct = _inputs(3)
    seg = _packed_ids()
    real = np.asarray(seg != 0)[..., None, None]
    ct = ct * real
    kw = dict(sliding_window=5, logit_softcap=2.0)
    sp = jax.jit(lambda q, k, v: splash_attention(q, k, v, seg, interpret=True, **kw))
    xla = jax.jit(lambda q, k, v: attention(q, k, v, seg, impl="xla", **kw))
    np.testing.assert_allclose(np.asarray(sp(q, k, v)) * real, np.asarray(xla(q, k, v)) * real, atol=1e-5)
    g_sp = jax.grad(lambda *a: jnp.sum(sp(*a) * ct), argnums=(0, 1, 2))(q, k, v)
    g_xla = jax.grad(lambda *a: jnp.sum(xla(*a) * ct), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g_sp, g_xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=0, err_msg=f"d{name}")


def test_index_ordered_accepts_packed_rows_only():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0]], jnp.int32)
    restart = jnp.asarray([[0, 1, 2, 0, 1, 0]], jnp.int32)  # the collator's positions
    assert bool(index_ordered(seg, seg, restart, restart))
    assert bool(index_ordered(seg, seg, _arange(1, 6), _arange(1, 6)))
    gap = jnp.asarray([[0, 1, 3, 0, 1, 0]], jnp.int32)
    assert not bool(index_ordered(seg, seg, gap, gap))
    assert not bool(index_ordered(seg, seg.at[0, 4].set(3), restart, restart))


def test_kernel_path_routes_explicit_unordered_positions_to_blockwise(monkeypatch):
    """Forced splash on a (pretend) TPU, the kernel in interpret mode: positions with a gap inside a
    segment and a sliding window, where the kernel's index-based window would be wrong."""
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.setattr(_attention_splash, "splash_attention",
                        lambda *a, **kw: splash_attention(*a, interpret=True, **kw))
    q, k, v, _ = _inputs(4)
    seg = _packed_ids()
    pos = _arange(B, T).at[:, 5:].add(3)  # a gap of 3 inside the first segment of each row
    got = jax.jit(lambda q, k, v: attention(q, k, v, seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos,
                                            impl="splash", sliding_window=4))(q, k, v)
    want = reference(q, k, v, seg, seg, pos, pos, window=4)
    real = np.asarray(seg != 0)[..., None, None]
    np.testing.assert_allclose(np.asarray(got) * real, want * real, atol=1e-5, rtol=0)


def test_cudnn_segment_offsets_are_the_runs_of_equal_ids():
    offsets, lengths = segment_offsets(jnp.asarray([[1, 1, 2, 0], [5, 5, 5, 5]], jnp.int32))
    assert offsets.tolist() == [[0, 2, 3, 4, -1], [0, 4, -1, -1, -1]]
    assert lengths.tolist() == [[2, 1, 1, -1], [4, -1, -1, -1]]


def test_dispatch_auto_and_kernel_fallbacks():
    short, long = jnp.zeros((1, 8, 4, 8)), jnp.zeros((1, AUTO_BLOCKWISE_MIN_LENGTH, 4, 8))
    kw = dict(causal=True, sliding_window=None, logit_softcap=None)
    assert resolve_impl("auto", short, short, backend="cpu", **kw) == "xla"
    assert resolve_impl("auto", long, long, backend="cpu", **kw) == "blockwise"
    assert resolve_impl("auto", short.astype(jnp.bfloat16), short, backend="gpu", **kw) == "cudnn"
    assert resolve_impl("auto", short, short, backend="gpu", **kw) == "blockwise"  # cuDNN: no float32
    assert resolve_impl("auto", short, short, backend="tpu", **kw) == "splash"
    cache = jnp.zeros((1, 32, 4, 8))
    assert resolve_impl("splash", short, cache, backend="tpu", **kw) == "blockwise"  # decode shapes


@pytest.mark.parametrize("impl, message", [("cudnn", "needs a GPU backend"), ("splash", "needs a TPU backend"),
                                           ("flash", "is not one of")])
def test_forced_impl_the_backend_cannot_run_is_a_clear_error(impl, message):
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match=message):
        attention(q, k, v, impl=impl)


def test_blockwise_forward_backward_temp_memory_is_at_most_an_eighth_of_xla_at_8192():
    t, sds = 8192, jax.ShapeDtypeStruct
    args = (sds((1, t, 8, 64), jnp.float32), sds((1, t, 2, 64), jnp.float32), sds((1, t, 2, 64), jnp.float32),
            sds((1, t), jnp.int32))

    def temp(impl):
        loss = lambda q, k, v, seg: attention(q, k, v, seg, impl=impl).sum()  # noqa: E731
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    xla, blockwise = temp("xla"), temp("blockwise")
    assert xla >= 8 * t * t * 4  # the baseline really holds [H, T, T] float32 scores
    assert blockwise * 8 <= xla, (blockwise, xla)
