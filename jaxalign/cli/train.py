"""Train with a recipe and gin-style overrides: `jaxalign train configs/dpo.yaml loss.beta=0.05 mesh.fsdp=4`."""

from __future__ import annotations

import argparse

from jaxalign.cli._stage import add_config_args, load_stage_config, split_args

HELP = "train a policy, reward or difference model from a recipe (+ key=value overrides)"


def add_parser(p: argparse.ArgumentParser):
    add_config_args(p)
    p.add_argument("--help-config", nargs="?", const="", metavar="SECTION",
                   help="list every config key (of SECTION), with the objectives of the recipe's objective.module")


def run(args) -> int:
    from jaxalign.config import format_keys, import_recipe_objectives

    if args.help_config is not None:
        import_recipe_objectives(*split_args(args))
        print(format_keys(args.help_config))
        return 0
    from jaxalign.train.trainer import train

    train(load_stage_config(args, "train"))
    return 0
