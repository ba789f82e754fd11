"""Every recipe in configs/ loads and validates, for each stage it documents."""

from pathlib import Path

import pytest

from jaxalign.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
EXPECTED = {"sft", "dsft", "dpo", "ddpo", "dadpo", "kto", "rrhf", "reward_model", "difference_model",
            "rdo_dpo", "rdo_kto", "rdo_rrhf", "tiny_dpo"}


def test_all_recipes_present():
    assert EXPECTED <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_validates_for_training(recipe):
    config = load_config(recipe, ["data.path=train.jsonl"], stage="train")
    assert config.train.output_dir != "runs/default"  # each recipe writes to its own folder


@pytest.mark.parametrize("name, stage", [("dsft", "generate"), ("ddpo", "generate"), ("dadpo", "generate"),
                                         ("dadpo", "score"), ("rdo_dpo", "score"), ("rdo_kto", "score"),
                                         ("rdo_rrhf", "score")])
def test_pipeline_recipes_validate_for_their_stages(name, stage):
    load_config(CONFIGS / f"{name}.yaml", ["data.path=in.jsonl"], stage=stage)


def test_recipe_values():
    dadpo = load_config(CONFIGS / "dadpo.yaml")
    assert (dadpo.loss.name, dadpo.loss.beta_ref, dadpo.loss.beta_teacher, dadpo.loss.kd_weight) == ("dadpo", 0.1, 0.1, 0.0)
    assert dadpo.teacher.path and dadpo.score.teacher_logps
    rdo = load_config(CONFIGS / "rdo_dpo.yaml")  # inherits dpo.yaml
    assert rdo.loss.name == "dpo" and rdo.loss.rdo.enabled and rdo.optimizer.lr == 5e-7
    assert load_config(CONFIGS / "tiny_dpo.yaml").model.preset == "tiny"
    assert load_config(CONFIGS / "kto.yaml").data.task == "kto"
    assert load_config(CONFIGS / "difference_model.yaml").data.task == "pairwise"
