"""Decoder logits against transformers (PyTorch, float32) on tiny random checkpoints of every flavour."""

import numpy as np
import pytest
import torch

from jaxalign.models import load_pretrained

FLAVOURS = ["llama_gqa", "qwen2_tied", "llama3_rope", "llama_linear_rope", "mistral", "llama_bias"]


def _hf_logits(path, ids, mask=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kwargs).logits.numpy()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_logits_match_transformers(tiny_hf_checkpoint, flavour):
    path = tiny_hf_checkpoint(flavour)
    ids = np.random.RandomState(0).randint(0, 320, (2, 100)).astype(np.int32)  # past the llama3 original context
    model, _ = load_pretrained(path)
    diff = np.abs(np.asarray(model(ids)) - _hf_logits(path, ids)).max()
    assert diff <= 1e-4, f"{flavour}: max abs logit diff {diff}"


def test_right_padding_does_not_change_real_tokens(tiny_hf_checkpoint):
    path = tiny_hf_checkpoint("llama_gqa")
    model, _ = load_pretrained(path)
    ids = np.random.RandomState(1).randint(3, 320, (2, 12)).astype(np.int32)
    segments = np.ones_like(ids)
    segments[1, 7:] = 0
    hf = _hf_logits(path, ids, mask=segments)
    ours = np.asarray(model(ids, segment_ids=segments))
    assert np.abs(ours[1, :7] - hf[1, :7]).max() <= 1e-4
    assert np.isfinite(ours).all()


def test_packed_segments_equal_separate_sequences(tiny_hf_checkpoint):
    model, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    rng = np.random.RandomState(2)
    a, b = rng.randint(3, 320, 5), rng.randint(3, 320, 7)
    packed = np.concatenate([a, b])[None].astype(np.int32)
    segments = np.array([[1] * 5 + [2] * 7], np.int32)
    out = np.asarray(model(packed, segment_ids=segments))[0]
    np.testing.assert_allclose(out[:5], np.asarray(model(a[None]))[0], atol=1e-5)
    np.testing.assert_allclose(out[5:], np.asarray(model(b[None]))[0], atol=1e-5)


def test_scalar_head_matches_sequence_classification(tiny_hf_checkpoint):
    from transformers import AutoModelForSequenceClassification

    path = tiny_hf_checkpoint("llama_score")
    model, _ = load_pretrained(path)
    ids = np.random.RandomState(3).randint(3, 320, (3, 9)).astype(np.int32)
    ids[1, 6:] = 0  # right padding with pad_token_id 0
    segments = (ids != 0).astype(np.int32)
    segments[:, 0] = 1
    hf = AutoModelForSequenceClassification.from_pretrained(path, dtype="float32").eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(segments)).logits[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(model(ids, segment_ids=segments)), ref, atol=1e-4)


def test_bfloat16_load_runs_in_bfloat16(tiny_hf_checkpoint):
    model32, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    model16, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"), dtype="bfloat16")
    ids = np.arange(24, dtype=np.int32).reshape(2, 12)
    assert model16.layers.q_proj[...].dtype == np.dtype("bfloat16")
    assert model16.hidden_states(ids).dtype == np.dtype("bfloat16")
    assert np.abs(np.asarray(model16(ids)) - np.asarray(model32(ids))).max() < 0.1


def test_remat_does_not_change_gradients(tiny_hf_checkpoint):
    import jax
    from flax import nnx

    ids = np.arange(16, dtype=np.int32).reshape(2, 8)
    grads = []
    for remat in ("none", "full", "dots"):
        model, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"), remat=remat, tokenizer=False)
        graphdef, state = nnx.split(model)

        def loss(state):
            return nnx.merge(graphdef, state)(ids).mean()

        grads.append(jax.tree.leaves(jax.grad(loss)(state)))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
