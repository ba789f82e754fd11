"""Recipes, ``base`` chains, ``key=value`` overrides, errors and the YAML round trip."""

from pathlib import Path

import pytest

from jaxalign.config import Config, ConfigError, config_from_yaml, load_config, parse_override, save_config, to_yaml

TINY = ["model.preset=tiny"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_recipe_then_overrides_apply_with_schema_types(tmp_path):
    recipe = write(tmp_path / "r.yaml", "loss:\n  name: dadpo\n  beta_teacher: 0.3\noptimizer:\n  lr: 1e-6\n")
    config = load_config(
        recipe, [*TINY, "loss.beta_teacher=0.2", "optimizer.lr=5e-7", "mesh.fsdp=4", "train.export_hf=false",
                 "train.steps=200", "optimizer.max_grad_norm=2"]
    )
    assert config.loss.name == "dadpo"
    assert config.loss.beta_teacher == 0.2 and config.optimizer.lr == 5e-7
    assert config.mesh.fsdp == 4 and isinstance(config.mesh.fsdp, int)
    assert config.train.export_hf is False and config.train.steps == 200
    assert config.optimizer.max_grad_norm == 2.0 and isinstance(config.optimizer.max_grad_norm, float)


def test_later_overrides_win_and_loads_do_not_leak():
    assert load_config(None, [*TINY, "loss.beta=0.3", "loss.beta=0.05"]).loss.beta == 0.05
    assert load_config(None, [*TINY, "loss.rdo.model.path=x", "loss.rdo.model={dtype: bfloat16}"]).loss.rdo.model.path == "x"
    assert load_config(None, TINY) == load_config(None, TINY) and load_config(None, TINY).loss.beta == 0.1


def test_list_override_replaces_the_list(tmp_path):
    recipe = write(tmp_path / "r.yaml", "data:\n  buckets: [64, 128, 1024]\n")
    config = load_config(recipe, [*TINY, "data.buckets=[128,256,1024]", "data.data_files=[a.jsonl, b.jsonl]"])
    assert config.data.buckets == [128, 256, 1024] and config.data.data_files == ["a.jsonl", "b.jsonl"]
    assert type(config.data.buckets) is list


def test_null_or_empty_clears_a_text_field_and_an_optional_one():
    config = load_config(None, [*TINY, "teacher.path=t", "teacher.path=null", "reference.path=",
                                "data.max_prompt_length=100", "data.max_prompt_length=null"])
    assert config.teacher.path == "" and config.reference.path == "" and config.data.max_prompt_length is None


def test_null_refused_for_a_number():
    with pytest.raises(ConfigError, match=r"^train\.steps=null is not allowed: train\.steps is an integer \(command line\)$"):
        load_config(None, [*TINY, "train.steps=null"])


def test_base_inheritance_chain_relative_to_each_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.yaml", "loss:\n  beta: 0.3\n  label_smoothing: 0.1\ntrain:\n  steps: 10\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../root.yaml\nloss:\n  beta: 0.2\n")
    leaf = write(tmp_path / "sub" / "leaf.yaml", "base: mid.yaml\ntrain:\n  steps: 30\n")
    config = load_config(leaf, TINY)
    assert (config.loss.beta, config.loss.label_smoothing, config.train.steps) == (0.2, 0.1, 30)


def test_base_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"inherit in a cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml", TINY)


def test_missing_base_file_named(tmp_path):
    recipe = write(tmp_path / "r.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml \(base of .*r\.yaml\) not found"):
        load_config(recipe, TINY)


def test_unknown_key_in_file_named_with_file_and_suggestion(tmp_path):
    recipe = write(tmp_path / "r.yaml", "optimizer:\n  learning_rate: 1.0e-6\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe, TINY)
    assert str(e.value) == f"unknown config key 'optimizer.learning_rate' ({recipe}); did you mean 'optimizer.lr'?"


def test_unknown_key_on_command_line_with_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(None, [*TINY, "optimizer.learning_rate=1e-6"])
    assert str(e.value) == "unknown config key 'optimizer.learning_rate' (command line); did you mean 'optimizer.lr'?"
    with pytest.raises(ConfigError, match=r"unknown config key 'beta' \(command line\); did you mean 'loss\.beta'\?"):
        load_config(None, [*TINY, "beta=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optimiser\.lr' .*did you mean 'optimizer\.lr'"):
        load_config(None, [*TINY, "optimiser.lr=0.1"])


def test_wrong_type_named():
    with pytest.raises(ConfigError) as e:
        load_config(None, [*TINY, "optimizer.lr=fast"])
    assert str(e.value) == "optimizer.lr='fast' is not a float (command line)"
    with pytest.raises(ConfigError, match=r"^train\.steps=1\.5 is not an integer \(command line\)$"):
        load_config(None, [*TINY, "train.steps=1.5"])
    with pytest.raises(ConfigError, match=r"^data\.buckets=\['a', 256\] is not a list of integers or null"):
        load_config(None, [*TINY, "data.buckets=[a,256]"])


def test_wrong_type_in_file_named_with_file(tmp_path):
    recipe = write(tmp_path / "r.yaml", "logging:\n  plot: sometimes\n")
    with pytest.raises(ConfigError, match=rf"^logging\.plot='sometimes' is not a boolean \({recipe}\)$"):
        load_config(recipe, TINY)


def test_section_given_a_value_refused():
    with pytest.raises(ConfigError, match=r"^model is a section, not a value \(command line\); set its keys"):
        load_config(None, ["model=llama"])


def test_malformed_override_and_file_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'loss\.beta' is not key=value"):
        load_config(None, [*TINY, "loss.beta"])
    with pytest.raises(ConfigError, match=r"lists are set whole"):
        parse_override("generate.models[0].name=x")
    bad = write(tmp_path / "bad.yaml", "loss: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"config file .*missing\.yaml not found"):
        load_config(tmp_path / "missing.yaml")


def test_interpolation_resolved_and_bad_one_wrapped():
    config = load_config(None, [*TINY, "train.output_dir=runs/x", "checkpoint.dir=${train.output_dir}/ckpt"])
    assert config.checkpoint.dir == "runs/x/ckpt"
    with pytest.raises(ConfigError, match=r"checkpoint\.dir: .*train\.outdir"):
        load_config(None, [*TINY, "checkpoint.dir=${train.outdir}/ckpt"])


def test_to_yaml_round_trip(tmp_path):
    config = load_config(
        None, [*TINY, "loss.name=kto", "data.task=kto", "data.buckets=[128,512,1024]", "loss.rdo.enabled=true",
               "loss.rdo.model.path=dm", "optimizer.lr=3e-7", "data.pairwise_suffix='\\n#'",
               "generate.models=[{name: t, path: teacher}]"]
    )
    text = to_yaml(config)
    assert "lr: 3.0e-07" in text or "lr: 3e-07" in text
    assert config_from_yaml(text) == config
    path = save_config(config, tmp_path / "out" / "config.yaml")
    assert load_config(path) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_config_from_yaml_refuses_unknown_keys_too():
    with pytest.raises(ConfigError, match=r"unknown config key 'trian\.steps' \(saved\.yaml\); did you mean 'train\.steps'"):
        config_from_yaml("trian:\n  steps: 3\n", source="saved.yaml")


def test_load_config_returns_plain_dataclasses():
    config = load_config(None, [*TINY, "generate.models=[{name: t, preset: tiny}]"])
    assert type(config) is Config
    assert type(config.data).__name__ == "DataConfig" and type(config.generate.models[0]).__name__ == "GenerateModel"
    assert type(config.generate.models) is list
