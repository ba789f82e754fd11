"""The one list of training objectives: ``register_objective`` adds a spec, everything else reads it.

What derives from it: the choices of ``loss.name``, the ``loss`` config section
(``LossConfig`` = the common settings + every objective's own settings class),
the data task a recipe must use, which frozen models the trainer loads
(``needs_model``), which objectives take RDO weights, ``--help-config`` and the
config reference.

Built-in objectives are the modules of this package, imported on first use (a
new one is one new file); objectives from outside jaxalign come from modules
named by ``objective.module`` (imported by the config loader) or from entry
points in the group ``jaxalign.objectives``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import pkgutil
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from jaxalign.config.fields import check_choice, field_docs, rule_of, setting
from jaxalign.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Frozen",
    "ObjectiveSpec",
    "get_objective",
    "import_objective_modules",
    "loss_config_class",
    "needs_model",
    "objective_names",
    "register_objective",
    "setting_owners",
    "settings_of",
    "unregister_objective",
]

#: Entry-point group of installed packages that register objectives.
ENTRY_POINT_GROUP = "jaxalign.objectives"
HEADS = ("lm", "score")
#: Modules of this package that hold no objective.
_NOT_OBJECTIVES = ("common", "registry")

Objective = Callable[..., tuple]  # (models, batch, ctx, totals=None) -> (loss, metrics)


@dataclass(frozen=True)
class Frozen:
    """A frozen model an objective reads (reference or teacher), and the precomputed columns that
    replace it: when the data has all of ``cached``, the model is not loaded (empty = always loaded)."""

    cached: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything jaxalign knows about one objective."""

    name: str
    """``loss.name`` that selects it."""
    fn: Objective
    """Batch -> loss adapter: ``fn(models, batch, ctx, totals=None) -> (loss, metrics)`` (``jaxalign.objectives.common``)."""
    task: str
    """``data.task`` of its batches: preference | sft | kto | pairwise."""
    settings: Optional[type] = None
    """Dataclass of its own ``loss.*`` settings (ranges declared with ``setting``); None = none."""
    head: str = "lm"
    """Policy head: lm (token log-probs) or score (one scalar per sequence)."""
    reference: Optional[Frozen] = None
    """The frozen reference it reads (None = none)."""
    teacher: Optional[Frozen] = None
    """The frozen teacher it reads for sequence log-probs (None = none)."""
    rdo: bool = False
    """Takes RDO per-pair weights (``loss.rdo.enabled``)."""
    extra_terms: bool = False
    """Adds the token-level distillation (``loss.kd_*``, needs the teacher) and chosen-NLL (``loss.nll_weight``) terms."""
    metrics: tuple[str, ...] = ()
    """Names of the metrics it always returns (besides ``loss``)."""
    doc: str = ""
    """One line for ``--help-config``."""


_SPECS: dict[str, ObjectiveSpec] = {}
_OWNERS: dict[str, list[str]] = {}  # setting name -> objectives that declare it
_STATE = {"builtins": False}
_LOSS_CLASSES: dict[tuple, type] = {}  # (name, settings class) of every objective -> its LossConfig


def _load_builtins() -> None:
    """Import this package's objective modules and the installed entry points, once."""
    if _STATE["builtins"]:
        return
    _STATE["builtins"] = True
    import jaxalign.objectives as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name not in _NOT_OBJECTIVES:
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is reported by name, in one line
            raise ConfigError(f"entry point {ep.name!r} ({ENTRY_POINT_GROUP}: {ep.value}) failed to load: "
                              f"{type(e).__name__}: {e}") from None


def import_objective_modules(modules: Iterable[str], *, key: str = "objective.module", source: str = "") -> None:
    """Import each named module (they register objectives); a one-line ``ConfigError`` naming ``key``
    and the module when one cannot be imported."""
    _load_builtins()
    where = f" ({source})" if source else ""
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}={name!r}{where}: not a module name (e.g. {key}=my_pkg.my_loss)")
        try:
            importlib.import_module(name.strip())
        except Exception as e:  # noqa: BLE001 - any failure of a user module is reported the same way
            raise ConfigError(f"{key}={name!r}{where}: cannot import it ({type(e).__name__}: {e})") from None


def _settings_fields(name: str, settings: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """``{name: (resolved type, field)}`` of ``settings``, each with a default; ConfigError otherwise."""
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        raise ConfigError(f"objective {name!r}: settings must be a dataclass, got {settings!r}")
    hints = typing.get_type_hints(settings)
    out = {}
    for f in dataclasses.fields(settings):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"objective {name!r}: setting loss.{f.name} needs a default")
        out[f.name] = (hints[f.name], f)
    return out


def _declaration(tp: Any, f: dataclasses.Field) -> tuple:
    """What two declarations of one setting must agree on: type, default and allowed values (not the doc)."""
    rule = rule_of(f)
    return tp, f.default, rule and dataclasses.replace(rule, doc="")


def _check_settings(spec: ObjectiveSpec) -> None:
    """Settings share the ``loss`` namespace: a name must not be a common setting, and an objective that
    declares a name another one declared must declare it the same way (type, default, allowed values)."""
    from jaxalign.config.loss import LossCommon

    if spec.settings is None:
        return
    common = {f.name for f in dataclasses.fields(LossCommon)}
    for fname, (tp, f) in _settings_fields(spec.name, spec.settings).items():
        if fname in common:
            raise ConfigError(f"objective {spec.name!r}: setting loss.{fname} is a common loss setting; rename it")
        for other in _OWNERS.get(fname, []):
            if other == spec.name:
                continue
            other_tp, g = _settings_fields(other, _SPECS[other].settings)[fname]
            if _declaration(tp, f) != _declaration(other_tp, g):
                raise ConfigError(
                    f"objective {spec.name!r}: setting loss.{fname} is also declared by {other!r} with another "
                    f"type, default or range ({getattr(other_tp, '__name__', other_tp)} = {g.default!r}); "
                    "use the same declaration or another name"
                )


def register_objective(name: str, *, task: str, settings: Optional[type] = None, head: str = "lm",
                       reference: Optional[Frozen] = None, teacher: Optional[Frozen] = None, rdo: bool = False,
                       extra_terms: bool = False, metrics: Sequence[str] = (), doc: str = "",
                       replace: bool = False) -> Callable[[Objective], Objective]:
    """Decorator: register the batch -> loss adapter it decorates as objective ``name``.

    ::

        @register_objective("simpo", task="preference", settings=SimPOSettings, metrics=("rewards/margins",))
        def simpo_objective(models, batch, ctx, totals=None): ...

    Registering a name twice is refused unless ``replace`` (or it is the same function, re-imported).
    """
    from jaxalign.data.config import TASKS

    def decorate(fn: Objective) -> Objective:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"objective name {name!r} must be an identifier (it is a loss.name value)")
        check_choice(f"objective {name!r}: task", task, TASKS)
        check_choice(f"objective {name!r}: head", head, HEADS)
        spec = ObjectiveSpec(name=name, fn=fn, task=task, settings=settings, head=head, reference=reference,
                             teacher=teacher, rdo=rdo, extra_terms=extra_terms, metrics=tuple(metrics),
                             doc=doc or (fn.__doc__ or "").strip().split("\n")[0])
        old = _SPECS.get(name)
        same = old is not None and (old.fn.__module__, old.fn.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not (replace or same):
            raise ConfigError(f"objective {name!r} is already registered (by {old.fn.__module__}); "
                              "pass replace=True to replace it")
        if old is not None:
            _unregister(name)
        try:
            _check_settings(spec)
        except ConfigError:
            if old is not None:
                _add(old)
            raise
        _add(spec)
        return fn

    return decorate


def _add(spec: ObjectiveSpec) -> None:
    _SPECS[spec.name] = spec
    if spec.settings is not None:
        for f in dataclasses.fields(spec.settings):
            _OWNERS.setdefault(f.name, []).append(spec.name)


def _unregister(name: str) -> None:
    _SPECS.pop(name)
    for owners in _OWNERS.values():
        if name in owners:
            owners.remove(name)
    for k in [k for k, v in _OWNERS.items() if not v]:
        del _OWNERS[k]


def unregister_objective(name: str) -> None:
    """Remove objective ``name`` (its settings leave ``LossConfig`` unless another objective declares them)."""
    _load_builtins()
    if name not in _SPECS:
        check_choice("loss.name", name, tuple(_SPECS))
    _unregister(name)


def objective_names() -> tuple[str, ...]:
    """Registered objective names, built-ins first (alphabetical), then in registration order."""
    _load_builtins()
    return tuple(_SPECS)


def get_objective(name: str) -> ObjectiveSpec:
    """The spec registered as ``name``; a ``ConfigError`` listing the names (and the closest) otherwise."""
    _load_builtins()
    if name not in _SPECS:
        check_choice("loss.name", name, tuple(_SPECS))
    return _SPECS[name]


def setting_owners() -> dict[str, tuple[str, ...]]:
    """Objective setting name -> the objectives that declare it."""
    _load_builtins()
    return {k: tuple(v) for k, v in _OWNERS.items()}


def loss_config_class() -> type:
    """The ``loss`` section's class: ``LossCommon`` + every registered objective's settings, one field each.

    One class per set of registered objectives (the same set gives the same class). Each field keeps its
    declaration (default, allowed values, docstring) and records the objectives that read it; a setting of
    an objective other than ``loss.name`` is kept in the config and ignored by training.
    """
    from jaxalign.config.loss import LossCommon

    _load_builtins()
    key = tuple((spec.name, spec.settings) for spec in _SPECS.values())
    if key in _LOSS_CLASSES:
        return _LOSS_CLASSES[key]
    fields: dict[str, tuple[str, Any, dataclasses.Field]] = {}
    for spec in _SPECS.values():
        if spec.settings is None:
            continue
        docs = field_docs(spec.settings)
        for fname, (tp, f) in _settings_fields(spec.name, spec.settings).items():
            if fname in fields:
                continue
            owners = _OWNERS[fname]
            rule = rule_of(f)
            doc = docs.get(fname, "")
            kwargs = {} if rule is None else {k: getattr(rule, k) for k in ("gt", "ge", "lt", "le", "integer", "choices")}
            default = {"default": f.default} if f.default is not dataclasses.MISSING else {
                "default_factory": f.default_factory}
            fields[fname] = (fname, tp, setting(**default, **kwargs, doc=f"({', '.join(owners)}) {doc}".strip(),
                                                     metadata={"objectives": tuple(owners)}))
    cls = dataclasses.make_dataclass(
        "LossConfig", list(fields.values()), bases=(LossCommon,),
        namespace={"__doc__": LossCommon.__doc__, "__module__": "jaxalign.config.schema"},
    )
    cls.__qualname__ = "LossConfig"
    _LOSS_CLASSES[key] = cls
    return cls


def settings_of(loss: Any, name: Optional[str] = None) -> Any:
    """The settings object of objective ``name`` (default ``loss.name``) read from a ``loss`` section;
    None when it has no settings. A setting the section lacks keeps its declared default."""
    spec = get_objective(name or loss.name)
    if spec.settings is None:
        return None
    values = {f.name: getattr(loss, f.name) for f in dataclasses.fields(spec.settings) if hasattr(loss, f.name)}
    return spec.settings(**values)


def needs_model(spec: ObjectiveSpec, which: str, cfg: Any, columns: set[str]) -> bool:
    """Whether the frozen ``which`` ("reference" | "teacher") model must be loaded for ``spec``, given the
    ``loss`` section ``cfg`` and the data's columns.

    Not when the data carries its cached columns, unless a term needs its full distributions
    (token-level KD, ``loss.kd_weight`` > 0, needs the teacher itself unless ``loss.kd_cache`` holds them)."""
    if which == "teacher" and spec.extra_terms and cfg.kd_weight > 0 and not cfg.kd_cache:
        return True
    frozen = {"reference": spec.reference, "teacher": spec.teacher}[which]
    if frozen is None:
        return False
    return not frozen.cached or not all(c in columns for c in frozen.cached)
