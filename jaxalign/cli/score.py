"""Add precomputed columns to a preference dataset: `jaxalign score configs/dadpo.yaml`.

Reference and teacher sequence log-probs (training then skips those models),
reward-model scores, difference-model reward differences and RDO weights, as
`score.*` and `loss.rdo.*` say. Resumable after an interruption.
"""

from __future__ import annotations

from jaxalign.cli._stage import add_config_args, load_stage_config

HELP = "add reference/teacher log-probs, reward scores and RDO weights to a dataset; resumable"


def add_parser(p):
    add_config_args(p)


def run(args) -> int:
    from jaxalign.pipeline.score import run_score

    result = run_score(load_stage_config(args, "score"))
    print(f"{result.output}: {result.rows} rows scored ({', '.join(result.columns)})"
          + (" — interrupted; rerun to continue" if result.interrupted else ""))
    return 0
