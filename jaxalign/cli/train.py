"""Train with a recipe and gin-style overrides: `jaxalign train configs/dpo.yaml loss.beta=0.05 mesh.fsdp=4`."""

from __future__ import annotations

import argparse

HELP = "train a policy, reward or difference model from a recipe (+ key=value overrides)"


def add_parser(p: argparse.ArgumentParser):
    p.add_argument("config", nargs="?", help="recipe YAML (e.g. configs/dpo.yaml); omitted = the built-in defaults")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optimizer.lr=5e-7 mesh.fsdp=4")
    p.add_argument("--help-config", nargs="?", const="", metavar="SECTION", help="list every config key (of SECTION)")


def run(args) -> int:
    from jaxalign.config import format_keys, load_config

    if args.help_config is not None:
        print(format_keys(args.help_config))
        return 0
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        config_path, overrides = None, [config_path, *overrides]
    config = load_config(config_path, overrides, stage="train")
    from jaxalign.train.trainer import train

    train(config)
    return 0
