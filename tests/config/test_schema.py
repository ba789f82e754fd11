"""Schema defaults, presets and ``validate``'s purely-config checks."""

import dataclasses

import pytest

from jaxalign.config import (
    MODEL_PRESETS,
    Config,
    ConfigError,
    ModelSpec,
    choices_of,
    load_config,
    preset_hf_config,
    validate,
)
from jaxalign.objectives import get_objective, objective_names


def tiny(**sections) -> Config:
    """Defaults with the tiny preset as policy, then ``section=dict(field=value)`` replaced."""
    config = Config(model=ModelSpec(preset="tiny"))
    for name, fields in sections.items():
        setattr(config, name, dataclasses.replace(getattr(config, name), **fields))
    return config


def test_defaults_are_the_documented_base_config():
    config = load_config(None, ["model.preset=tiny"])
    assert isinstance(config, Config)
    assert (config.loss.name, config.loss.beta, config.loss.loss_type) == ("dpo", 0.1, "sigmoid")
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.schedule) == ("adamw", 5e-7, "cosine")
    assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.multihost) == (-1, 1, 1, "auto")
    assert config.train.steps == 1000 and config.data.batch_size == 32 and config.loss.rdo.enabled is False
    assert config.checkpoint_dir == "runs/default/checkpoints" and config.export_dir == "runs/default/hf"
    assert config.eval_batch_size == 32 and config.score_batch_size == 32


def test_defaults_need_a_model():
    with pytest.raises(ConfigError, match=r"model\.path \(or model\.preset\) must be set"):
        load_config(None)


def test_enum_value_refused_with_allowed_values_and_closest_match():
    config = tiny(optimizer=dict(schedule="cosin"))
    with pytest.raises(ConfigError) as e:
        validate(config)
    assert str(e.value) == "optimizer.schedule='cosin' is not one of cosine, linear, constant; did you mean 'cosine'?"


def test_every_fixed_choice_field_is_checked():
    paths = {
        "model.remat": ("model", "remat"), "teacher.dtype": ("teacher", "dtype"),
        "loss.kd_on": ("loss", "kd_on"), "mesh.multihost": ("mesh", "multihost"),
        "generate.mode": ("generate", "mode"), "loss.loss_type": ("loss", "loss_type"),
        "loss.difference_label_type": ("loss", "difference_label_type"), "prune.strategy": ("prune", "strategy"),
        "model.attention": ("model", "attention"), "model.layer_loop": ("model", "layer_loop"),
    }
    for key, (section, name) in paths.items():
        with pytest.raises(ConfigError, match=rf"^{key}='bogus' is not one of"):
            validate(tiny(**{section: {name: "bogus"}}))
    config = tiny()
    config.loss.rdo.model.remat = "bogus"
    with pytest.raises(ConfigError, match=r"^loss\.rdo\.model\.remat='bogus'"):
        validate(config)
    assert set(choices_of(ModelSpec)) == {"dtype", "param_dtype", "remat", "attention", "layer_loop"}
    # data's own fields are checked by DataConfig.validate, named the same way
    with pytest.raises(ConfigError, match=r"^data\.truncation must be one of keep_end, keep_start, error; got 'bogus'"):
        validate(tiny(data={"truncation": "bogus"}))


@pytest.mark.parametrize(
    "section, fields, message",
    [
        ("train", dict(steps=0), r"train\.steps=0 must be >= 1"),
        ("optimizer", dict(lr=0.0), r"optimizer\.lr=0\.0 must be > 0"),
        ("optimizer", dict(grad_accum_steps=0), r"optimizer\.grad_accum_steps=0 must be >= 1"),
        ("optimizer", dict(grad_accum_steps=3), r"data\.batch_size=32 must divide by optimizer\.grad_accum_steps=3"),
        ("data", dict(batch_size=0), r"data\.batch_size must be a positive integer"),
        ("loss", dict(label_smoothing=0.5), r"loss\.label_smoothing=0\.5 must be >= 0 and < 0\.5"),
        ("loss", dict(loss_type="hinge", label_smoothing=0.1), r"only used by loss\.loss_type sigmoid or robust"),
        ("loss", dict(kd_divergence="jsd", kd_jsd_lambda=1.0), r"loss\.kd_jsd_lambda=1\.0 must be > 0 and < 1"),
        ("optimizer", dict(warmup_steps=1000), r"warmup_steps=1000 must be < train\.steps=1000"),
        ("checkpoint", dict(keep=0), r"checkpoint\.keep=0 must be >= 1"),
    ],
)
def test_ranges_refused_by_name(section, fields, message):
    with pytest.raises(ConfigError, match=message):
        validate(tiny(**{section: fields}))


def test_mesh_allows_at_most_one_remaining_axis():
    validate(tiny(mesh=dict(data=2, fsdp=-1, tensor=2)))
    with pytest.raises(ConfigError, match=r"only one mesh axis may be -1.*mesh\.data, mesh\.fsdp"):
        validate(tiny(mesh=dict(data=-1, fsdp=-1)))
    with pytest.raises(ConfigError, match=r"mesh\.tensor=0 must be a positive integer or -1"):
        validate(tiny(mesh=dict(tensor=0)))


def test_model_path_and_preset_are_exclusive_and_presets_are_known():
    with pytest.raises(ConfigError, match=r"model\.path and model\.preset are both set"):
        validate(tiny(model=dict(path="some/model")))
    with pytest.raises(ConfigError, match=r"teacher\.preset='smal' is not one of .*did you mean 'small'"):
        validate(tiny(teacher=dict(preset="smal")))


def test_loss_and_data_task_must_agree():
    with pytest.raises(ConfigError, match=r"loss\.name='kto' trains on data\.task='kto' batches.*set data\.task=kto"):
        validate(tiny(loss=dict(name="kto")))
    validate(tiny(loss=dict(name="kto"), data=dict(task="kto")))
    # loss.name's choices and each objective's data task come from the objective registry
    assert choices_of(type(Config().loss))["name"] == objective_names()
    assert {n: get_objective(n).task for n in objective_names()}.items() >= {
        "sft": "sft", "dpo": "preference", "dadpo": "preference", "rrhf": "preference", "reward_model": "preference",
        "kto": "kto", "difference_model": "pairwise"}.items()


def test_kd_term_needs_a_teacher_model():
    with pytest.raises(ConfigError, match=r"loss\.kd_weight=0\.5 needs .*teacher\.path"):
        validate(tiny(loss=dict(kd_weight=0.5)))
    validate(tiny(loss=dict(kd_weight=0.5), teacher=dict(preset="tiny")))


@pytest.mark.parametrize("name, task, key", [("kto", "kto", "nll_weight"), ("kto", "kto", "kd_weight"),
                                             ("sft", "sft", "kd_weight"), ("rrhf", "preference", "nll_weight")])
def test_kd_and_nll_terms_only_with_objectives_that_take_them(name, task, key):
    """KTO has no chosen responses for loss.nll_weight, SFT and RRHF no extra terms: a weight the objective
    would ignore is refused in one line naming the key (the spec's `extra_terms` decides); 0 is accepted."""
    with pytest.raises(ConfigError, match=rf"loss\.{key}=0\.5 adds .* loss\.name='{name}' does not take .*"
                                          rf"work with dadpo, dpo[^)]*\); set loss\.{key}=0$") as err:
        validate(tiny(loss={"name": name, key: 0.5}, data=dict(task=task), teacher=dict(preset="tiny")))
    assert "\n" not in str(err.value)
    validate(tiny(loss={"name": name, key: 0.0}, data=dict(task=task)))
    validate(tiny(loss={"name": "dpo", key: 0.5}, teacher=dict(preset="tiny")))


def test_rdo_only_with_losses_that_take_pair_weights():
    config = tiny(loss=dict(name="sft"), data=dict(task="sft"))
    config.loss.rdo.enabled = True
    with pytest.raises(ConfigError, match=r"loss\.rdo\.enabled=true .*loss\.name='sft'"):
        validate(config)


def test_stage_requirements():
    with pytest.raises(ConfigError, match=r"data\.path must be set to train"):
        validate(tiny(), "train")
    validate(tiny(data=dict(path="prefs.jsonl")), "train")
    with pytest.raises(ConfigError, match=r"generate\.output must be set"):
        validate(tiny(data=dict(path="prompts.jsonl")), "generate")
    with pytest.raises(ConfigError, match=r"score\.teacher_logps=true needs teacher\.path"):
        validate(tiny(data=dict(path="p.jsonl"), score=dict(output="o.jsonl", teacher_logps=True)), "score")
    with pytest.raises(ConfigError, match=r"stage='trian' is not one of .*did you mean 'train'"):
        validate(tiny(), "trian")


def test_generate_models_need_unique_names_and_pairs_take_two():
    config = tiny(generate=dict(mode="pairs", output="o.jsonl"), data=dict(path="p.jsonl"))
    with pytest.raises(ConfigError, match=r"generate\.mode='pairs' with no generate\.models .*teacher\.path"):
        validate(config, "generate")
    config = load_config(
        None,
        ["model.preset=tiny", "generate.mode=pairs", "generate.output=o.jsonl", "data.path=p.jsonl",
         "generate.models=[{name: a, preset: tiny}, {name: b, preset: small}]"],
        stage="generate",
    )
    assert [m.name for m in config.generate.models] == ["a", "b"] and config.generate.models[1].preset == "small"
    with pytest.raises(ConfigError, match=r"generate\.models\[1\]\.name='a' is used twice"):
        load_config(None, ["model.preset=tiny", "generate.models=[{name: a, preset: tiny}, {name: a, preset: tiny}]"])


def test_presets_are_valid_hf_configs():
    from jaxalign.models.config import ModelConfig

    for name in MODEL_PRESETS:
        mc = ModelConfig.from_hf_dict(preset_hf_config(name), source=name)
        assert mc.num_layers >= 2
    bench = ModelConfig.from_hf_dict(preset_hf_config("bench-llama-4x512"))
    assert (bench.num_layers, bench.hidden_size, bench.intermediate_size) == (4, 512, 1376)
    assert (bench.num_heads, bench.num_kv_heads, bench.vocab_size, bench.tie_word_embeddings) == (8, 4, 32000, False)
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        preset_hf_config("tiyn")
