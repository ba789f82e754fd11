"""The objective registry and what derives from it: loss.name choices, data tasks, models, RDO, LossConfig."""

import dataclasses
from dataclasses import dataclass

import pytest

from jaxalign.config import Config, ConfigError, choices_of, describe_keys, load_config, setting
from jaxalign.config.schema import LossConfig
from jaxalign.objectives import (
    get_objective,
    needs_model,
    objective_names,
    register_objective,
    settings_of,
    unregister_objective,
)
from jaxalign.objectives.dadpo import DaDPOSettings
from jaxalign.objectives.dpo import DPOSettings

BUILTINS = {"sft": "sft", "dpo": "preference", "dadpo": "preference", "kto": "kto", "rrhf": "preference",
            "reward_model": "preference", "difference_model": "pairwise"}
REF = {"ref_chosen_logps", "ref_rejected_logps"}
TEACHER = {"teacher_chosen_logps", "teacher_rejected_logps"}


def _noop(models, batch, ctx, totals=None):
    raise AssertionError("not run")


@pytest.fixture
def scratch():
    """Objectives registered by the test are removed afterwards."""
    before = set(objective_names())
    yield
    for name in set(objective_names()) - before:
        unregister_objective(name)


def test_builtins_and_their_data_tasks():
    assert {n: get_objective(n).task for n in BUILTINS} == BUILTINS
    assert set(BUILTINS) <= set(objective_names())
    assert choices_of(LossConfig)["name"] == objective_names()
    assert {n for n in BUILTINS if get_objective(n).rdo} == {"dpo", "dadpo", "kto", "rrhf"}
    assert {n for n in BUILTINS if get_objective(n).head == "score"} == {"reward_model", "difference_model"}
    # a recipe's default data.task follows the objective
    assert load_config(None, ["model.preset=tiny", "loss.name=difference_model"]).data.task == "pairwise"


def test_needs_model_from_the_spec_and_the_cached_columns():
    loss = LossConfig(name="dadpo")
    dpo, dadpo, kto, rrhf = (get_objective(n) for n in ("dpo", "dadpo", "kto", "rrhf"))
    assert needs_model(dpo, "reference", loss, set()) and not needs_model(dpo, "reference", loss, REF)
    assert not needs_model(dpo, "teacher", loss, set())
    assert needs_model(dadpo, "teacher", loss, REF) and not needs_model(dadpo, "teacher", loss, REF | TEACHER)
    assert not needs_model(dadpo, "reference", loss, REF | {"teacher_chosen_logps"})
    assert needs_model(dadpo, "teacher", loss, {"teacher_chosen_logps"})  # half a cache is no cache
    assert needs_model(kto, "reference", loss, REF) and not needs_model(kto, "reference", loss, {"ref_logps"})
    assert not needs_model(rrhf, "reference", loss, set()) and not needs_model(rrhf, "teacher", loss, set())
    # token-level KD needs the teacher's distributions, cached sequence log-probs or not
    kd = LossConfig(name="dpo", kd_weight=0.5)
    assert needs_model(dpo, "teacher", kd, REF | TEACHER) and needs_model(dadpo, "teacher", kd, REF | TEACHER)
    assert not needs_model(rrhf, "teacher", kd, set())  # rrhf takes no extra terms
    # ... unless the teacher's top-k distributions are cached (loss.kd_cache)
    cached = LossConfig(name="dadpo", kd_weight=0.5, kd_cache="pairs.teacher_topk.parquet")
    assert not needs_model(dadpo, "teacher", cached, REF | TEACHER) and needs_model(dadpo, "teacher", cached, REF)


def test_loss_section_is_common_plus_every_objectives_settings():
    names = [f.name for f in dataclasses.fields(LossConfig)]
    assert {"name", "kd_weight", "nll_weight", "chunk_size", "rdo"} <= set(names)
    assert {"beta", "loss_type", "label_smoothing", "beta_ref", "beta_teacher", "kto_desirable_weight",
            "kto_undesirable_weight", "rrhf_nll_weight", "difference_label_type"} <= set(names)
    assert isinstance(Config().loss, LossConfig)
    by_key = {k.key: k for k in describe_keys("loss")}
    assert by_key["loss.beta"].doc.startswith("(dpo, kto) ")
    # the settings of the selected objective, typed; another objective's are kept and ignored
    config = load_config("configs/dpo.yaml", ["model.path=", "model.preset=tiny", "loss.beta_teacher=0.7"])
    assert settings_of(config.loss) == DPOSettings(beta=config.loss.beta)
    assert settings_of(config.loss, "dadpo") == DaDPOSettings(beta_teacher=0.7)
    assert settings_of(LossConfig(name="sft")) is None


def test_objective_relational_check_and_ranges_named_by_key():
    with pytest.raises(ConfigError, match=r"^loss\.beta_teacher=-0\.1 must be >= 0$"):
        load_config(None, ["model.preset=tiny", "loss.beta_teacher=-0.1"])
    with pytest.raises(ConfigError, match=r"^loss\.loss_type='sigmod' is not one of .*did you mean 'sigmoid'\?$"):
        load_config(None, ["model.preset=tiny", "loss.loss_type=sigmod"])
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing=0\.1 is only used by loss\.loss_type sigmoid or robust"):
        load_config(None, ["model.preset=tiny", "loss.loss_type=ipo", "loss.label_smoothing=0.1"])


def test_registration_conflicts_are_refused(scratch):
    @dataclass
    class OtherBeta:
        beta: float = setting(0.5, gt=0)

    @dataclass
    class SameBeta:
        beta: float = setting(0.1, gt=0)
        """β, shared with DPO and KTO."""

    @dataclass
    class Common:
        kd_weight: float = 0.0

    with pytest.raises(ConfigError, match=r"objective 'x': setting loss\.beta is also declared by 'dpo' with another "
                                          r"type, default or range \(float = 0\.1\)"):
        register_objective("x", task="preference", settings=OtherBeta)(_noop)
    with pytest.raises(ConfigError, match=r"setting loss\.kd_weight is a common loss setting"):
        register_objective("x", task="preference", settings=Common)(_noop)
    with pytest.raises(ConfigError, match=r"objective 'dpo' is already registered .*replace=True"):
        register_objective("dpo", task="preference")(_noop)
    with pytest.raises(ConfigError, match=r"objective 'x': task='prefs' is not one of .*did you mean 'preference'"):
        register_objective("x", task="prefs")(_noop)
    assert "x" not in objective_names()
    # the same declaration may be shared; the field records both owners
    register_objective("x", task="preference", settings=SameBeta)(_noop)
    assert "x" in objective_names() and "x" in choices_of(type(Config().loss))["name"]
    beta = next(f for f in dataclasses.fields(type(Config().loss)) if f.name == "beta")
    assert beta.metadata["objectives"] == ("dpo", "kto", "x")
    unregister_objective("x")
    assert "x" not in choices_of(type(Config().loss))["name"]
