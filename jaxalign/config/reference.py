"""Every config key with its type, default and description: ``--help-config`` and ``docs/config_reference.md``.

Descriptions are the field docstrings of the schema dataclasses (the string
literal under each field), read with ``ast`` so code and documentation cannot
drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from jaxalign.config.loader import _hints, _list_item, _strip_optional, type_phrase
from jaxalign.config.schema import CHOICES, Config

__all__ = ["KeyInfo", "config_reference_markdown", "describe_keys", "format_keys", "write_config_reference"]


@dataclass(frozen=True)
class KeyInfo:
    """One dotted key of the schema."""

    key: str
    """Dotted key (list items as ``key[].field``)."""
    type: str
    """Type phrase: ``a float``, ``a list of integers or null``, ``a section (ModelSpec)``."""
    default: Any
    """Default value (None for sections)."""
    doc: str
    """Field docstring, joined into one paragraph."""
    choices: Optional[Tuple[str, ...]] = None
    """Allowed values of a fixed-choice text field."""
    section: bool = False
    """True for a section (a nested dataclass or a list of them)."""


@functools.lru_cache(maxsize=None)
def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring, from the class and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                text = " ".join(inspect.cleandoc(nxt.value.value).split())
                docs[node.target.id] = text.replace("``", "`")
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return None if dataclasses.is_dataclass(value) else value
    return None


def _walk(cls: type, prefix: str, out: list[KeyInfo]) -> None:
    docs = _field_docs(cls)
    hints = _hints(cls)
    choices = CHOICES.get(cls, {})
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        bare, _ = _strip_optional(tp)
        item = _list_item(tp)
        nested = bare if dataclasses.is_dataclass(bare) else (item if item is not None and dataclasses.is_dataclass(item) else None)
        out.append(
            KeyInfo(
                key=key,
                type=type_phrase(tp),
                default=_default(f),
                doc=docs.get(f.name, ""),
                choices=choices.get(f.name),
                section=nested is not None,
            )
        )
        if nested is not None:
            _walk(nested, key + ("[]." if nested is item else "."), out)


def describe_keys(prefix: str = "", cls: type = Config) -> list[KeyInfo]:
    """Every key of the schema in field order; ``prefix`` keeps only keys under it (``"loss"``, ``"loss.rdo"``)."""
    out: list[KeyInfo] = []
    _walk(cls, "", out)
    if prefix:
        p = prefix.rstrip(".")
        out = [k for k in out if k.key == p or k.key.startswith(p + ".") or k.key.startswith(p + "[]")]
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _groups(keys: list[KeyInfo]) -> list[tuple[Optional[KeyInfo], list[KeyInfo]]]:
    """``[(section or None for the top level, its direct leaf keys)]`` in schema order."""
    leaves = [k for k in keys if not k.section]
    out: list[tuple[Optional[KeyInfo], list[KeyInfo]]] = []
    sections = {k.key: k for k in keys if k.section}
    top = [k for k in leaves if "." not in k.key]
    if top:
        out.append((None, top))
    for name, sec in sections.items():
        inner = name + ("[]." if sec.type.startswith("a list") else ".")
        rows = [k for k in leaves if k.key.startswith(inner) and "." not in k.key[len(inner):]]
        if rows:
            out.append((sec, rows))
    covered = {id(k) for _, rows in out for k in rows}
    rest = [k for k in leaves if id(k) not in covered]  # a prefix below a section (``loss.rdo.model``'s parent filtered out)
    if rest:
        out.append((None, rest))
    return out


def format_keys(prefix: str = "", width: int = 100) -> str:
    """Plain-text listing for ``jaxalign train --help-config [SECTION]``."""
    keys = describe_keys(prefix)
    if not keys:
        return f"no config keys under {prefix!r}\n"
    lines: list[str] = []
    for sec, rows in _groups(keys):
        if sec is not None:
            lines.append(f"\n{sec.key}:  {sec.doc}" if sec.doc else f"\n{sec.key}:")
        for k in rows:
            kind = k.type.removeprefix("a ").removeprefix("an ")
            lines.append(f"  {k.key} = {_fmt(k.default)}  ({kind})")
            doc = k.doc
            if k.choices and " | ".join(k.choices) not in doc:
                doc = f"{doc} [{' | '.join(k.choices)}]"
            if doc:
                lines += textwrap.wrap(doc, width=width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines).lstrip("\n") + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference_markdown() -> str:
    """The README's config reference: one table per section, every key with type, default and description."""
    keys = describe_keys()
    parts = [
        "# Config reference",
        "",
        "<!-- Generated by jaxalign.config.reference.write_config_reference(); do not edit by hand. -->",
        "",
        "Every key below can be set in a recipe (`configs/*.yaml`, nested by section) or on the command line "
        "as `section.key=value`, e.g. `jaxalign train configs/dadpo.yaml loss.beta_teacher=0.2 optimizer.lr=5e-7`. "
        "Values are parsed as YAML (`data.buckets=[128,256]`, `train.export_hf=false`); `null` or an empty value "
        "sets a text field to `\"\"`. A recipe may start from another with `base: other.yaml`. Unknown keys and "
        "wrong types are refused by name.",
        "",
    ]
    def table(rows: list[KeyInfo]) -> list[str]:
        out = ["| key | type | default | description |", "|---|---|---|---|"]
        for k in rows:
            doc = k.doc
            if k.choices and " | ".join(k.choices) not in doc:
                doc = f"{doc} One of: {', '.join(f'`{c}`' for c in k.choices)}."
            out.append(f"| `{k.key}` | {_md(k.type)} | `{_md(_fmt(k.default))}` | {_md(doc)} |")
        return out

    for sec, rows in _groups(keys):
        if sec is None:
            parts += ["## Top level", "", *table(rows), ""]
        else:
            parts += [f"## `{sec.key}`", "", sec.doc, "", *table(rows), ""]
    return "\n".join(parts).rstrip() + "\n"


def write_config_reference(path: str | os.PathLike = "docs/config_reference.md") -> Path:
    """Write ``config_reference_markdown()`` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_reference_markdown())
    return path
