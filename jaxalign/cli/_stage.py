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


def check_model_output(source, out_dir: str, *, overwrite: bool, flag: str = "out_dir") -> None:
    """Before loading anything: refuse an output folder that is a file, that cannot be written, that is
    not empty without --overwrite, or that is (or contains, or lies inside) the source it is made from."""
    from pathlib import Path

    from jaxalign.data.errors import DataError
    from jaxalign.train.locks import check_writable

    out = Path(out_dir).absolute().resolve()
    check_writable(out, key=flag, directory=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{flag}={out_dir} exists and is not empty; pass --overwrite to replace it")
    src = Path(source).absolute().resolve()
    if out == src or src in out.parents or out in src.parents:
        raise DataError(f"{flag}={out_dir} would replace its own source {source}; write to another folder")
