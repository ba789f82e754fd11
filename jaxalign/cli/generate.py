"""Sample responses with the KV-cache sampler: `jaxalign generate configs/ddpo.yaml generate.prompts=prompts.jsonl`.

`generate.mode=pairs` writes dDPO/daDPO rows (chosen: the teacher's sample,
rejected: the student's). Rows stream to `generate.output`; rerunning after an
interruption continues where the file ends.
"""

from __future__ import annotations

from jaxalign.cli._stage import add_config_args, load_stage_config

HELP = "sample responses (samples for dSFT, or teacher/student pairs for dDPO/daDPO); resumable"


def add_parser(p):
    add_config_args(p)


def run(args) -> int:
    from jaxalign.pipeline.generate import run_generate

    result = run_generate(load_stage_config(args, "generate"))
    print(f"{result.output}: {result.rows} rows ({result.new_rows} new, {result.tokens_per_second:.1f} tokens/s)"
          + (" — interrupted; rerun to continue" if result.interrupted else ""))
    return 0
