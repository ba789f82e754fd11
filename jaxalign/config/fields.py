"""Config fields that declare their own allowed values: ``setting(...)`` and the one validator that reads them.

A field says what it accepts where it is declared::

    @dataclass
    class OptimizerConfig:
        lr: float = setting(5e-7, gt=0)
        \"\"\"Peak learning rate.\"\"\"
        schedule: str = setting("cosine", choices=("cosine", "linear", "constant"))

``check_fields(config)`` walks any config dataclass (nested sections and lists
of sections included) and refuses the first value outside its field's
declaration with a one-line ``ConfigError`` naming the full key
(``optimizer.lr=0.0 must be > 0``; a choice gets the closest allowed value as a
hint). Checks that relate two fields stay as short functions next to
``validate``. This module imports nothing from jaxalign but the error class, so
objective settings (``jaxalign.objectives``) and user code can use it freely.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from jaxalign.errors import ConfigError

__all__ = ["Rule", "check_choice", "check_fields", "check_value", "choices_of", "closest", "field_docs", "rule_of",
           "setting"]

_KEY = "jaxalign"  # metadata key of a field's Rule

Choices = Union[Sequence[str], Callable[[], Sequence[str]]]


@dataclass(frozen=True)
class Rule:
    """What a field accepts: bounds (``gt``/``ge``/``lt``/``le``), an integer, or one of ``choices``.

    ``choices`` may be a zero-argument callable, for sets known only at run time (``loss.name``: the
    registered objectives).
    """

    gt: Optional[float] = None
    ge: Optional[float] = None
    lt: Optional[float] = None
    le: Optional[float] = None
    integer: bool = False
    choices: Optional[Choices] = None
    doc: str = ""

    def allowed(self) -> Optional[tuple]:
        """The choices as a tuple (a callable is called), or None."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def bounds_text(self) -> str:
        """``> 0``, ``>= 0 and < 0.5`` ... ("" when unbounded)."""
        parts = [f"{op} {v}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
                 if v is not None]
        return " and ".join(parts)

    def numeric(self) -> bool:
        return self.integer or any(v is not None for v in (self.gt, self.ge, self.lt, self.le))


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            gt: Optional[float] = None, ge: Optional[float] = None, lt: Optional[float] = None,
            le: Optional[float] = None, integer: bool = False, choices: Optional[Choices] = None,
            doc: str = "", metadata: Optional[dict] = None) -> Any:
    """A ``dataclasses.field`` whose allowed values ``check_fields`` enforces.

    ``doc`` is only needed where the field has no docstring (the string literal under it), e.g.
    in a class built at run time.
    """
    meta = dict(metadata or {})
    meta[_KEY] = Rule(gt=gt, ge=ge, lt=lt, le=le, integer=integer, choices=choices, doc=doc)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def rule_of(f: dataclasses.Field) -> Optional[Rule]:
    """The ``Rule`` a field was declared with (None for a plain field)."""
    return f.metadata.get(_KEY)


def closest(value: Any, allowed, cutoff: float = 0.5) -> Optional[str]:
    """The allowed value closest to ``value`` (difflib), or None."""
    found = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=cutoff)
    return found[0] if found else None


def check_choice(key: str, value: Any, allowed) -> None:
    """Refuse ``value`` unless it is one of ``allowed``; the message lists them and the closest match."""
    if value in allowed:
        return
    near = closest(value, allowed)
    hint = f"; did you mean {near!r}?" if near else ""
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{hint}")


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Refuse ``value`` of ``key`` unless ``rule`` allows it (one-line ``ConfigError`` naming ``key``)."""
    allowed = rule.allowed()
    if allowed is not None:
        check_choice(key, value, allowed)
    if not rule.numeric():
        return
    kind = "an integer" if rule.integer else "a number"
    ok_type = isinstance(value, int) if rule.integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not rule.integer and not math.isfinite(value)):
        raise ConfigError(f"{key}={value!r} must be {kind}")
    bad = ((rule.gt is not None and value <= rule.gt) or (rule.ge is not None and value < rule.ge)
           or (rule.lt is not None and value >= rule.lt) or (rule.le is not None and value > rule.le))
    if bad:
        raise ConfigError(f"{key}={value!r} must be {rule.bounds_text()}")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every declared field of dataclass ``obj`` and, recursively, of its sections and list items."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, dataclasses.MISSING)
        if value is dataclasses.MISSING:
            continue
        key = f"{prefix}{f.name}"
        rule = rule_of(f)
        if rule is not None:
            check_value(key, value, rule)
        elif dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_fields(item, f"{key}[{i}].")


def choices_of(cls: type) -> dict[str, tuple]:
    """``{field: allowed values}`` of the fixed-choice fields of dataclass ``cls``."""
    out = {}
    for f in dataclasses.fields(cls):
        rule = rule_of(f)
        if rule is not None and rule.choices is not None:
            out[f.name] = rule.allowed()
    return out


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its doc (``setting(doc=...)``, else the string literal under the field), one paragraph.

    Read from the class and its dataclass bases with ``ast``, so code and documentation cannot drift apart.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            tree = None
        body = tree.body[0].body if tree and tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split()).replace("``", "`")
    for f in dataclasses.fields(cls):
        rule = rule_of(f)
        if rule is not None and rule.doc:
            docs[f.name] = " ".join(rule.doc.split()).replace("``", "`")
    return docs
