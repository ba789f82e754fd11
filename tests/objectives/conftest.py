"""Fixtures of the objective tests: the engine tests' synthetic preferences and byte tokenizer, and a
clean registry around each test that imports a user objective."""

import sys
from pathlib import Path

import pytest

from jaxalign.objectives import objective_names, unregister_objective
from tests.train.conftest import byte_tokenizer_dir, preference_data  # noqa: F401 (fixtures)

#: A folder outside jaxalign holding user objective modules (``objective.module=simpo_margin``).
USER_OBJECTIVES = Path(__file__).parent / "user_objectives"


@pytest.fixture
def user_objectives(monkeypatch):
    """``USER_OBJECTIVES`` on ``sys.path``; afterwards every objective the test registered is removed
    (so the rest of the session sees only the built-ins) and its module forgotten."""
    before = set(objective_names())
    modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(USER_OBJECTIVES))
    yield USER_OBJECTIVES
    for name in set(objective_names()) - before:
        unregister_objective(name)
    for name in set(sys.modules) - modules:
        if getattr(sys.modules[name], "__file__", "") and str(USER_OBJECTIVES) in sys.modules[name].__file__:
            del sys.modules[name]
