"""RDO difference model on the synthetic graded-reward task of ``benchmarks/rdo_synthetic.py``, reduced.

A tiny random-init Llama is trained as a pairwise difference model D(x, a, b) (graded labels: the true reward
gap) for a few dozen steps; the ``score`` stage then writes the antisymmetrised d for held-out pairs in both
orders (the second half of the scored file is the first half with chosen and rejected swapped). Pinned here:
d(x,a,b) = -d(x,b,a) to 1e-5, Spearman(d, true gap) > 0.5 on held-out pairs, and the RDO weights are
normalised to mean 1 and favour pairs whose label agrees with the true gap. The task, the configs and the
statistics are the benchmark script's own functions (imported from the file by path).
"""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "rdo_synthetic.py"
TRAIN_PAIRS, HELDOUT_PAIRS, STEPS = 1024, 128, 30


def _benchmark_module():
    name = "rdo_synthetic_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARK)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve the module's annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, byte_tokenizer):
    """Held-out pairs (then the same pairs swapped) scored by a freshly trained difference model."""
    bench = _benchmark_module()
    root = tmp_path_factory.mktemp("rdo_synthetic")
    byte_tokenizer.save_pretrained(root / "tokenizer")
    s = bench.Settings(seed=0, batch_size=32, dm_lr=3e-3)
    init = ["model.preset=tiny", f"model.tokenizer={root / 'tokenizer'}"]
    train_rows = bench.preference_rows(TRAIN_PAIRS, 10, s.bt_scale)
    data = bench.write_jsonl(root / "train.jsonl", train_rows)
    result = bench.run_train(bench.difference_model_overrides(s, root / "dm", data, init, STEPS), root / "dm.log")
    assert result.steps == STEPS and np.isfinite(result.losses).all()

    heldout = bench.preference_rows(HELDOUT_PAIRS, 11, s.bt_scale)
    both = bench.write_jsonl(root / "heldout_both_orders.jsonl", heldout + bench.swapped(heldout))
    out = root / "scored.jsonl"
    bench.run_score_stage(bench.score_overrides(s, both, out, init, root / "dm" / "hf", reference_logps=False))
    rows = bench.read_jsonl(out)
    n = len(heldout)
    assert len(rows) == 2 * n
    assert [r["chosen"] for r in rows[:n]] == [r["rejected"] for r in rows[n:]]  # row order kept
    d = np.asarray([r["rdo_difference"] for r in rows], np.float64)
    gap = np.asarray([r["score_chosen"] - r["score_rejected"] for r in rows], np.float64)
    weight = np.asarray([r["rdo_weight"] for r in rows], np.float64)
    return SimpleNamespace(bench=bench, n=n, d=d, gap=gap, weight=weight)


def test_difference_is_antisymmetric(scored):
    n = scored.n
    np.testing.assert_allclose(scored.d[:n], -scored.d[n:], rtol=0, atol=1e-5)


def test_difference_ranks_true_gaps(scored):
    n = scored.n
    rho = scored.bench.spearman(scored.d[:n], scored.gap[:n])
    assert rho > 0.5, f"Spearman(d, true gap) = {rho:.3f} on {n} held-out pairs"


def test_rdo_weights_mean_one_and_favour_right_labels(scored):
    w, gap = scored.weight, scored.gap
    assert w.mean() == pytest.approx(1.0, abs=1e-4)
    assert w[gap > 0].mean() > w[gap < 0].mean()
