"""jaxalign.ops.masked_token_logprobs (LM head only at the scored positions) and its use in sequence_logps.

Values and gradients (w.r.t. hidden and head) must equal the naive full-logits computation, for every
mask shape (empty rows, full rows, packed rows, nothing scored at all), chunk size, row grouping and
backward mode (saved or recomputed logits).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.ops import masked_token_logprobs, segment_logprobs, token_logprobs

B, T, D, V = 4, 11, 8, 13


def _inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, T, D)).astype(dtype)
    head = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(dtype)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    cot = rng.normal(size=(B, T)).astype(np.float32)
    return hidden, head, targets, cot


def _masks():
    rng = np.random.default_rng(1)
    random = rng.random((B, T)) < 0.5
    mixed = random.copy()
    mixed[0] = False  # an empty row
    mixed[1] = True  # a full row
    packed = np.zeros((B, T), bool)  # two examples per row, prompt then response, padding at the end
    for b in range(B):
        packed[b, 2:5] = packed[b, 7:9 + b % 2] = True
    prefix = np.zeros((B, T), bool)
    prefix[:, 6:] = True  # the DPO layout: prompt off, response on
    return {"random": random, "mixed": mixed, "packed": packed, "prefix": prefix,
            "none": np.zeros((B, T), bool), "all": np.ones((B, T), bool)}


MASKS = _masks()


def naive(hidden, head, targets, mask, cot):
    """float64 full-logits log-probs where ``mask``, and the grads of Σ cot·logp w.r.t. (hidden, head)."""
    h, w = np.asarray(hidden, np.float64), np.asarray(head, np.float64)
    logits = h @ w
    m = logits.max(-1, keepdims=True)
    probs = np.exp(logits - m)
    probs /= probs.sum(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    logp = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - lse
    on = np.asarray(mask) != 0
    c = np.where(on, cot, 0.0)[..., None]
    dlogits = c * (np.eye(w.shape[1])[targets] - probs)
    return np.where(on, logp, 0.0), dlogits @ w.T, np.einsum("btd,btv->dv", h, dlogits)


@functools.partial(jax.jit, static_argnames=("chunk_size", "groups", "save_logits", "logit_soft_cap"))
def masked_value_and_grads(hidden, head, targets, mask, cot, chunk_size, groups=1, save_logits=False,
                           logit_soft_cap=None):
    def f(h, w):
        out = masked_token_logprobs(h, w, targets, mask, chunk_size=chunk_size, groups=groups,
                                    save_logits=save_logits, logit_soft_cap=logit_soft_cap)
        return jnp.sum(cot * out), out

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(hidden, head)


def _check(got, want, rtol=1e-5, atol=1e-5):
    (_, out), (g_hidden, g_head) = got
    logp, d_hidden, d_head = want
    assert out.shape == (B, T) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, logp, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g_hidden, d_hidden, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g_head, d_head, rtol=rtol, atol=atol)


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("chunk_size,groups,save_logits", [(1, 1, False), (5, 1, True), (7, 2, False),
                                                          (16, 4, True), (1000, 1, False), (3, 2, True)])
def test_matches_naive_values_and_grads(mask, chunk_size, groups, save_logits):
    hidden, head, targets, cot = _inputs()
    m = MASKS[mask]
    got = masked_value_and_grads(hidden, head, targets, m, cot, chunk_size=chunk_size, groups=groups,
                                 save_logits=save_logits)
    _check(got, naive(hidden, head, targets, m, cot))
    out = np.asarray(got[0][1])
    assert np.all(out[~m] == 0.0)
    assert np.all(np.asarray(got[1][0])[~m] == 0.0)  # unscored positions get no gradient


def test_equals_token_logprobs_at_scored_positions():
    hidden, head, targets, cot = _inputs(2)
    m = MASKS["mixed"]
    want = jax.jit(lambda h, w: token_logprobs(h, w, targets, chunk_size=4))(hidden, head)
    (_, out), _ = masked_value_and_grads(hidden, head, targets, m, cot, chunk_size=3)
    np.testing.assert_allclose(np.asarray(out)[m], np.asarray(want)[m], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("save_logits", [False, True])
def test_soft_cap_matches_naive(save_logits):
    hidden, head, targets, cot = _inputs(3)
    hidden = hidden * 10
    m, cap = MASKS["random"], 5.0

    def f(h, w):
        logits = cap * jnp.tanh(jnp.einsum("btd,dv->btv", h, w) / cap)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        lp = jnp.where(m, lp, 0.0)
        return jnp.sum(cot * lp), lp

    (_, want), want_grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(hidden, head)
    (_, out), grads = masked_value_and_grads(hidden, head, targets, m, cot, chunk_size=4,
                                             save_logits=save_logits, logit_soft_cap=cap)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_out_of_range_targets_and_float_mask():
    """Targets outside [0, V) give exactly 0 and no gradient; a float mask selects by != 0 (weights unapplied)."""
    hidden, head, targets, cot = _inputs(4)
    targets[0, :3] = -100
    targets[1, 5] = V
    weights = np.where(MASKS["all"], 0.5, 0.0).astype(np.float32)
    weights[2, :4] = 0.0
    (_, out), (g_hidden, _) = masked_value_and_grads(hidden, head, targets, weights, cot, chunk_size=6)
    valid = (targets >= 0) & (targets < V)
    want, want_dh, _ = naive(hidden, head, np.where(valid, targets, 0), (weights != 0) & valid, cot)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_hidden, want_dh, rtol=1e-5, atol=1e-5)
    out, g_hidden = np.asarray(out), np.asarray(g_hidden)
    assert np.all(out[0, :3] == 0.0) and out[1, 5] == 0.0 and np.all(out[2, :4] == 0.0)
    assert np.all(g_hidden[0, :3] == 0.0) and np.all(g_hidden[1, 5] == 0.0)


@pytest.mark.parametrize("save_logits", [False, True])
def test_nothing_scored_and_nonfinite_hidden_off_mask_stay_finite(save_logits):
    """Fully masked rows (and a fully masked batch) give zeros and zero gradients, never NaN, even
    when unscored positions hold non-finite hidden states that land in a computed chunk."""
    hidden, head, targets, cot = _inputs(5)
    m = MASKS["mixed"].copy()
    m[2] = False
    hidden[2, 3] = np.nan
    hidden[3][~m[3]] = np.inf
    for mask in (m, MASKS["none"]):
        (val, out), grads = masked_value_and_grads(hidden, head, targets, mask, cot, chunk_size=4,
                                                   save_logits=save_logits)
        assert np.isfinite(float(val)) and np.all(np.isfinite(out))
        assert all(np.all(np.isfinite(g)) for g in grads)
        assert np.all(np.asarray(out)[~mask] == 0.0) and np.all(np.asarray(grads[0])[~mask] == 0.0)
    assert np.all(np.asarray(grads[1]) == 0.0)


def test_bf16_inputs_accumulate_in_float32():
    hidden, head, targets, cot = _inputs(6, jnp.bfloat16)
    m = MASKS["random"]
    (_, out), (g_hidden, g_head) = masked_value_and_grads(hidden, head, targets, m, cot, chunk_size=3)
    assert out.dtype == jnp.float32 and g_hidden.dtype == jnp.bfloat16 and g_head.dtype == jnp.bfloat16
    logp, d_hidden, d_head = naive(hidden.astype(np.float32), head.astype(np.float32), targets, m, cot)
    np.testing.assert_allclose(out, logp, rtol=1e-5, atol=1e-5)
    # dlogits is rounded to bf16 for the bf16 matmuls, as autodiff of a bf16 head does.
    np.testing.assert_allclose(np.asarray(g_hidden, np.float32), d_hidden, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(g_head, np.float32), d_head, rtol=2e-2, atol=2e-2)


def test_rejects_bad_arguments():
    hidden, head, targets, _ = _inputs()
    with pytest.raises(ValueError, match="mask has shape"):
        masked_token_logprobs(hidden, head, targets, np.ones((B, T + 1), bool))
    with pytest.raises(ValueError, match="groups=3"):
        masked_token_logprobs(hidden, head, targets, MASKS["all"], groups=3)


# ------------------------------------------------------------------------ sequence_logps (train path)
TINY = dict(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, model_type="llama")


def _packed_batch(n=4, t=12, seed=0):
    """Rows packing two examples (segment ids 1, 2, then padding 0); loss mask on each response."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], size=(n, t)).astype(np.int32)
    seg = np.zeros((n, t), np.int32)
    loss = np.zeros((n, t), np.int32)
    for r in range(n):
        a, b = 4 + r % 3, 9 + r % 2  # example 1 = [0, a), example 2 = [a, b), padding after
        seg[r, :a], seg[r, a:b] = 1, 2
        loss[r, 2:a], loss[r, a + 2:b] = 1, 1
    loss[0] = 0  # a row with nothing scored
    pos = np.zeros((n, t), np.int32)
    for r in range(n):
        for s in (1, 2):
            idx = np.nonzero(seg[r] == s)[0]
            pos[r, idx] = np.arange(len(idx))
    return ids, pos, seg, loss


@pytest.mark.parametrize("chunk_size", [5, 256])
def test_sequence_logps_equals_full_logits(chunk_size):
    """The scored-positions head gives the values and gradients of a log-softmax over full logits."""
    from jaxalign.models import ModelConfig, init_model
    from jaxalign.ops import segment_logprobs
    from jaxalign.train.forward import Sequences, sequence_logps

    model = init_model(ModelConfig.from_hf_dict(TINY), seed=0)
    graphdef, params = nnx.split(model)
    seqs = Sequences(*map(jnp.asarray, _packed_batch()))
    weights = jnp.array([1.0, -0.5])

    def scored(params):
        out = sequence_logps(nnx.merge(graphdef, params), seqs, 2, chunk_size=chunk_size)
        return jnp.sum(out.logps * weights), (out.logps, out.lengths)

    def dense(params):
        logits = nnx.merge(graphdef, params)(seqs.input_ids, seqs.positions, seqs.segment_ids)[:, :-1]
        tok = jnp.take_along_axis(jax.nn.log_softmax(logits), seqs.input_ids[:, 1:, None], axis=-1)[..., 0]
        logps = segment_logprobs(tok, seqs.loss_mask[:, 1:], seqs.segment_ids[:, 1:], 2)
        return jnp.sum(logps * weights), (logps, None)

    (_, (logps, lengths)), grads = jax.jit(jax.value_and_grad(scored, has_aux=True))(params)
    (_, (want_logps, _)), want_grads = jax.jit(jax.value_and_grad(dense, has_aux=True))(params)
    np.testing.assert_allclose(logps, want_logps, rtol=1e-5, atol=1e-5)
    loss = np.asarray(seqs.loss_mask)[:, 1:]
    seg = np.asarray(seqs.segment_ids)[:, 1:]
    np.testing.assert_array_equal(lengths, [[np.sum(loss[r] * (seg[r] == s)) for s in (1, 2)] for r in range(len(seg))])
    assert np.all(np.asarray(logps)[0] == 0.0)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_sequence_logps_on_a_batch_sharded_mesh_equals_no_mesh():
    """With a (data, fsdp) mesh each batch shard's rows are packed on their own (groups = 4)."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxalign.models import ModelConfig, init_model
    from jaxalign.parallel.mesh import make_mesh
    from jaxalign.train.forward import Sequences, batch_groups, sequence_logps

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert batch_groups(8, mesh) == 4 and batch_groups(6, mesh) == 1 and batch_groups(8, None) == 1
    mesh = make_mesh(data=4, fsdp=2, tensor=1)
    model = init_model(ModelConfig.from_hf_dict(TINY), seed=1)
    graphdef, params = nnx.split(model)
    arrays = _packed_batch(n=8, seed=3)

    def run(params, arrays, mesh):
        def f(params):
            out = sequence_logps(nnx.merge(graphdef, params), Sequences(*arrays), 2, chunk_size=4, mesh=mesh)
            return jnp.sum(out.logps), out.logps

        return jax.value_and_grad(f, has_aux=True)(params)

    want = jax.jit(functools.partial(run, mesh=None))(params, arrays)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    sharded = jax.device_put(tuple(map(jnp.asarray, arrays)), rows)
    got = jax.jit(functools.partial(run, mesh=mesh))(params, sharded)
    np.testing.assert_allclose(got[0][1], want[0][1], rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
