"""LoRA through the training engine (`model.lora.*`), on the tiny preset: only adapters train and sit in
the optimizer state, the reference is the base model exactly (not loaded, not copied), the export is
merged and read by transformers, resume restores adapters and their optimizer state, every
preference objective (and SFT) trains with it, and a mixture (Mixtral) trains its experts' adapters."""

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxalign.config import load_config
from jaxalign.config.schema import ConfigError
from jaxalign.models.lora import LoraParam, lora_dropout, merge_lora
from jaxalign.train.build import build_model
from jaxalign.train.step import merge_models, policy_model
from jaxalign.train.trainer import Trainer, train
from tests.train.conftest import synthetic_preferences, write_jsonl

LN2 = math.log(2)
LORA = ["model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.1"]


def _config(tiny_dpo_overrides, out, *extra):
    overrides = [*tiny_dpo_overrides, "eval_data=null", "checkpoint.resume=false", "train.steps=3", "train.log_every=1",
                 "optimizer.lr=1e-2", "optimizer.schedule=constant", f"train.output_dir={out}", *LORA, *extra]
    return load_config("configs/tiny_dpo.yaml", overrides)


def _row_logps(model, input_ids, positions, segment_ids, loss_mask):
    """Summed response log-probs per row from the materialised logits."""
    logits = model(input_ids, positions, segment_ids)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return (tok * loss_mask[:, 1:]).sum(-1)


_logps = nnx.jit(_row_logps)
SIDE = ("input_ids", "positions", "segment_ids", "loss_mask")


def _side(model, batch, side="chosen"):
    return np.asarray(_logps(model, *(jnp.asarray(batch[f"{side}_{k}"]) for k in SIDE)))


def _host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, preference_data, byte_tokenizer_dir):
    """A 3-step LoRA DPO run on a (data 2, fsdp 2, tensor 2) mesh with export, and what it looked like before."""
    from tests.train.conftest import tiny_overrides

    out = tmp_path_factory.mktemp("lora") / "run"
    config = _config(tiny_overrides(preference_data, byte_tokenizer_dir, out), out, "mesh.data=2", "mesh.fsdp=2",
                     "mesh.tensor=2", "train.export_hf=true")
    trainer = Trainer(config)
    before = {"base": _host(trainer.frozen["policy"]), "adapters": _host(trainer.state["params"]),
              "adapter_shapes": [x.shape for x in jax.tree.leaves(trainer.state["params"])]}
    result = trainer.run()
    return trainer, before, result


def test_lora_dpo_trains_only_the_adapters(lora_run):
    trainer, before, result = lora_run
    params = nnx.to_flat_state(trainer.state["params"])
    assert params and all(isinstance(v, LoraParam) for _, v in params)
    assert "reference" not in trainer.frozen and trainer.graphdefs.reference_is_base  # no reference model, no copy
    # the optimizer state holds Adam's two moments of the adapters and nothing of the base weights
    moments = [x for x in jax.tree.leaves(trainer.state["opt_state"]) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted(before["adapter_shapes"] * 2)
    assert result.losses[0] == pytest.approx(LN2, abs=1e-6)  # fresh adapters: policy = reference
    assert result.losses[-1] < result.losses[0]
    for old, new in zip(before["base"], _host(trainer.frozen["policy"])):
        np.testing.assert_array_equal(old, new)
    changed = [not np.array_equal(old, new) for old, new in zip(before["adapters"], _host(trainer.state["params"]))]
    assert all(changed), changed


def test_lora_reference_is_the_base_model_exactly_after_training(lora_run):
    trainer, _, _ = lora_run
    batch = trainer.data.collate([(i,) for i in range(8)])
    with jax.set_mesh(trainer.mesh):
        models = merge_models(trainer.graphdefs, trainer.state["params"], trainer.frozen)
        base = build_model(trainer.config.model, key="model", mesh=trainer.mesh, seed=trainer.config.train.seed)
        for side in ("chosen", "rejected"):
            np.testing.assert_array_equal(_side(models.reference, batch, side), _side(base, batch, side))
        assert np.abs(_side(models.policy, batch) - _side(base, batch)).max() > 1e-3  # the policy did move


def test_lora_export_is_merged_and_transformers_reads_it(lora_run):
    trainer, _, result = lora_run
    from safetensors import safe_open

    with safe_open(str(result.export_dir / "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert names and not [n for n in names if "lora" in n]
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir, dtype=torch.float32).eval()
    ids = np.arange(2 * 16).reshape(2, 16) % 300
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    merged = merge_lora(policy_model(trainer.graphdefs.policy, trainer.state["params"], trainer.frozen))
    graphdef, state = nnx.split(merged)
    ours = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids)))(state))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_lora_on_a_mixture_trains_only_adapters_the_experts_included_and_exports_merged(tiny_dpo_overrides, tmp_path,
                                                                                       byte_tokenizer):
    """Mixtral, all-linear (attention and every expert's pair) on an fsdp 2 mesh (the experts split):
    only adapters train and sit in the optimizer state, the expert adapters move, the base weights do
    not, and the merged export reads back in transformers with the merged model's logits."""
    from jaxalign.models import ModelConfig, families, init_model, load_model, save_pretrained
    from tests.models.test_all_families import tiny_hf_config

    hf = {**tiny_hf_config(families()["mixtral"]).to_dict(), "vocab_size": 320, "architectures": ["MixtralForCausalLM"]}
    folder = save_pretrained(init_model(ModelConfig.from_hf_dict(hf, source="tiny mixtral")), byte_tokenizer,
                             tmp_path / "mixtral")
    trainer = Trainer(_config(tiny_dpo_overrides, tmp_path / "run", f"model.path={folder}", "model.preset=",
                              "mesh.data=1", "mesh.fsdp=2", "train.steps=2", "train.export_hf=true"))
    params = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(trainer.state["params"])}
    experts = {f"lora.{n}_{s}" for n in ("expert_gate", "expert_up", "expert_down") for s in "ab"}
    assert experts <= set(params) and all(isinstance(v, LoraParam) for v in params.values())
    assert params["lora.expert_up_b"][...].sharding.spec[1] == "fsdp"  # the expert axis, as the base weight's
    before = {n: np.asarray(v[...]) for n, v in params.items()}
    base_before = _host(trainer.frozen["policy"])
    moments = [x for x in jax.tree.leaves(trainer.state["opt_state"]) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted([v.shape for v in before.values()] * 2)
    result = trainer.run()
    assert result.losses[0] == pytest.approx(LN2, abs=1e-6)  # fresh adapters: policy = reference
    after = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(trainer.state["params"])}
    assert [n for n in before if np.array_equal(before[n], after[n])] == []  # every adapter moved, experts' too
    for old, new in zip(base_before, _host(trainer.frozen["policy"])):
        np.testing.assert_array_equal(old, new)
    ids = np.arange(2 * 16).reshape(2, 16) % 300
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids)).logits.numpy()
    merged = merge_lora(policy_model(trainer.graphdefs.policy, trainer.state["params"], trainer.frozen))
    graphdef, state = nnx.split(merged)
    ours = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids)))(state))
    base = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids)))(nnx.state(load_model(folder))))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    assert np.abs(theirs - base).max() > 1e-4  # the export holds the trained adapters, merged


def test_lora_resume_restores_adapters_and_their_optimizer_state(tiny_dpo_overrides, tmp_path):
    cfg = _config(tiny_dpo_overrides, tmp_path / "r", "mesh.data=1", "train.steps=4", "checkpoint.every=2",
                  "checkpoint.keep=10")
    full = train(cfg).losses
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "4")
    resumed = train(load_config("configs/tiny_dpo.yaml", [*tiny_dpo_overrides, "eval_data=null", "train.steps=4",
                                "train.log_every=1", "optimizer.lr=1e-2", "optimizer.schedule=constant",
                                f"train.output_dir={tmp_path / 'r'}", *LORA, "mesh.data=1", "checkpoint.every=2",
                                "checkpoint.keep=10"]))
    assert resumed.steps == 4 and len(resumed.losses) == 2
    np.testing.assert_allclose(resumed.losses, full[2:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("objective, extra, first", [
    ("kto", ["loss.name=kto", "data.task=kto"], 0.5),  # r = 0 at init: λ(1 − σ(0))
    ("rrhf", ["loss.name=rrhf"], None),
    ("dadpo", ["loss.name=dadpo", "teacher.preset=tiny", "loss.beta_teacher=0"], LN2),  # β₂ = 0: DPO
    ("sft", ["loss.name=sft", "data.task=sft"], None),
])
def test_lora_with_every_objective(objective, extra, first, tiny_dpo_overrides, tmp_path):
    data = []
    if objective == "sft":
        rows = [{"prompt": r["prompt"], "response": r["chosen"]} for r in synthetic_preferences(32, 0)]
        data = [f"data.path={write_jsonl(tmp_path / 'sft.jsonl', rows)}"]
    trainer = Trainer(_config(tiny_dpo_overrides, tmp_path / objective, "mesh.data=1", "train.steps=2", *extra, *data))
    assert all(isinstance(v, LoraParam) for _, v in nnx.to_flat_state(trainer.state["params"]))
    assert "reference" not in trainer.frozen
    result = trainer.run()
    assert all(math.isfinite(x) for x in result.losses) and result.losses[1] != result.losses[0]
    if first is not None:
        assert result.losses[0] == pytest.approx(first, abs=1e-6)


def test_lora_dropout_is_seeded_in_the_step_and_leaves_the_reference_alone(tiny_dpo_overrides, tmp_path):
    """model.lora.dropout > 0: the train step drops the adapters' inputs (losses differ from dropout 0 once the
    adapters are non-zero; at step 0, b = 0, they cannot), the same seed gives the same losses, and under the
    step's dropout key the reference (adapters disabled) is exactly the key-free one while the policy is not."""
    def run(dropout, name):
        trainer = Trainer(_config(tiny_dpo_overrides, tmp_path / name, "mesh.data=1", "train.steps=2",
                                  f"model.lora.dropout={dropout}"))
        return trainer, trainer.run().losses

    trainer, dropped = run(0.5, "a")
    assert run(0.5, "b")[1] == dropped  # same seed, same dropout masks
    plain = run(0.0, "c")[1]
    assert dropped[0] == plain[0] == pytest.approx(LN2, abs=1e-6)
    assert all(abs(a - b) > 1e-6 for a, b in zip(dropped[1:], plain[1:])), (dropped, plain)

    graphdefs, batch = trainer.graphdefs, trainer.data.collate([(i,) for i in range(8)])

    @jax.jit
    def reference_and_policy(params, frozen, batch, seed):
        with lora_dropout(None if seed is None else jax.random.key(seed)):  # as LossFn runs the objective
            models = merge_models(graphdefs, params, frozen)
            side = [batch[f"chosen_{k}"] for k in SIDE]
            return _row_logps(models.reference, *side), _row_logps(models.policy, *side)

    with jax.set_mesh(trainer.mesh):
        ref_key, pol_key = map(np.asarray, reference_and_policy(trainer.state["params"], trainer.frozen, batch, 0))
        ref, pol = map(np.asarray, reference_and_policy(trainer.state["params"], trainer.frozen, batch, None))
    np.testing.assert_array_equal(ref_key, ref)
    assert np.abs(pol_key - pol).max() > 1e-4  # the key really drops the policy's adapter inputs


def test_lora_reward_model_trains_the_adapters_and_the_score_head(tiny_dpo_overrides, tmp_path):
    """A reward model with LoRA: the adapters and the fresh scalar head train (PEFT's `modules_to_save` for
    sequence classification), the base weights do not, and the merged export reads back in transformers with
    the merged model's scores."""
    trainer = Trainer(_config(tiny_dpo_overrides, tmp_path / "rm", "mesh.data=1", "train.steps=2",
                              "loss.name=reward_model", "train.export_hf=true"))
    names = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(trainer.state["params"])}
    assert "score" in names and all(isinstance(v, LoraParam) for n, v in names.items() if n != "score")
    before = {n: np.asarray(v[...]) for n, v in names.items()}
    base_before = _host(trainer.frozen["policy"])
    moments = [x for x in jax.tree.leaves(trainer.state["opt_state"]) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted([v.shape for v in before.values()] * 2)
    result = trainer.run()
    assert all(math.isfinite(x) for x in result.losses) and result.losses[-1] < result.losses[0]
    after = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(trainer.state["params"])}
    assert [n for n in before if np.array_equal(before[n], after[n])] == []  # the head and every adapter moved
    for old, new in zip(base_before, _host(trainer.frozen["policy"])):
        np.testing.assert_array_equal(old, new)
    ids = np.arange(3 * 16).reshape(3, 16) % 300
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(result.export_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # one row at a time: the score of the last token, as the model reads it
        theirs = np.concatenate([hf(torch.tensor(row[None])).logits.numpy()[:, 0] for row in ids])
    merged = merge_lora(policy_model(trainer.graphdefs.policy, trainer.state["params"], trainer.frozen))
    graphdef, state = nnx.split(merged)
    ours = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids)))(state))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_lora_with_cached_reference_columns_loads_no_reference(tiny_dpo_overrides, tmp_path, preference_data):
    rows = [json.loads(x) for x in preference_data[0].read_text().splitlines()]
    data = write_jsonl(tmp_path / "cached.jsonl", [{**r, "ref_chosen_logps": -40.0, "ref_rejected_logps": -41.0}
                                                   for r in rows])
    trainer = Trainer(_config(tiny_dpo_overrides, tmp_path / "c", "mesh.data=1", "train.steps=1", f"data.path={data}"))
    assert not trainer.graphdefs.reference_is_base and trainer.graphdefs.reference is None
    assert "reference" not in trainer.frozen
    assert math.isfinite(trainer.run().losses[0])


@pytest.mark.parametrize("override, message", [
    ("model.lora.targets=[q_proj,qkv]", "model.lora.targets: llama has no projection 'qkv'"),
    ("model.lora.rank=-2", "model.lora.rank=-2 must be >= 0"),
    ("model.lora.dropout=1.5", "model.lora.dropout=1.5 must be"),
])
def test_bad_lora_settings_fail_before_training_by_key(override, message, tiny_dpo_overrides, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        Trainer(_config(tiny_dpo_overrides, tmp_path / "bad", override))
    assert "\n" not in str(err.value)


def test_plan_of_a_lora_run_counts_adapters_as_trained_and_the_base_once():
    from jaxalign.train.plan import plan_train

    common = ["model.path=", "model.preset=tiny", "data.batch_size=4", "data.max_length=32", "data.max_prompt_length=16",
              "mesh.fsdp=2"]
    full = plan_train(load_config("configs/dpo.yaml", common), devices=2, flops=False).per_device_bytes
    lora = plan_train(load_config("configs/dpo.yaml", [*common, "model.lora.rank=4"]), devices=2, flops=False)
    per = lora.per_device_bytes
    assert per["frozen"] == full["params"]  # the base weights, once: the reference is the same arrays
    assert per["params"] < full["params"] / 5 and per["optimizer"] == pytest.approx(2 * per["params"], rel=0.01)
    assert set(lora.param_counts) == {"policy", "reference"}
    # a reward model's head trains with the adapters in the plan too (as optimizer.trainable=^score$ would say)
    rm = [*common, "model.lora.rank=4", "loss.name=reward_model"]
    head = plan_train(load_config("configs/dpo.yaml", rm), devices=2, flops=False).per_device_bytes
    named = plan_train(load_config("configs/dpo.yaml", [*rm, "optimizer.trainable=^score$"]), devices=2,
                       flops=False).per_device_bytes
    assert (head["params"], head["optimizer"], head["frozen"]) == (named["params"], named["optimizer"], named["frozen"])
