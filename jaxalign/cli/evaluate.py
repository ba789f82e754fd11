"""Held-out metrics of policies: `jaxalign eval configs/dadpo.yaml eval.prompts=heldout.jsonl`.

Preference accuracy (implicit reward, with `eval_data`), KL to the teacher on
its own responses and the teacher's log-likelihood of each policy's samples
(with `eval.prompts`), win rate against the teacher by `eval.judge`. Prints a
table and writes JSON to `eval.output`.
"""

from __future__ import annotations

from jaxalign.cli._stage import add_config_args, load_stage_config

HELP = "evaluate policies: preference accuracy, KL to the teacher, teacher log-likelihood, win rate"


def add_parser(p):
    add_config_args(p)


def run(args) -> int:
    from jaxalign.pipeline.evaluate import run_eval

    run_eval(load_stage_config(args, "eval"))
    return 0
