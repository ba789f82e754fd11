"""What the mixture-of-experts families show beyond `family_checks` (used by their test files):
the routing (which experts, which weights) and the load-balancing loss equal transformers' on the
same input; transformers' fused expert layout loads to the same parameters; a train step with the
experts sharded over 8 CPU devices equals the same step on 1 device."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from jaxalign.models import load_model
from jaxalign.models.layers.moe import route
from tests.models.family_checks import dpo_batch, hf_model, random_ids


def check_routing_and_aux_loss_match_transformers(folder: Path, length: int):
    """Hook every HF router: our router logits of the same layer input, our top-k experts (exactly)
    and weights (1e-6) equal HF's; our summed load-balancing loss equals HF's `aux_loss` with a
    right-padded row (padding excluded from the statistics)."""
    model = load_model(folder)
    c = model.config
    ids = random_ids(c.vocab_size, 2, length, seed=4)
    mask = np.ones_like(ids)
    mask[1, length - 6:] = 0
    hf = hf_model(folder)
    seen = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, args, out: seen.append((args[0], *out)))
             for layer in hf.model.layers]
    with torch.no_grad():
        out = hf(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(), output_router_logits=True)
    for h in hooks:
        h.remove()
    assert len(seen) == c.num_layers
    routers = np.asarray(model.layers.router[...])
    for i, (h, logits, weights, index) in enumerate(seen):
        ours = jnp.asarray(h.numpy()) @ routers[i]
        np.testing.assert_allclose(np.asarray(ours), logits.numpy(), atol=1e-5, rtol=0, err_msg=f"layer {i} logits")
        _, w, idx = route(ours, c.num_experts_per_tok, c.norm_topk_prob)
        np.testing.assert_array_equal(np.asarray(idx), index.numpy(), err_msg=f"layer {i} experts")
        np.testing.assert_allclose(np.asarray(w), weights.numpy(), atol=1e-6, rtol=0, err_msg=f"layer {i} weights")
    _, aux = model.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32), with_aux=True)
    np.testing.assert_allclose(float(aux), float(out.aux_loss), rtol=1e-5)
    _, unmasked = model.hidden_states(jnp.asarray(ids), with_aux=True)
    assert abs(float(unmasked) - float(aux)) > 1e-4, "padding did not change the load-balancing statistics"


def check_fused_layout_loads(folder: Path, out: Path):
    """transformers' fused layout (`save_original_format=False`: `mlp.experts.gate_up_proj` etc.)
    loads to exactly the parameters of the per-expert files."""
    hf_model(folder).save_pretrained(str(out), save_original_format=False)
    names = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and not any(".experts.0." in n for n in names)
    want = nnx.state(load_model(folder), nnx.Param)
    got = nnx.state(load_model(out), nnx.Param)
    for (path, w), (_, g) in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves_with_path(got)):
        assert np.array_equal(np.asarray(w), np.asarray(g)), jax.tree_util.keystr(path)


def check_sharded_train_step_equals_one_device(folder: Path, router_aux_weight: float = 0.05):
    """One DPO step (+ router aux loss) with the experts sharded over `fsdp` = 4 of a (data 2, fsdp 4)
    mesh and the batch over both axes equals the unsharded step within 1e-5 (loss, aux loss, gradient
    norm, every updated parameter). Adam's first update is lr g / (|g| + eps): with the default eps it
    is lr sign(g), which turns summation-order noise on a near-zero gradient into a full step; eps=1
    (|g| << 1) makes it a plain gradient step, so the parameters compare the gradients."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxalign.config.schema import LossConfig, OptimizerConfig
    from jaxalign.parallel.mesh import make_mesh
    from jaxalign.objectives import ObjectiveContext, get_objective
    from jaxalign.train.optimizer import build_optimizer
    from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

    mesh = make_mesh(data=2, fsdp=4, tensor=1)

    def step(mesh):
        model = load_model(folder, mesh=mesh)
        if mesh is not None:
            assert model.layers.expert_gate[...].sharding.spec[1] == "fsdp"
        graphdef, params = nnx.split(model)
        frozen = {"reference": jax.tree.map(jnp.copy, params)}
        cfg = LossConfig(name="dpo", router_aux_weight=router_aux_weight)
        loss_fn = make_loss_fn(get_objective("dpo"), ObjectiveContext(cfg, mesh=mesh),
                               GraphDefs(policy=graphdef, reference=graphdef))
        tx, schedule = build_optimizer(OptimizerConfig(lr=1.0, eps=1.0, warmup_steps=0, schedule="constant"), 10, params)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "rng": jax.random.key_data(jax.random.key(0))}
        batch = dpo_batch(model.config.vocab_size, pairs=8, seed=5)
        if mesh is None:
            state, metrics = make_train_step(loss_fn, tx, schedule)(state, frozen, batch)
        else:
            batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
            replicated = NamedSharding(mesh, PartitionSpec())
            state = jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
                                 state)
            with jax.set_mesh(mesh):
                train = make_train_step(loss_fn, tx, schedule, state_shardings=jax.tree.map(lambda x: x.sharding, state))
                state, metrics = train(state, frozen, batch)
        return jax.tree.map(np.asarray, (state["params"], metrics))

    want_params, want = step(None)
    start = jax.tree.map(np.asarray, nnx.state(load_model(folder), nnx.Param))
    assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(want_params), jax.tree.leaves(start))) > 5e-4
    got_params, got = step(mesh)
    assert want["router_aux_loss"] > 0  # policy == reference: DPO is ln 2, the rest is the router term
    np.testing.assert_allclose(want["loss"], np.log(2) + router_aux_weight * want["router_aux_loss"], rtol=0, atol=1e-6)
    for key in ("loss", "router_aux_loss", "grad_norm"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for (path, w), (_, g) in zip(jax.tree_util.tree_leaves_with_path(want_params),
                                 jax.tree_util.tree_leaves_with_path(got_params)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path))
