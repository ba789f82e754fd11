"""LoRA adapters (jaxalign.models.lora): a fresh adapter changes nothing, the disabled model is the base
model exactly, merging equals the adapted forward and exports a folder transformers reads with the same
logits, adapters shard like the base weights on every family (a mixture's per-expert pairs included),
and bad settings fail by their key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxalign.config.presets import preset_hf_config
from jaxalign.models import ModelConfig, families, init_model, load_model, save_pretrained
from jaxalign.models.config import ConfigError
from jaxalign.models.lora import (ALL_LINEAR, LoraParam, LoraSpec, add_lora, adapters_disabled, lora_dropout,
                                  merge_lora, resolve_targets, split_trainable)
from jaxalign.models.verify import transformers_logits_float64
from jaxalign.parallel.mesh import make_mesh
from tests.models.family_checks import compiled_forward
from tests.models.test_all_families import FAMILIES, tiny_config

IDS = (np.arange(2 * 12).reshape(2, 12) * 7) % 60
MOE = ["mixtral", "qwen3_moe"]
EXPERTS = ("expert_gate", "expert_up", "expert_down")


def _perturb(model, seed: int = 1, scale: float = 0.2):
    """Give every adapter's B a non-zero value (a trained adapter), in place."""
    adapters = model.lora if hasattr(model, "lora") else model.decoder.lora
    for i, name in enumerate(adapters.targets):
        var = getattr(adapters, f"{name}_b")
        noise = scale * jax.random.normal(jax.random.key(seed + i), var.shape, jnp.float32)
        var.set_value(jax.device_put(var[...] + noise, var[...].sharding))


def _tiny(seed=0, **kw):
    return init_model(ModelConfig.from_hf_dict(preset_hf_config("tiny"), source="tiny"), seed=seed, **kw)


def test_fresh_adapters_leave_logits_exactly_unchanged():
    model = _tiny()
    base = np.asarray(compiled_forward(model)(IDS))
    add_lora(model, LoraSpec(rank=4, alpha=8.0, targets=(ALL_LINEAR,)))
    np.testing.assert_array_equal(np.asarray(compiled_forward(model)(IDS)), base)
    _perturb(model)
    assert np.abs(np.asarray(compiled_forward(model)(IDS)) - base).max() > 1e-3  # the adapters are really on the forward


def test_disabled_adapters_are_the_base_model_exactly_and_share_its_arrays():
    model = _tiny()
    base = np.asarray(compiled_forward(model)(IDS))
    add_lora(model, LoraSpec(rank=2, targets=("q_proj", "down_proj")))
    _perturb(model)
    ref = adapters_disabled(model)
    np.testing.assert_array_equal(np.asarray(compiled_forward(ref)(IDS)), base)
    assert ref.layers.q_proj[...] is model.layers.q_proj[...]  # no second copy of the weights
    assert model.lora.enabled and np.abs(np.asarray(compiled_forward(model)(IDS)) - base).max() > 1e-3


def test_only_targets_are_adapted_and_trainable_split_holds_only_adapters():
    model = _tiny()
    add_lora(model, LoraSpec(rank=3, targets=("v_proj", "up_proj")))
    _, trainable, frozen = split_trainable(model)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
    assert names == {"lora.v_proj_a", "lora.v_proj_b", "lora.up_proj_a", "lora.up_proj_b"}
    assert all(not isinstance(v, LoraParam) for _, v in nnx.to_flat_state(frozen))
    assert model.lora.v_proj_a.shape == (2, 64, 3) and model.lora.up_proj_b.shape == (2, 3, 96)
    np.testing.assert_array_equal(np.asarray(model.lora.up_proj_b[...]), 0.0)


def test_dropout_only_inside_its_context_and_seeded():
    model = _tiny()
    add_lora(model, LoraSpec(rank=4, dropout=0.5, targets=(ALL_LINEAR,)))
    _perturb(model)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, key):
        with lora_dropout(key):
            return nnx.merge(graphdef, state)(IDS)

    a, b, c = (np.asarray(forward(state, jax.random.key(s))) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    plain = np.asarray(compiled_forward(model)(IDS))
    assert np.abs(a - c).max() > 1e-4 and np.abs(a - plain).max() > 1e-4


def test_merge_equals_the_adapted_forward_and_leaves_the_model_as_it_was():
    model = _tiny()
    add_lora(model, LoraSpec(rank=4, alpha=16.0, targets=(ALL_LINEAR,)))
    _perturb(model)
    before = np.asarray(model.layers.q_proj[...])
    adapted = np.asarray(compiled_forward(model)(IDS))
    merged = merge_lora(model)
    assert merged.lora is None and model.lora is not None
    np.testing.assert_array_equal(np.asarray(model.layers.q_proj[...]), before)
    np.testing.assert_allclose(np.asarray(compiled_forward(merged)(IDS)), adapted, atol=2e-5)


@pytest.mark.parametrize("flavour", ["llama_gqa", "qwen2_tied", "llama_bias"])
def test_merged_export_loads_in_transformers_with_the_merged_logits(flavour, tiny_hf_checkpoint, tmp_path, byte_tokenizer):
    model = load_model(tiny_hf_checkpoint(flavour))
    add_lora(model, LoraSpec(rank=8, alpha=16.0, targets=(ALL_LINEAR,)))
    _perturb(model, scale=0.5)
    merged = merge_lora(model)
    out = save_pretrained(merged, byte_tokenizer, tmp_path / "hf")
    assert not [p for p in out.iterdir() if "lora" in p.name]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(IDS)).logits.numpy()
    ours = np.asarray(compiled_forward(merged)(IDS))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    assert np.abs(ours - np.asarray(compiled_forward(adapters_disabled(model))(IDS))).max() > 1e-2  # the adapters were merged


def test_merged_export_is_the_merged_weights_and_equals_transformers_in_float64(tiny_hf_checkpoint, tmp_path,
                                                                                 byte_tokenizer):
    """The export apart from float32 rounding (which alone puts JAX and transformers ~1e-4 apart on SmolLM2):
    read back, it holds the merged weights bit for bit; transformers reading it with every op in float64
    equals the merged model run in float64 to 1e-9, and the adapted float32 model within float32 noise."""
    model = load_model(tiny_hf_checkpoint("llama_gqa"))
    add_lora(model, LoraSpec(rank=8, alpha=16.0, targets=(ALL_LINEAR,)))
    _perturb(model, scale=0.5)
    adapted = np.asarray(compiled_forward(model)(IDS))
    merged = merge_lora(model)
    out = save_pretrained(merged, byte_tokenizer, tmp_path / "hf")
    written = dict(nnx.to_flat_state(nnx.state(load_model(out), nnx.Param)))
    expected = dict(nnx.to_flat_state(nnx.state(merged, nnx.Param)))
    assert written.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(written[path][...]), np.asarray(value[...]), err_msg=str(path))
    theirs = transformers_logits_float64(out, IDS)
    with jax.enable_x64(True):
        ours = np.asarray(compiled_forward(load_model(out, dtype=jnp.float64))(IDS))
    assert ours.dtype == theirs.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(theirs, adapted, rtol=0, atol=1e-5)  # the adapters, merged (unmerged: > 1e-2 off)


def _spec(value) -> tuple:
    """`value`'s partition spec, one entry per axis."""
    spec = tuple(value.sharding.spec)
    return spec + (None,) * (value.ndim - len(spec))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_adapters_shard_like_their_base_weights_on_a_3d_mesh(model_type):
    config = tiny_config(families()[model_type])
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = add_lora(init_model(config, mesh=mesh), LoraSpec(rank=4, targets=(ALL_LINEAR,)), mesh=mesh)
    targets = model.lora.targets
    experts = [t for t in targets if t in EXPERTS]
    assert targets and all(t.endswith("_proj") for t in targets if t not in experts)
    assert bool(experts) == (model_type in MOE)  # all-linear takes a mixture's experts
    for name in targets:
        w = _spec(getattr(model.layers, name)[...])  # [L, (E,) in, out]
        a = _spec(getattr(model.lora, f"{name}_a")[...])  # [L, (E,) in, r]
        b = _spec(getattr(model.lora, f"{name}_b")[...])  # [L, (E,) r, out]
        lead = w[1:-2]  # an expert stack's expert axis
        assert a[1:] == (*lead, w[-2], None), (model_type, name, a, w)  # expert and input axes follow, rank replicated
        assert b[1:] == (*lead, None, w[-1]), (model_type, name, b, w)  # expert and output axes follow
        assert any(x is not None for x in w[1:])  # the base weight really is sharded here
        assert name not in experts or w[1] == "fsdp"  # the experts are split over devices


@pytest.mark.parametrize("model_type", ["gemma3_text", "phi3", "mixtral"])  # q/k norms + windows, split fused, MoE
def test_other_families_fresh_adapters_are_a_no_op_and_merge_equals_the_adapted_forward(model_type):
    config = tiny_config(families()[model_type])
    model = init_model(config)
    ids = IDS % config.vocab_size
    base = np.asarray(compiled_forward(model)(ids))
    add_lora(model, LoraSpec(rank=4, targets=(ALL_LINEAR,)))
    np.testing.assert_array_equal(np.asarray(compiled_forward(model)(ids)), base)
    _perturb(model)
    adapted = np.asarray(compiled_forward(model)(ids))
    assert np.abs(adapted - base).max() > 1e-3
    np.testing.assert_allclose(np.asarray(compiled_forward(merge_lora(model))(ids)), adapted, atol=5e-5)


@pytest.mark.parametrize("model_type", MOE)
def test_expert_adapters_fresh_are_a_no_op_disabled_are_the_base_and_adapted_equals_merged_weights(model_type):
    """One adapter pair per expert (a `[L,E,in,r]`, b `[L,E,r,out]`): fresh, the logits are the base's
    exactly; disabled, too; with non-zero b, the adapted forward equals the forward of weights
    `w + (alpha/r)·a·b` per layer and expert (computed here in NumPy)."""
    config = tiny_config(families()[model_type])
    model = init_model(config)
    ids = IDS % config.vocab_size
    base = np.asarray(compiled_forward(model)(ids))
    add_lora(model, LoraSpec(rank=4, alpha=8.0, targets=EXPERTS))
    assert model.lora.targets == EXPERTS
    L, E, F, D = model.layers.expert_down.shape
    assert model.lora.expert_down_a.shape == (L, E, F, 4) and model.lora.expert_down_b.shape == (L, E, 4, D)
    np.testing.assert_array_equal(np.asarray(compiled_forward(model)(ids)), base)
    _perturb(model)
    adapted = np.asarray(compiled_forward(model)(ids))
    assert np.abs(adapted - base).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(compiled_forward(adapters_disabled(model))(ids)), base)
    merged = merge_lora(model)
    for name in EXPERTS:
        a, b = (np.asarray(getattr(model.lora, f"{name}_{s}")[...]) for s in "ab")
        want = np.asarray(getattr(model.layers, name)[...]) + (8.0 / 4) * np.einsum("ledr,lerf->ledf", a, b)
        np.testing.assert_allclose(np.asarray(getattr(merged.layers, name)[...]), want, rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.asarray(compiled_forward(merged)(ids)), adapted, atol=5e-5)


def test_all_linear_takes_a_mixtures_experts_not_its_router_and_unknown_names_fail_by_key():
    for model_type in MOE:
        config = tiny_config(families()[model_type])
        assert resolve_targets(config, ALL_LINEAR) == ("q_proj", "k_proj", "v_proj", "o_proj", *EXPERTS)
        assert resolve_targets(config, ["expert_down", "router", "q_proj"]) == ("q_proj", "router", "expert_down")
        message = f"model.lora.targets: {model_type} has no projection 'experts'; choose from .*expert_up"
        with pytest.raises(ConfigError, match=message) as err:
            resolve_targets(config, ["q_proj", "experts"])
        assert "\n" not in str(err.value)
    dense = ModelConfig.from_hf_dict(preset_hf_config("tiny"), source="tiny")
    with pytest.raises(ConfigError, match="model.lora.targets: llama has no projection 'expert_up'"):
        resolve_targets(dense, ["expert_up"])


def test_bad_rank_alpha_dropout_and_targets_fail_by_key():
    config = ModelConfig.from_hf_dict(preset_hf_config("tiny"), source="tiny")
    cases = [(LoraSpec(rank=-1), "model.lora.rank"), (LoraSpec(rank=4, alpha=0.0), "model.lora.alpha"),
             (LoraSpec(rank=4, dropout=1.0), "model.lora.dropout"),
             (LoraSpec(rank=4, targets=("qproj",)), "model.lora.targets: llama has no projection 'qproj'"),
             (LoraSpec(rank=4, targets=("attn_norm",)), "model.lora.targets"),
             (LoraSpec(rank=4, targets=()), "model.lora.targets is empty")]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            add_lora(init_model(config), spec)
        assert "\n" not in str(err.value)
    assert resolve_targets(config, ["down_proj", "q_proj"]) == ("q_proj", "down_proj")
