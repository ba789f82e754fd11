"""Every config key with its type, default and description: ``--help-config`` and ``docs/config_reference.md``.

Descriptions are the field docstrings of the schema dataclasses (the string
literal under each field), read with ``ast`` so code and documentation cannot
drift apart; allowed values and ranges come from the fields' declarations
(``jaxalign.config.fields.setting``). The ``loss`` keys are those of the
registered objectives (``jaxalign.objectives``), each marked with the
objectives that read it.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from jaxalign.config.loader import _hints, _list_item, _strip_optional, type_phrase
from jaxalign.config.fields import field_docs, rule_of
from jaxalign.config.schema import Config

__all__ = ["KeyInfo", "ObjectiveInfo", "config_reference_markdown", "describe_keys", "describe_objectives", "format_keys",
           "write_config_reference"]


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
    bounds: str = ""
    """Declared range of a number (``> 0``, ``>= 0 and < 0.5``); "" = any."""
    section: bool = False
    """True for a section (a nested dataclass or a list of them)."""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return None if dataclasses.is_dataclass(value) else value
    return None


def _walk(cls: type, prefix: str, out: list[KeyInfo]) -> None:
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        rule = rule_of(f)
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
                choices=None if rule is None else rule.allowed(),
                bounds="" if rule is None else rule.bounds_text(),
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


def _extra(k: KeyInfo) -> str:
    """What the doc does not already say: the allowed values or the range."""
    if k.choices and " | ".join(k.choices) not in k.doc:
        return f"[{' | '.join(k.choices)}]"
    if k.bounds:
        return f"[{k.bounds}]"
    return ""


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


@dataclass(frozen=True)
class ObjectiveInfo:
    """One registered objective, as ``--help-config`` and the reference show it."""

    name: str
    task: str
    models: str
    """``policy (lm head), reference (or cached ref_chosen_logps, ref_rejected_logps)`` ..."""
    settings: Tuple[str, ...]
    metrics: Tuple[str, ...]
    doc: str


def describe_objectives() -> list[ObjectiveInfo]:
    """Every registered objective (``jaxalign.objectives``): the values of ``loss.name``."""
    from jaxalign.objectives.registry import get_objective, objective_names

    out = []
    for name in objective_names():
        spec = get_objective(name)
        models = [f"policy ({spec.head} head)"]
        for which, frozen in (("reference", spec.reference), ("teacher", spec.teacher)):
            if frozen is not None:
                models.append(f"{which} (or cached {', '.join(frozen.cached)})" if frozen.cached else which)
        if spec.extra_terms:
            models.append("teacher when loss.kd_weight > 0")
        settings = tuple(f.name for f in dataclasses.fields(spec.settings)) if spec.settings else ()
        extras = (" Takes RDO weights." if spec.rdo else "") + (
            " Takes loss.kd_* and loss.nll_weight." if spec.extra_terms else "")
        out.append(ObjectiveInfo(name, spec.task, ", ".join(models), settings, spec.metrics, spec.doc + extras))
    return out


def _format_objectives(width: int) -> list[str]:
    lines = ["", "objectives (loss.name; each reads the loss.* settings listed):"]
    for o in describe_objectives():
        lines.append(f"  {o.name}  (data.task={o.task}; settings: {', '.join(o.settings) or 'none'})")
        text = f"{o.doc} Models: {o.models}. Metrics: {', '.join(o.metrics) or 'loss'}."
        lines += textwrap.wrap(text, width=width, initial_indent="      ", subsequent_indent="      ")
    return lines


def format_keys(prefix: str = "", width: int = 100) -> str:
    """Plain-text listing for ``jaxalign train --help-config [SECTION]`` (with the objectives for "" and "loss")."""
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
            doc = f"{k.doc} {_extra(k)}".strip()
            if doc:
                lines += textwrap.wrap(doc, width=width, initial_indent="      ", subsequent_indent="      ")
    if prefix.rstrip(".") in ("", "loss"):
        lines += _format_objectives(width)
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
            elif k.bounds:
                doc = f"{doc} Must be {k.bounds}."
            out.append(f"| `{k.key}` | {_md(k.type)} | `{_md(_fmt(k.default))}` | {_md(doc)} |")
        return out

    for sec, rows in _groups(keys):
        if sec is None:
            parts += ["## Top level", "", *table(rows), ""]
        else:
            parts += [f"## `{sec.key}`", "", sec.doc, "", *table(rows), ""]
    parts += ["## Objectives", "",
              "The values of `loss.name` (`jaxalign.objectives`; add one with `@register_objective`, see "
              "[objectives.md](objectives.md)). A `loss.*` setting of another objective than `loss.name` is kept and "
              "ignored.", "",
              "| `loss.name` | `data.task` | models | `loss.*` settings | metrics | description |",
              "|---|---|---|---|---|---|"]
    for o in describe_objectives():
        parts.append(f"| `{o.name}` | `{o.task}` | {_md(o.models)} | {', '.join(f'`{x}`' for x in o.settings) or '—'} "
                     f"| {', '.join(f'`{m}`' for m in o.metrics)} | {_md(o.doc)} |")
    parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def write_config_reference(path: str | os.PathLike = "docs/config_reference.md") -> Path:
    """Write ``config_reference_markdown()`` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_reference_markdown())
    return path
