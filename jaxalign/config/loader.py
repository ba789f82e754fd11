"""Load a ``Config``: dataclass defaults <- YAML recipe chain <- ``key=value`` overrides.

::

    config = load_config("configs/dadpo.yaml", ["loss.beta_teacher=0.2", "optimizer.lr=5e-7"])

A recipe holds only what differs from the defaults, nested by section::

    base: dpo.yaml          # optional: a recipe to start from (relative to this file)
    loss:
      beta: 0.05

Overrides are ``dotted.key=value`` with the value parsed as YAML
(``data.buckets=[128,256]``, ``train.export_hf=false``, ``model.path=``). A
``null`` (or empty) value for a text field means "" (none). Lists are replaced,
not merged. Unknown keys and wrong types are refused with a one-line
``ConfigError`` that says where (file or "command line") and suggests the
closest valid key; no OmegaConf traceback reaches the user.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jaxalign.config.schema import SECTION_CLASS, Config
from jaxalign.config.validate import validate
from jaxalign.errors import ConfigError
from jaxalign.io.atomic import write_text_atomic

__all__ = [
    "BASE_KEY",
    "all_keys",
    "import_recipe_objectives",
    "apply_overrides",
    "config_from_yaml",
    "load_config",
    "parse_override",
    "save_config",
    "to_yaml",
]

#: Top-level recipe key naming the recipe it extends (relative to the recipe's folder).
BASE_KEY = "base"
#: The key naming the modules of user objectives, imported before a config is checked.
MODULE_KEY = "objective.module"
#: List keys that also take one value (``objective.module=my_pkg.my_loss``).
ONE_OR_MANY = (MODULE_KEY,)
COMMAND_LINE = "command line"

# Names users bring from other trainers -> our dotted key (suggested for unknown keys).
_ALIASES = {
    "learning_rate": "optimizer.lr",
    "lr": "optimizer.lr",
    "max_steps": "train.steps",
    "num_steps": "train.steps",
    "num_train_epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "per_device_train_batch_size": "data.batch_size",
    "global_batch_size": "data.batch_size",
    "gradient_accumulation_steps": "optimizer.grad_accum_steps",
    "max_seq_length": "data.max_length",
    "max_len": "data.max_length",
    "seq_len": "data.max_length",
    "warmup": "optimizer.warmup_steps",
    "lr_scheduler_type": "optimizer.schedule",
    "max_grad_norm": "optimizer.max_grad_norm",
    "grad_clip": "optimizer.max_grad_norm",
    "output": "train.output_dir",
    "save_steps": "checkpoint.every",
    "save_total_limit": "checkpoint.keep",
    "logging_steps": "train.log_every",
    "eval_steps": "eval.every",
    "model_name_or_path": "model.path",
    "ref_model": "reference.path",
    "teacher_model": "teacher.path",
    "gradient_checkpointing": "model.remat",
    "beta1": "loss.beta_ref",
    "beta2": "loss.beta_teacher",
}


# --------------------------------------------------------------------------- schema walking


def _loss_class() -> type:
    """The current ``loss`` section class (it changes when user objectives register): a cache key."""
    from jaxalign.objectives.registry import loss_config_class

    return loss_config_class()


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation, in field order; a section built at run time (``loss``: from the
    objective registry) has its current class."""
    return _hints_at(cls, _loss_class())


@functools.lru_cache(maxsize=None)
def _hints_at(cls: type, loss_class: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata[SECTION_CLASS]() if SECTION_CLASS in f.metadata else hints[f.name]
            for f in dataclasses.fields(cls)}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _list_item(tp: Any) -> Optional[Any]:
    """The element type when ``tp`` is ``List[X]`` (after Optional), else None."""
    tp, _ = _strip_optional(tp)
    if typing.get_origin(tp) in (list, typing.List):
        (item,) = typing.get_args(tp) or (Any,)
        return item
    return None


def type_phrase(tp: Any) -> str:
    """``a float``, ``a list of integers``, ``an integer or null`` ..."""
    tp, optional = _strip_optional(tp)
    item = _list_item(tp)
    if item is not None and dataclasses.is_dataclass(item):
        phrase = f"a list of {item.__name__} entries"
    elif item is not None:
        inner = type_phrase(item)
        inner = inner.split(" ", 1)[1] if inner.startswith(("a ", "an ")) else inner
        phrase = f"a list of {inner}s"
    elif dataclasses.is_dataclass(tp):
        phrase = f"a section ({tp.__name__})"
    else:
        phrase = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}.get(tp, str(tp))
    return phrase + (" or null" if optional else "")


def _iter_keys(cls: type, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name, tp in _hints(cls).items():
        key = prefix + name
        yield key, tp
        if dataclasses.is_dataclass(tp):
            yield from _iter_keys(tp, key + ".")
        item = _list_item(tp)
        if item is not None and dataclasses.is_dataclass(item):
            yield from _iter_keys(item, key + "[].")


def all_keys(cls: type = Config) -> tuple[str, ...]:
    """Every dotted key of the schema, sections included (list items as ``key[].field``)."""
    return _all_keys_at(cls, _loss_class())


@functools.lru_cache(maxsize=None)
def _all_keys_at(cls: type, loss_class: type) -> tuple[str, ...]:
    return tuple(k for k, _ in _iter_keys(cls))


def _suggest(key: str, cls: type, section: str) -> list[str]:
    """Up to three valid keys close to ``key`` (indices ``[i]`` of list items are kept)."""
    keys = list(all_keys(cls))
    index = re.search(r"\[\d+\]", key)
    norm = re.sub(r"\[\d+\]", "[]", key)
    section = re.sub(r"\[\d+\]", "[]", section)
    leaf = norm.rsplit(".", 1)[-1]
    leaves = {k[len(section):]: k for k in keys if k.startswith(section) and "." not in k[len(section):]}
    out: list[str] = []
    if leaf in _ALIASES and "[]" not in norm:
        out.append(_ALIASES[leaf])
    # A close name in the same section, then the same name in another section (``beta`` -> ``loss.beta``).
    out += [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=2, cutoff=0.6)]
    if "[]" not in norm:
        out += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and "[]" not in k]
    if not out:  # e.g. a misspelt section: ``optimiser.lr`` -> ``optimizer.lr``
        out += difflib.get_close_matches(norm, keys, n=2, cutoff=0.6)
    seen: list[str] = []
    for k in out:
        if index:
            k = k.replace("[]", index.group(0), 1)
        if k not in seen and k != key:
            seen.append(k)
    return seen[:3]


def _unknown(key: str, cls: type, section: str, source: str) -> ConfigError:
    near = _suggest(key, cls, section)
    hint = ""
    if near:
        hint = "; did you mean " + " or ".join(repr(k) for k in near) + "?"
    return ConfigError(f"unknown config key {key!r} ({source}){hint}")


def _check_tree(value: Any, cls: type, prefix: str, source: str, root: type) -> dict:
    """Check the keys of a raw (YAML) dict against dataclass ``cls``; returns a cleaned copy.

    Cleaning: ``null`` for a plain-text field becomes "" (text fields use "" for none).
    """
    if value is None:
        return {}
    name = prefix.rstrip(".") or "the config"
    if not isinstance(value, dict):
        example = next(iter(_hints(cls)))
        raise ConfigError(
            f"{name} is a section, not a value ({source}); set its keys, e.g. {prefix}{example}=..."
        )
    hints = _hints(cls)
    out = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or k not in hints:
            while isinstance(v, dict) and len(v) >= 1:  # name the whole key written (``optimiser.lr``)
                sub, v = next(iter(v.items()))
                key = f"{key}.{sub}"
            raise _unknown(str(key), root, prefix, source)
        tp = hints[k]
        bare, optional = _strip_optional(tp)
        item = _list_item(tp)
        if dataclasses.is_dataclass(bare):
            out[k] = _check_tree(v, bare, key + ".", source, root)
        elif key in ONE_OR_MANY and (isinstance(v, str) or v is None):
            out[k] = [v] if v else []
        elif item is not None and dataclasses.is_dataclass(item):
            if v is None and not optional:
                v = []
            if v is not None and not isinstance(v, list):
                raise ConfigError(f"{key}={v!r} is not {type_phrase(tp)} ({source})")
            out[k] = None if v is None else [_check_tree(x, item, f"{key}[{i}].", source, root) for i, x in enumerate(v)]
        elif v is None and not optional:
            if bare is str:
                out[k] = ""
            else:
                raise ConfigError(f"{key}=null is not allowed: {key} is {type_phrase(tp)} ({source})")
        else:
            out[k] = v
    return out


def _type_at(key: str, cls: type = Config) -> Any:
    """Annotation of dotted ``key`` (indices ``[i]`` allowed); None when it does not resolve."""
    tp: Any = cls
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        if part.startswith("["):
            tp = _list_item(tp)
        else:
            bare, _ = _strip_optional(tp)
            if not dataclasses.is_dataclass(bare) or part not in _hints(bare):
                return None
            tp = _hints(bare)[part]
        if tp is None:
            return None
    return tp


def _value_at(tree: Any, key: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        tree = tree[int(part[1:-1])] if part.startswith("[") else tree[part]
    return tree


def _error_from_omegaconf(e: OmegaConfBaseException, tree: Any, source: str) -> ConfigError:
    """A one-line ``ConfigError`` for an OmegaConf merge/conversion failure."""
    full_key = str(getattr(e, "full_key", "") or "")
    key = full_key
    m = re.fullmatch(r"(.*)\[\d+\]", full_key)
    if m:
        item = _list_item(_type_at(m.group(1)))
        if item is not None and not dataclasses.is_dataclass(item):
            key = m.group(1)  # an element of a list of scalars: report the whole list
    tp = _type_at(key) if key else None
    try:
        value = _value_at(tree, key)
    except (KeyError, IndexError, TypeError, ValueError):
        value = getattr(e, "value", None)
    if tp is not None:
        return ConfigError(f"{key}={value!r} is not {type_phrase(tp)} ({source})")
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = f"{full_key}: " if full_key else ""
    return ConfigError(f"{where}{msg} ({source})")


def _merge(base, tree: dict, source: str):
    try:
        return OmegaConf.merge(base, tree)
    except OmegaConfBaseException as e:
        raise _error_from_omegaconf(e, tree, source) from None


# --------------------------------------------------------------------------- files


def _read_yaml(path: Path, label: str) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {label} not found") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {label}: {e.strerror or e}") from None
    return _parse_yaml(text, label)


def _parse_yaml(text: str, label: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{label}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def _recipe_chain(path: Path) -> list[tuple[str, dict]]:
    """``[(label, raw dict)]`` from the root ``base`` to ``path`` (``base`` keys removed)."""
    chain: list[tuple[str, dict]] = []
    seen: list[Path] = []
    current: Optional[Path] = path
    label = str(path)
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(str(p) for p in [*seen, resolved])
            raise ConfigError(f"config files inherit in a cycle ({BASE_KEY}: ...): {cycle}")
        seen.append(resolved)
        data = _read_yaml(current, label)
        base = data.pop(BASE_KEY, None)
        chain.append((label, data))
        if base is None:
            current = None
        elif not isinstance(base, str) or not base:
            raise ConfigError(f"{label}: '{BASE_KEY}' must be a path to another config file, got {base!r}")
        else:
            nxt = Path(base).expanduser()
            if not nxt.is_absolute():
                nxt = current.parent / nxt
            label = f"{nxt} ({BASE_KEY} of {label})"
            current = nxt
    return chain[::-1]


# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[str, Any]:
    """``'loss.beta=0.05'`` -> ``('loss.beta', 0.05)``; the value is parsed as YAML ("" -> None)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value ({COMMAND_LINE}), e.g. loss.beta=0.05")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(
            f"override {item!r}: {key!r} is not a dotted config key ({COMMAND_LINE}); "
            "lists are set whole, e.g. data.buckets=[128,256]"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it") from None
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _deep_update(into: dict, tree: dict) -> dict:
    """Nested-dict merge, later values win; lists and values are replaced, sections merged."""
    for k, v in tree.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v
    return into


def overrides_tree(overrides: Sequence[str]) -> dict:
    """The checked, nested dict of ``key=value`` items (later items win)."""
    if isinstance(overrides, str):
        overrides = [overrides]
    out: dict = {}
    for item in overrides:
        key, value = parse_override(item)
        _deep_update(out, _check_tree(_nest(key, value), Config, "", COMMAND_LINE, Config))
    return out


def apply_overrides(base, overrides: Sequence[str]):
    """Merge ``key=value`` items into an OmegaConf structured config; returns the merged one."""
    tree = overrides_tree(overrides)
    return _merge(base, tree, COMMAND_LINE) if tree else base


def _structured_defaults():
    return _structured_defaults_at(_loss_class())


@functools.lru_cache(maxsize=4)
def _structured_defaults_at(loss_class: type):
    # Building the structured config is the slow part of a load; merges copy it, so one per registry state.
    return OmegaConf.structured(Config)


def _modules_in(data: dict) -> Optional[Any]:
    section = data.get("objective") if isinstance(data, dict) else None
    return section.get("module") if isinstance(section, dict) and "module" in section else None


def _import_modules(value: Any, source: str) -> None:
    from jaxalign.objectives.registry import import_objective_modules

    if value is None or value == "":
        return
    modules = [value] if isinstance(value, str) else value
    if not isinstance(modules, list):
        raise ConfigError(f"{MODULE_KEY}={value!r} is not a module name or a list of them ({source})")
    import_objective_modules(modules, key=MODULE_KEY, source=source)


def import_recipe_objectives(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> None:
    """Import the user objective modules a recipe chain and its overrides name (``objective.module``; the
    last one that sets it wins, like any key), so their ``loss.*`` keys exist before the keys are checked."""
    value, source = None, ""
    if path is not None:
        for label, data in _recipe_chain(Path(path)):
            found = _modules_in(data)
            if found is not None:
                value, source = found, label
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, v = parse_override(item)
        if key == MODULE_KEY:
            value, source = v, COMMAND_LINE
        elif key == "objective" and isinstance(v, dict) and "module" in v:
            value, source = v["module"], COMMAND_LINE
    _import_modules(value, source)


# --------------------------------------------------------------------------- public API


def _to_object(cfg) -> Config:
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        full_key = getattr(e, "full_key", None)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"{full_key}: " if full_key else ""
        raise ConfigError(f"{where}{msg} (while resolving the config)") from None


def load_config(
    path: Optional[str | os.PathLike] = None,
    overrides: Sequence[str] = (),
    *,
    check: bool = True,
    stage: Optional[str] = None,
) -> Config:
    """Defaults <- recipe at ``path`` (and its ``base`` chain) <- ``overrides``; a ``Config`` instance.

    ``check`` runs ``validate(config, stage)``. Every problem is a one-line ``ConfigError``.
    """
    import_recipe_objectives(path, overrides)
    cfg = _structured_defaults()
    if path is not None:
        for label, data in _recipe_chain(Path(path)):
            tree = _check_tree(data, Config, "", label, Config)
            cfg = _merge(cfg, tree, label)
    cfg = apply_overrides(cfg, overrides)
    config = _to_object(cfg)
    _derive_data_task(config)
    if check:
        validate(config, stage)
    return config


def config_from_yaml(text: str, source: str = "<yaml>", *, check: bool = False) -> Config:
    """A ``Config`` from YAML text (e.g. a saved ``config.yaml``); ``base`` is not followed."""
    data = _parse_yaml(text, source)
    if BASE_KEY in data:
        raise ConfigError(f"{source}: '{BASE_KEY}' is only followed in config files (use load_config)")
    _import_modules(_modules_in(data), source)
    tree = _check_tree(data, Config, "", source, Config)
    config = _to_object(_merge(_structured_defaults(), tree, source))
    if check:
        validate(config)
    return config


def to_yaml(config: Config) -> str:
    """The full, resolved config as YAML (every key, defaults included); ``config_from_yaml`` reads it back."""
    try:
        return OmegaConf.to_yaml(OmegaConf.structured(config), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot write the config: {str(e).strip().splitlines()[0]}") from None


def save_config(config: Config, path: str | os.PathLike) -> Path:
    """Write ``to_yaml(config)`` to ``path`` atomically; returns the path."""
    return write_text_atomic(path, "# jaxalign config (resolved); reload with load_config(path) or jaxalign train PATH\n"
                             + to_yaml(config))


def _derive_data_task(config) -> None:
    """The objective decides the batch layout: a default `data.task` follows `loss.name`."""
    from jaxalign.objectives.registry import objective_names, get_objective

    if config.data.task == "preference" and config.loss.name in objective_names():
        config.data.task = get_objective(config.loss.name).task
