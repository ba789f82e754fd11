"""jaxalign.ops.vocab_parallel: batch- and vocab-sharded log-probs equal single-device ones (8 CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxalign.losses import dpo_loss
from jaxalign.ops import sequence_logprobs, sharded_token_logprobs, token_logprobs, vocab_parallel_token_logprobs

B, T, D = 8, 9, 8


def _mesh(shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))


def _inputs(vocab, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, T, D)).astype(np.float32)
    head = (rng.normal(size=(D, vocab)) / np.sqrt(D)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(B, T)).astype(np.int32)
    mask = rng.random((B, T)) < 0.8
    return hidden, head, targets, mask


def _objective(logps_fn, targets, mask):
    """Token log-probs plus a DPO loss on them (pairs: rows 0..3 chosen, 4..7 rejected; reference = 0.9·policy)."""

    def f(hidden, head):
        lp = logps_fn(hidden, head, targets)
        seq = sequence_logprobs(lp, mask)
        loss, _ = dpo_loss(seq[:4], seq[4:], 0.9 * jax.lax.stop_gradient(seq[:4]), 0.9 * jax.lax.stop_gradient(seq[4:]))
        return loss, lp

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


@pytest.fixture(scope="module")
def single_device():
    """Reference results without any mesh, for vocab 32 and 30."""
    out = {}
    for vocab in (32, 30):
        hidden, head, targets, mask = _inputs(vocab)
        out[vocab] = _objective(lambda h, w, t: token_logprobs(h, w, t, chunk_size=4), targets, mask)(hidden, head)
    return out


def _assert_same(got, want):
    (loss, lp), grads = got
    (ref_loss, ref_lp), ref_grads = want
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-7)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "mesh_shape, vocab",
    [
        ((4, 2, 1), 32),  # batch over data x fsdp, no vocab split
        ((2, 1, 4), 30),  # batch over data, vocab over tensor; 30 does not divide 4: padded and masked
    ],
)
def test_sharded_token_logprobs_match_single_device(mesh_shape, vocab, single_device):
    mesh = _mesh(mesh_shape)
    hidden, head, targets, mask = _inputs(vocab)
    fn = lambda h, w, t: sharded_token_logprobs(h, w, t, mesh, chunk_size=4)  # noqa: E731
    _assert_same(_objective(fn, targets, mask)(hidden, head), single_device[vocab])


def test_vocab_parallel_inside_user_shard_map(single_device):
    """The inner op composes with a caller's own shard_map (batch over data x fsdp, vocab over tensor)."""
    mesh = _mesh((1, 2, 4))
    hidden, head, targets, mask = _inputs(32)
    batch = ("data", "fsdp")

    def fn(h, w, t):
        inner = lambda h, w, t: vocab_parallel_token_logprobs(h, w, t, axis_name="tensor", chunk_size=5)  # noqa: E731
        return jax.shard_map(
            inner,
            mesh=mesh,
            in_specs=(P(batch, None, None), P(None, "tensor"), P(batch, None)),
            out_specs=P(batch, None),
        )(h, w, t)

    _assert_same(_objective(fn, targets, mask)(hidden, head), single_device[32])


def test_sharded_token_logprobs_rejects_indivisible_batch():
    mesh = _mesh((4, 2, 1))
    hidden, head, targets, _ = _inputs(32)
    with pytest.raises(ValueError, match="hidden has batch 6"):
        sharded_token_logprobs(hidden[:6], head, targets[:6], mesh)
