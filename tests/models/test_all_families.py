"""Properties every registered family must have, checked on a tiny config of each: the declared
sharding plan is what lands on a (data, fsdp, tensor) mesh, each device holds its share of the
bytes, and the scalar head (reward / difference models) matches transformers'
`*ForSequenceClassification`, saved and reloaded in the family's own format."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxalign.models import ModelConfig, families, init_model, load_model, save_pretrained
from jaxalign.models.layers.params import SHARDING_PLAN
from jaxalign.parallel.mesh import make_mesh
from jaxalign.parallel.sharding import partition_spec

# Small enough to build in a second, every sharded dimension divisible by 2.
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts=4,
            num_experts_per_tok=2, max_position_embeddings=64, sliding_window=4, tie_word_embeddings=False,
            pad_token_id=0)


def tiny_hf_config(family):
    """A transformers config of `family` at the TINY shape (HF fills the family's own defaults)."""
    cfg = transformers.AutoConfig.for_model(family.model_type, **TINY)
    return cfg


def tiny_config(family) -> ModelConfig:
    hf = tiny_hf_config(family).to_dict()
    hf["architectures"] = [family.causal_lm]
    return ModelConfig.from_hf_dict(hf, source=f"tiny {family.model_type}")


FAMILIES = sorted(families())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_parameter_follows_the_declared_plan_on_a_3d_mesh(model_type):
    config = tiny_config(families()[model_type])
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = init_model(config, mesh=mesh)
    from flax import nnx

    plan = set(SHARDING_PLAN.values())
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = tuple(variable.get_metadata().get("out_sharding"))
        value = variable[...]
        per_layer = "layers" in map(str, path)
        kind = names[1:] if per_layer else names
        assert kind in plan, f"{model_type} {path}: partition names {names} are not a declared kind"
        want = partition_spec(names, value.shape, mesh)
        assert value.sharding.spec == want, (path, value.sharding.spec, want)
        # no silent replication: every named axis really shards its dimension
        for name, axis in zip(names, want):
            assert (name is None) == (axis is None), f"{model_type} {path}: {name} dropped for shape {value.shape}"
        shards = math.prod(mesh.shape[n] for n in names if n is not None)
        on_device0 = sum(s.data.nbytes for s in value.addressable_shards if s.device == jax.devices()[0])
        assert on_device0 == value.nbytes // shards, (path, on_device0, value.nbytes, shards)


@pytest.mark.parametrize("model_type", [m for m in FAMILIES if families()[m].sequence_classification])
def test_scalar_head_matches_transformers_and_round_trips(model_type, tmp_path):
    family = families()[model_type]
    cfg = tiny_hf_config(family)
    cfg.num_labels = 1
    torch.manual_seed(0)
    hf = getattr(transformers, family.sequence_classification)(cfg).float().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "hf"))
    model = load_model(tmp_path / "hf")
    ids = np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 9)).astype(np.int32)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids).long()).logits[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), want, atol=1e-4)
    save_pretrained(model, None, tmp_path / "out")
    again = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).float().eval()
    assert type(again).__name__ == family.sequence_classification
    # the original reloaded the same way: from_pretrained picks MoE experts kernels (grouped_mm) whose
    # rounding differs from a directly built model's eager loop
    original = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).float().eval()
    with torch.no_grad():
        np.testing.assert_array_equal(again(torch.from_numpy(ids).long()).logits[:, 0].numpy(),
                                      original(torch.from_numpy(ids).long()).logits[:, 0].numpy())
