"""Every bad input of ``benchmarks/bad_inputs.py`` through the CLI's ``main`` in-process: exit code 2
(0 where the input is fine), one error line and no traceback, and nothing created, changed or deleted.

Cases that need a shell pipe or the fixtures made by real score/generate/train runs are covered by
the script itself and by tests/train/test_integrity.py, tests/pipeline/test_generate.py and
tests/pipeline/test_score.py."""

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

from jaxalign.cli.main import main
from jaxalign.train.locks import output_lock

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bad_inputs.py"
_spec = importlib.util.spec_from_file_location("bad_inputs", SCRIPT)
bad = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad  # dataclasses resolve the module's annotations through sys.modules
_spec.loader.exec_module(bad)

CASES = [c for c in bad.CASES if not c.needs_derived and not c.pipe_to_head]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    fx = tmp_path_factory.mktemp("bad_inputs") / "fx"
    bad.make_fixtures(fx, derived=False)
    return fx


def test_at_least_forty_cases_cover_every_command():
    assert len(bad.CASES) >= 40
    assert {c.command for c in bad.CASES} >= {"train", "generate", "score", "eval", "convert", "prune", "pipeline"}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.what}" for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, fixtures, tmp_path, capsys, monkeypatch):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    monkeypatch.chdir(bad.REPO)
    monkeypatch.setenv("JAXALIGN_CACHE", str(fixtures / "cache"))
    with contextlib.ExitStack() as stack:
        if case.read_only_dir:  # a read-only tmpfs mount for root, else mode 555
            stack.enter_context(bad.read_only_folder(case_dir / "ro"))
        if case.setup:
            case.setup(fixtures, case_dir)
        argv = case.argv(fixtures, case_dir)
        if case.lock:  # another writer holds the output for the whole case
            stack.enter_context(output_lock(case_dir / case.lock.rstrip("/"), key="other", directory=case.lock.endswith("/")))
        before = bad.snapshot(fixtures, case_dir)
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
        after = bad.snapshot(fixtures, case_dir)
    err = capsys.readouterr().err
    assert rc == case.expect, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and len(errors[0]) > len("jaxalign x: error: ") + 10, err
    assert bad.left_behind(before, after, fixtures.parent) == "-"


def test_version_and_traceback_switch(capsys, monkeypatch, tmp_path):
    from jaxalign import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"jaxalign {__version__}"
    monkeypatch.setenv("JAXALIGN_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")])


def test_unexpected_exception_types_are_named_on_one_line(capsys, monkeypatch):
    from jaxalign.cli import convert

    def boom(args):
        raise KeyError("weight_map")

    monkeypatch.setattr(convert, "run", boom)
    assert main(["convert", "a", "b"]) == 2
    assert capsys.readouterr().err.strip() == "jaxalign convert: error: KeyError: 'weight_map'"
