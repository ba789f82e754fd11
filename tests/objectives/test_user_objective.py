"""An objective defined outside jaxalign (tests/objectives/user_objectives/simpo_margin.py) trains from a
recipe through the CLI, shows in --help-config, and its settings' ranges are enforced, with no jaxalign file
edited."""

import importlib.metadata
import json
import math
from pathlib import Path

import pytest

from jaxalign.cli.main import main
from jaxalign.config import ConfigError, config_from_yaml, load_config
from jaxalign.objectives import get_objective, objective_names
from tests.train.conftest import tiny_overrides

SIMPO = ["objective.module=simpo_margin", "loss.name=simpo"]


def test_user_objective_trains_from_a_recipe_via_the_cli(user_objectives, preference_data, byte_tokenizer_dir,
                                                        tmp_path, capsys):
    out = tmp_path / "run"
    recipe = tmp_path / "simpo.yaml"  # a user recipe on top of a shipped one, naming the module itself
    recipe.write_text(f"base: {Path('configs/tiny_dpo.yaml').resolve()}\n"
                      "objective:\n  module: simpo_margin\nloss:\n  name: simpo\n  simpo_gamma: 0.25\n")
    args = ["train", str(recipe), *tiny_overrides(preference_data, byte_tokenizer_dir, out),
            "train.steps=4", "optimizer.lr=1e-3", "eval_data=null", "mesh.data=1"]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    losses = [r["loss"] for r in train]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(math.isfinite(x) for x in losses)
    # its own metrics are logged
    assert {"rewards/margins", "rewards/accuracies"} <= set(train[0])
    assert losses[-1] < losses[0]  # it learns the preference
    # the checkpoint's config names the module, so reading it back (a resume) imports it again
    saved = next(out.glob("checkpoints/*/config/config.yaml")).read_text()
    assert "simpo_gamma: 0.25" in saved and "- simpo_margin" in saved
    assert config_from_yaml(saved, "saved").loss.simpo_gamma == 0.25


def test_user_objective_in_help_config(user_objectives, capsys):
    assert main(["train", "objective.module=simpo_margin", "--help-config", "loss"]) == 0
    text = capsys.readouterr().out
    assert "loss.simpo_gamma = 0.5  (float)" in text and "(simpo) SimPO γ: target reward margin. [>= 0]" in text
    assert "simpo  (data.task=preference; settings: simpo_beta, simpo_gamma)" in text
    assert "simpo" in get_objective("simpo").name and "simpo" in objective_names()


def test_user_objective_range_refused_by_key(user_objectives, capsys):
    with pytest.raises(ConfigError, match=r"^loss\.simpo_beta=-1\.0 must be > 0$"):
        load_config("configs/tiny_dpo.yaml", [*SIMPO, "loss.simpo_beta=-1", "model.tokenizer=x"])
    assert main(["train", "configs/tiny_dpo.yaml", *SIMPO, "loss.simpo_gamma=-0.5", "data.path=x.jsonl"]) == 2
    assert "jaxalign train: error: loss.simpo_gamma=-0.5 must be >= 0" in capsys.readouterr().err


def test_bad_module_named_by_key():
    with pytest.raises(ConfigError, match=r"^objective\.module='no_such_pkg\.my_loss' \(command line\): cannot import "
                                          r"it \(ModuleNotFoundError: No module named 'no_such_pkg'\)$"):
        load_config("configs/tiny_dpo.yaml", ["objective.module=no_such_pkg.my_loss"])
    # without the module its keys are unknown, and its name is not an objective
    with pytest.raises(ConfigError, match=r"unknown config key 'loss\.simpo_gamma' \(command line\)"):
        load_config("configs/tiny_dpo.yaml", ["loss.simpo_gamma=0.1"])
    with pytest.raises(ConfigError, match=r"^loss\.name='simpo' is not one of dpo, dadpo, .*, sft; did you mean 'dpo'\?"):
        load_config("configs/tiny_dpo.yaml", ["loss.name=simpo", "data.path=x.jsonl"])


def test_module_list_and_registry_restored(user_objectives):
    config = load_config("configs/tiny_dpo.yaml", ["objective.module=[simpo_margin]", "loss.name=simpo",
                                                   "loss.simpo_beta=3.0", "data.path=x.jsonl"])
    assert config.objective.module == ["simpo_margin"] and config.loss.simpo_beta == 3.0
    assert config.data.task == "preference"


def test_docs_show_this_objective(user_objectives):
    """docs/objectives.md's worked example is the module these tests train (code after its docstring)."""
    source = (user_objectives / "simpo_margin.py").read_text()
    code = source.split('"""\n', 2)[2].strip()
    assert code in (Path(__file__).resolve().parents[2] / "docs" / "objectives.md").read_text()


def test_entry_point_objectives_load(user_objectives, monkeypatch):
    """An installed package's entry point (group jaxalign.objectives) registers without objective.module;
    one that fails to load is named in one line."""
    from jaxalign.objectives import registry

    group = registry.ENTRY_POINT_GROUP
    points = [importlib.metadata.EntryPoint("simpo", "simpo_margin", group)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: points if group == registry.ENTRY_POINT_GROUP
                        else [])
    monkeypatch.setitem(registry._STATE, "builtins", False)  # discover again, as in a fresh process
    assert "simpo" in objective_names()
    points[:] = [importlib.metadata.EntryPoint("broken", "no_such_pkg.losses", group)]
    monkeypatch.setitem(registry._STATE, "builtins", False)
    with pytest.raises(ConfigError, match=r"^entry point 'broken' \(jaxalign\.objectives: no_such_pkg\.losses\) failed to "
                                          r"load: ModuleNotFoundError: No module named 'no_such_pkg'$"):
        objective_names()
