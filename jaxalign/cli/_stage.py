"""Arguments shared by the config-driven commands: `CONFIG [key=value ...]`."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("config", nargs=None if required else "?",
                   help="recipe YAML (e.g. configs/dadpo.yaml)" + ("" if required else "; omitted = the built-in defaults"))
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. generate.batch_size=16 mesh.data=8")


def split_args(args) -> tuple[str | None, list[str]]:
    """(recipe path, overrides); a first argument that is an override (`k=v`) is not a path."""
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        config_path, overrides = None, [config_path, *overrides]
    return config_path, overrides


def load_stage_config(args, stage: str):
    from jaxalign.config import load_config

    path, overrides = split_args(args)
    return load_config(path, overrides, stage=stage)
